"""rtpanoptic's release mode against the authors' released post-processing, on a stored input.

``tests/fixtures/released_postprocess_small.npz`` holds head outputs of a 120 x 250 image (padded to
128 x 256, the ``tri-cityscapes-r50`` layout) and what the released code (TRI-ML/realtime_panoptic
at the commit in the file) computed from them: its queries, their bool masks and its semantic map
(``tests/fixtures/make_released_fixture.py`` made it).  Nothing here shares code with the pipeline:
the per-query masks go through the public op with the semantic probabilities resampled here; the
``Predictor`` result is compared with a panoptic map fused here from the released masks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model
from rtpanoptic.model.outputs import HeadOutputs

FIXTURE = Path(__file__).parent / "fixtures" / "released_postprocess_small.npz"
LEVELS = 5
STUFF = range(11)  # Cityscapes train ids 0..10 are stuff, 11..18 things (label k + 10 in the release)
BACKENDS = [b for b in ("reference", "cpp", "triton") if b in ops.available_backends("cpu")["panoptic_from_dense_release"]]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def head_outputs(d: dict[str, np.ndarray]) -> HeadOutputs:
    t = {k: torch.from_numpy(v) for k, v in d.items() if v.dtype == np.float32}
    return HeadOutputs([t[f"box_offsets_{i}"] for i in range(LEVELS)], [t[f"centerness_{i}"] for i in range(LEVELS)],
                       [t[f"class_logits_{i}"] for i in range(LEVELS)], t["levelness"], t["semantic"])


def test_fixture_has_visible_masks_and_empty_ones(data):
    """The input reaches the cases that matter: several queries with masks, most without, masks on
    the image's last rows (whose bilinear upsampling reads the grid's padding row)."""
    areas = data["rel_masks"].reshape(len(data["rel_masks"]), -1).sum(1)
    h, w = data["image_size"].tolist()
    assert data["rel_masks"].shape[1:] == (h, w) and (h, w) == (120, 250)
    assert (areas > 0).sum() >= 4 and (areas == 0).sum() >= 40
    assert data["rel_masks"][:, -1, :].sum() >= 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_query_masks_equal_the_release(data, backend):
    """Each released query alone through ``ops.panoptic_from_dense_release`` (every class a thing, so
    no stuff): its segment is exactly the released bool mask, pixel for pixel."""
    out = head_outputs(data)
    dense, _ = ops.gather_levelness(list(out.box_offsets), out.levelness, out_stride=4, backend=backend)
    grid = tuple(dense.shape[-2:])
    # the release: F.interpolate(semantic_logits, size=(h_map, w_map), mode='bilinear'), softmax
    probs = F.interpolate(out.semantic, size=grid, mode="bilinear", align_corners=False).softmax(1)
    size = tuple(data["image_size"].tolist())
    boxes = torch.from_numpy(data["rel_boxes"])
    classes = torch.from_numpy(data["rel_labels"]) + 10
    scores = torch.from_numpy(data["rel_scores"])
    everything = torch.ones(19, dtype=torch.bool)
    for j in range(boxes.shape[0]):
        seg = ops.panoptic_from_dense_release(dense[0], probs[0], boxes[j : j + 1], classes[j : j + 1],
                                              scores[j : j + 1], everything, stride=4, size=size, sigma=0.4,
                                              score="tri", backend=backend)
        assert torch.equal(seg.segment_map == 1, torch.from_numpy(data["rel_masks"][j])), f"query {j}"


def fuse(masks: np.ndarray, scores: np.ndarray, classes: np.ndarray, stuff: np.ndarray, overlap: float = 0.5):
    """The documented fusion (``ops.panoptic_from_dense``), written out: things in decreasing score,
    dropped when more than ``overlap`` of the mask is taken; then each stuff class's free pixels.
    -> (id map int32 [H, W], [(train id, is thing, score, area)])."""
    out = np.zeros(stuff.shape, dtype=np.int32)
    segments = []
    for j in np.argsort(-scores, kind="stable"):
        area = int(masks[j].sum())
        free = masks[j] & (out == 0)
        if area == 0 or free.sum() == 0 or (area - free.sum()) / area > overlap:
            continue
        out[free] = len(segments) + 1
        segments.append((int(classes[j]), True, float(scores[j]), int(free.sum())))
    for c in STUFF:
        region = (stuff == c) & (out == 0)
        if region.any():
            out[region] = len(segments) + 1
            segments.append((c, False, 1.0, int(region.sum())))
    return out, segments


@pytest.fixture(scope="module")
def tri_model():
    torch.manual_seed(0)
    return build_model("tri-cityscapes-r50").eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_predictor_release_mode_equals_the_release(data, tri_model, backend):
    """``Predictor(mask_mode="release").postprocess``: the release's queries (boxes, scores and labels
    bit for bit: the same float32 operations in the same order), its semantic map, and the panoptic
    map fused (:func:`fuse`) from the released masks with the stuff of the release's grid logits."""
    h, w = data["image_size"].tolist()
    (r,) = Predictor(tri_model, backend=backend, mask_mode="release").postprocess(head_outputs(data), [(h, w)])
    det = r.detections
    assert torch.equal(det.labels + 1, torch.from_numpy(data["rel_labels"]))
    assert torch.equal(det.boxes, torch.from_numpy(data["rel_boxes"]))
    assert torch.equal(det.scores, torch.from_numpy(data["rel_scores"]))
    assert torch.equal(r.semantic, torch.from_numpy(data["rel_semantic"]).long())

    stuff = data["rel_grid_semantic"].repeat(4, 0).repeat(4, 1)[:h, :w]  # nearest, one grid cell = 4 x 4 pixels
    expected, segments = fuse(data["rel_masks"], data["rel_scores"], data["rel_labels"] + 10, stuff)
    assert torch.equal(r.panoptic, torch.from_numpy(expected))
    got = [(s["train_id"], s["isthing"], s["score"], s["area"]) for s in r.segments_info]
    assert got == segments
    for k, s in enumerate(r.segments_info, start=1):
        ys, xs = np.nonzero(expected == k)
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    assert sum(t for _, t, _, _ in segments) >= 3  # several thing segments survive the fusion
