"""The Triton panoptic kernels' per-query spans (rtpanoptic/kernels/panoptic_from_dense*.py).

While the masks are built, every program adds its popcount of each mask to the mask's area and
widens the mask's span of non-zero words with integer atomics; the serial fusion and the paint pass
then visit only those words.  A span too narrow loses pixels, one too wide only costs time, so:

* the recorded ``STATS`` equal the ones computed here from the bit-packed masks (exactly: neither
  narrower nor wider), the masks themselves equal the reference's, packed here;
* the ops equal the reference (and the cpp backend) bit for bit on masks at the spans' edges: empty
  masks, a mask only in the last (partial) word, pixel counts that are not a multiple of 32 or 64,
  Q = 0 / 1 / more than one query group, score ties and NaN scores, both thresholds at equality;
  with the interpreter's block sizes and the GPU's (several programs per launch, so the atomics
  of several programs meet), the register-resident and the streamed scan.

Triton's interpreter runs ~0.4 ms per program: the scenes are a few hundred pixels.
"""
import importlib.util
import os

import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference as ref

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not HAS_TRITON or not (INTERPRET or torch.cuda.is_available()),
    reason="needs triton, and a GPU or TRITON_INTERPRET=1",
)
DEV = "cpu" if INTERPRET else "cuda"  # the interpreter runs on CPU tensors
HAS_CPP = "cpp" in ops.available_backends(DEV)["panoptic_from_dense"]
NAN = float("nan")
LANES = torch.arange(32)


