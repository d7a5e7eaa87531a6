"""Predictor.postprocess (fused: semantic map from ops.upsample_argmax, segment stats and the id map
from the grid) against the previous implementation, kept here as the reference: same panoptic
map, segments, semantic map and detections, on several seeds and image sizes (also sizes that
are not multiples of the strides) with both tested presets."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.benchmark import heavy_postprocess_load
from rtpanoptic.inference import Predictor, segment_areas_and_boxes, semantic_probs_on, upsample_ids
from rtpanoptic.model import build_model


def _old_upsample_argmax(logits, scale, size, band=32):
    _c, h, w = logits.shape
    out_h, out_w = size
    rows = []
    for a in range(0, math.ceil(out_h / scale), band):
        b = min(a + band, h)
        lo, hi = max(a - 1, 0), min(b + 1, h)
        up = F.interpolate(logits[None, :, lo:hi], size=((hi - lo) * scale, w * scale), mode="bilinear",
                           align_corners=False)[0]
        start = (a - lo) * scale
        rows.append(up[:, start : start + (b - a) * scale, :out_w].argmax(dim=0))
    return torch.cat(rows, dim=0)[:out_h]


def _old_areas_and_boxes(panoptic, n):
    flat = panoptic.reshape(-1).long()
    areas = torch.bincount(flat, minlength=n + 1)[1:]
    h, w = panoptic.shape
    ys = torch.arange(h).repeat_interleave(w)
    xs = torch.arange(w).repeat(h)
    big = torch.full((n + 1,), max(h, w), dtype=torch.int64)
    x0 = big.scatter_reduce(0, flat, xs, "amin")[1:]
    y0 = big.scatter_reduce(0, flat, ys, "amin")[1:]
    x1 = torch.full((n + 1,), -1, dtype=torch.int64).scatter_reduce(0, flat, xs, "amax")[1:]
    y1 = torch.full((n + 1,), -1, dtype=torch.int64).scatter_reduce(0, flat, ys, "amax")[1:]
    boxes = [[int(a), int(b), int(c - a + 1), int(d - b + 1)] if area > 0 else [0, 0, 0, 0]
             for a, b, c, d, area in zip(x0, y0, x1, y1, areas)]
    return areas.tolist(), boxes


def _old_postprocess(pred, outputs, sizes):
    """The previous Predictor.postprocess: full-resolution id map, banded F.interpolate + argmax."""
    o, model = pred.options, pred.model
    detections = pred.detect(outputs, sizes)
    ls = model.levelness_stride
    dense, _ = ops.gather_levelness(list(outputs.box_offsets), outputs.levelness, out_stride=ls)
    sem_probs = semantic_probs_on(outputs.semantic, dense.shape[-2:])
    out = []
    for b, (h, w) in enumerate(sizes):
        hv, wv = math.ceil(h / ls), math.ceil(w / ls)
        det = detections[b]
        seg = ops.panoptic_from_dense(
            dense[b, :, :hv, :wv].contiguous(), sem_probs[b, :, :hv, :wv].contiguous(),
            det.boxes, pred._thing_train_ids[det.labels], det.scores, pred._is_thing,
            sigma=o.sigma, score=o.score, score_threshold=o.score_threshold,
            overlap_threshold=o.overlap_threshold, stuff_area_limit=o.stuff_area_limit // (ls * ls))
        panoptic = seg.segment_map.repeat_interleave(ls, 0).repeat_interleave(ls, 1)[:h, :w]
        semantic = _old_upsample_argmax(outputs.semantic[b], model.semantic_stride, (h, w))
        areas, boxes = _old_areas_and_boxes(panoptic, int(seg.classes.numel()))
        out.append((panoptic, semantic, seg, areas, boxes, det))
    return out


_MODELS = {}


def _predictor(preset):
    if preset not in _MODELS:
        torch.manual_seed(0)
        model = build_model(preset).eval()
        heavy_postprocess_load(model)
        _MODELS[preset] = model
    # a low sigma and stuff-area limit: many thing and stuff segments from random weights
    return Predictor(_MODELS[preset], channels_last=False, sigma=0.05, stuff_area_limit=16)


@pytest.mark.parametrize("preset", ["r18-fpn", "tri-cityscapes-r50"])
@pytest.mark.parametrize("seed,sizes", [(0, [(128, 256)]), (1, [(121, 203)]), (2, [(97, 130), (100, 127)])])
def test_postprocess_equals_previous_implementation(preset, seed, sizes):
    pred = _predictor(preset)
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1) for h, w in sizes]
    with torch.no_grad():
        batch, got_sizes = pred.preprocess(images)
        outputs = pred.network(batch)
        got = pred.postprocess(outputs, got_sizes)
        want = _old_postprocess(pred, outputs, got_sizes)
    assert sum(len(r.thing_segments) for r in got) > 1 and sum(len(r.segments_info) for r in got) > 3
    for res, (panoptic, semantic, seg, areas, boxes, det) in zip(got, want):
        assert torch.equal(res.panoptic, panoptic)
        assert torch.equal(res.semantic, semantic)
        assert torch.equal(res.detections.boxes, det.boxes) and torch.equal(res.detections.scores, det.scores)
        assert [s["area"] for s in res.segments_info] == areas
        assert [s["bbox"] for s in res.segments_info] == boxes
        assert [s["train_id"] for s in res.segments_info] == seg.classes.tolist()
        assert [s["score"] for s in res.segments_info] == seg.scores.tolist()


@pytest.mark.parametrize("stride,size", [(4, (13, 9)), (4, (16, 16)), (8, (1, 1)), (3, (7, 20))])
def test_segment_stats_from_grid_equal_full_resolution_scan(stride, size):
    g = torch.Generator().manual_seed(stride * 100 + size[1])
    hv, wv = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
    grid = torch.randint(0, 5, (hv, wv), generator=g, dtype=torch.int32)  # segment 5 is absent
    full = upsample_ids(grid, stride, size)
    assert full.shape == size
    assert torch.equal(full, grid.repeat_interleave(stride, 0).repeat_interleave(stride, 1)[: size[0], : size[1]])
    assert segment_areas_and_boxes(grid, 5, stride, size) == _old_areas_and_boxes(full, 5)