def _pack(masks: torch.Tensor, row_aligned: bool) -> torch.Tensor:
    """bool ``[Q, H, W]`` -> int32 words: pixel ``i`` of the flattened image in bit ``i % 32`` of word
    ``i // 32``, or (``row_aligned``) every row starting a new word."""
    q, h, w = masks.shape
    flat = masks.reshape(q, h, w) if row_aligned else masks.reshape(q, 1, h * w)
    n = flat.shape[2]
    padded = torch.zeros(q, flat.shape[1], -(-n // 32) * 32, dtype=torch.int64)
    padded[..., :n] = flat.cpu()
    words = (padded.view(q, flat.shape[1], -1, 32) << LANES).sum(-1)
    return words.reshape(q, -1).to(torch.int32)  # the sum is < 2**32: its low 32 bits


def _popcount(words: torch.Tensor) -> torch.Tensor:
    return ((words.cpu()[..., None].to(torch.int64) >> LANES) & 1).sum(-1)


def _grid_stats(words: torch.Tensor) -> torch.Tensor:
    """STATS of kernels/panoptic_from_dense.py from the words: area, NW - first, last + 1 (0, 0, 0 when empty)."""
    words = words.cpu()
    nw = words.shape[1]
    some = words != 0
    index = torch.arange(nw)
    first = torch.where(some, index, nw).amin(1) if nw else torch.zeros(words.shape[0], dtype=torch.int64)
    last = torch.where(some, index, -1).amax(1) if nw else torch.full((words.shape[0],), -1)
    return torch.stack([_popcount(words).sum(1), nw - first, last + 1], 1).to(torch.int32)


def _release_stats(words: torch.Tensor, height: int, row_words: int) -> torch.Tensor:
    """STATS of kernels/panoptic_from_dense_release.py: area, height - first row, last row + 1,
    row_words - first word column, last word column + 1 (all 0 when empty)."""
    words = words.cpu()
    some = words.view(-1, height, row_words) != 0
    rows, cols = some.any(2), some.any(1)
    r, c = torch.arange(height), torch.arange(row_words)
    return torch.stack([
        _popcount(words).sum(1),
        height - torch.where(rows, r, height).amin(1), torch.where(rows, r, -1).amax(1) + 1,
        row_words - torch.where(cols, c, row_words).amin(1), torch.where(cols, c, -1).amax(1) + 1,
    ], 1).to(torch.int32)


def _edge_masks(h: int, w: int, seed: int) -> torch.Tensor:
    """bool ``[10, h, w]``, class 0 stuff (empty here), classes 1-9 masks at the edges of words and spans."""
    p = h * w
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(10, p, dtype=torch.bool)
    m[1, p - 1] = True  # only the last pixel: the last, partial word
    # class 2: empty
    m[3, [0, p - 1]] = True  # the first and the last pixel: a span over every word, 2 pixels
    m[4, max(p // 2 - 1, 0):p // 2 + 2] = True  # across a word boundary near the middle
    m[5] = True  # everything
    m[6, [max(p - 2, 0), p - 1]] = True  # half of it is class 1's: overlap / area = 0.5
    m[7] = torch.rand(p, generator=g) < 0.3
    m[8, min(32, p - 1):min(64, p)] = True  # exactly the second word
    m[9, min(1023, p - 1):min(1025, p)] = True  # words 31 and 32: across the GPU's 32-word blocks
    return m.view(10, h, w)


def _mask_scene(masks: torch.Tensor, classes, scores):
    """Inputs of panoptic_from_dense (score "iou", sigma 0.5) whose query masks are exactly
    ``masks[c_j]``: every dense and query box is the same box (IoU 1), P_sem(c) is 0.9 on
    ``masks[c]`` and 0 elsewhere, 0.5 everywhere for the stuff class 0."""
    c, h, w = masks.shape
    box = torch.tensor([1.0, 2.0, 5.0, 6.0])
    sem = masks.float() * 0.9
    sem[0] = 0.5
    is_thing = torch.ones(c, dtype=torch.bool)
    is_thing[0] = False
    args = (box.view(4, 1, 1).expand(4, h, w).contiguous(), sem, box.expand(len(classes), 4).contiguous(),
            torch.tensor(classes, dtype=torch.int64), torch.tensor(scores, dtype=torch.float32), is_thing)
    return [a.to(DEV) for a in args]


# Classes and scores of up to 20 queries (more than the GPU's 8-query groups): ties, NaN (painted
# first), a score equal to the score threshold 0.3 (kept) and one just below it (skipped).
CLASSES = [1, 2, 6, 3, 8, 4, 7, 5, 1, 9, 3, 2, 7, 8, 4, 5, 9, 7, 6, 1]
SCORES = [NAN, NAN, 0.9, 0.9, 0.3, 0.7, 0.7, 0.2999, 0.9, 0.5, NAN, 0.7, 0.3, 0.3, 0.5, 0.1, 0.8, 0.8, 0.2, 0.9]
FUSION = dict(sigma=0.5, score="iou", score_threshold=0.3, overlap_threshold=0.5, stuff_area_limit=3)


def _assert_same(a, b):
    for name in ("segment_map", "classes", "queries", "scores", "areas"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True, msg=name)


def _gpu_blocks(monkeypatch, on: bool):
    from rtpanoptic.kernels import _common

    monkeypatch.setattr(_common, "GPU_BLOCKS_IN_INTERPRETER", on)  # (a GPU runs its block sizes anyway)


@pytest.mark.parametrize("gpu_blocks", [False, True])
@pytest.mark.parametrize("h, w, q", [(5, 13, 20), (2, 32, 9), (1, 1, 3), (3, 37, 1), (13, 81, 12)])
def test_grid_spans_are_exact(monkeypatch, gpu_blocks, h, w, q):
    """``build_masks``: the masks equal the reference's (in painting order, packed), and the
    recorded area and word span of each equal the ones counted from the words.  65, 64, 1, 111 and
    1053 pixels (the last: 33 words, 2 programs of 32 words on a GPU; 20 queries: 3 groups of 8)."""
    from rtpanoptic.kernels import panoptic_from_dense as kernel

    _gpu_blocks(monkeypatch, gpu_blocks)
    dense, sem, boxes, classes, scores, _ = _mask_scene(_edge_masks(h, w, seed=h * w), CLASSES[:q], SCORES[:q])
    order = torch.sort(scores, descending=True, stable=True).indices
    present = torch.tensor(q, device=DEV)
    words, stats = kernel.build_masks(dense, sem, boxes, classes, order, present, 0.5, "iou")
    masks = ref._score_map(dense, boxes, "iou") * sem[classes] > 0.5
    assert torch.equal(words.cpu(), _pack(masks[order], row_aligned=False))
    assert torch.equal(stats.cpu(), _grid_stats(words))
    if q > 1:  # empty and non-empty masks both present
        assert stats[:, 0].min() == 0 and stats[:, 0].max() > 0


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("gpu_blocks", [False, True])
@pytest.mark.parametrize("h, w, q", [(5, 13, 20), (2, 32, 20), (1, 1, 3), (3, 37, 1), (13, 81, 12), (4, 7, 0)])
def test_grid_fusion_at_the_span_edges_is_the_reference(monkeypatch, streamed, gpu_blocks, h, w, q):
    """panoptic_from_dense on masks placed at the words' and spans' edges: the Triton backend (and
    cpp) equal the reference, bit for bit."""
    from rtpanoptic.kernels import panoptic_from_dense as kernel

    _gpu_blocks(monkeypatch, gpu_blocks)
    if streamed:
        monkeypatch.setattr(kernel, "RESIDENT_WORDS", 0)
    args = _mask_scene(_edge_masks(h, w, seed=h + w), CLASSES[:q], SCORES[:q])
    want = ops.panoptic_from_dense(*args, **FUSION, backend="reference")
    _assert_same(ops.panoptic_from_dense(*args, **FUSION, backend="triton"), want)
    if HAS_CPP and DEV == "cpu":
        _assert_same(ops.panoptic_from_dense(*args, **FUSION, backend="cpp"), want)
    if q >= 9:  # the scene holds both threshold equalities: a thing kept at overlap 0.5, at score 0.3
        assert want.areas.numel() > 2 and (want.scores == torch.tensor(0.3)).any()


@pytest.mark.parametrize("gpu_blocks", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_grid_random_overlaps_with_ties_and_nan_scores(monkeypatch, make, gpu_blocks, seed):
    """Random overlapping masks, three score levels and two NaN scores, on 23 x 29 = 667 pixels
    (21 words: not a multiple of 64 pixels), 18 queries."""
    _gpu_blocks(monkeypatch, gpu_blocks)
    dense, sem, boxes, classes, scores, is_thing = make.scene(seed, 23, 29, 18, c=7, things=[1, 3, 4, 6],
                                                              device=DEV, score_levels=3)
    scores = scores.clone()
    scores[[2, 11]] = NAN
    args = (dense, sem, boxes, classes, scores, is_thing)
    kw = dict(sigma=0.1, score_threshold=1 / 3, overlap_threshold=0.5, stuff_area_limit=4)
    want = ops.panoptic_from_dense(*args, **kw, backend="reference")
    _assert_same(ops.panoptic_from_dense(*args, **kw, backend="triton"), want)
    assert (want.queries >= 0).sum() >= 3  # several things accepted


def _release_scene(h, w, q):
    return _mask_scene(_edge_masks(h, w, seed=h * w + 1), CLASSES[:q], SCORES[:q])


@pytest.mark.parametrize("gpu_blocks", [False, True])
@pytest.mark.parametrize("h, w, q, stride, size", [
    (3, 37, 12, 1, (3, 37)),  # 2 words a row, the last of 5 pixels; class 1 only in the very last word
    (2, 40, 9, 2, (3, 77)),  # cropped: the last row and last columns of the upsampled masks cut off
    (4, 9, 1, 4, (16, 33)),  # the last word of each row holds 1 pixel
    (3, 11, 0, 2, (6, 22)),
    (17, 16, 9, 2, (33, 32)),  # 33 words of 1 row: class 1's last word is the first of the second paint block
])
def test_release_spans_and_fusion(monkeypatch, gpu_blocks, h, w, q, stride, size):
    """panoptic_from_dense_release: the recorded area and box of non-zero words (rows, word columns)
    of every mask equal the ones counted from its words, and the op equals the reference (and cpp)."""
    from rtpanoptic.kernels import panoptic_from_dense_release as kernel
    from rtpanoptic.ops.panoptic_release import _fused_multiply_add

    _gpu_blocks(monkeypatch, gpu_blocks)
    args = _release_scene(h, w, q)
    dense, sem, boxes, classes, scores, _ = args
    order = torch.sort(scores, descending=True, stable=True).indices
    height, width = size
    words, stats = kernel.build_bits(dense, sem, boxes, classes, order, stride, height, width, 0.5, "iou",
                                     _fused_multiply_add(dense.device))
    row_words = -(-width // 32)
    assert torch.equal(stats.cpu(), _release_stats(words, height, row_words))
    kw = dict(stride=stride, size=size, **FUSION)
    want = ops.panoptic_from_dense_release(*args, **kw, backend="reference")
    if q:
        soft = ref._score_map(dense, boxes, "iou") * sem[classes]
        up = torch.nn.functional.interpolate(soft[None], scale_factor=stride, mode="bilinear")[0]
        assert torch.equal(words.cpu(), _pack((up[:, :height, :width] >= 0.5)[order], row_aligned=True))
    _assert_same(ops.panoptic_from_dense_release(*args, **kw, backend="triton"), want)
    if HAS_CPP and DEV == "cpu":
        _assert_same(ops.panoptic_from_dense_release(*args, **kw, backend="cpp"), want)
