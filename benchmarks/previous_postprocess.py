"""The previous ``Predictor.postprocess`` (before the fused pipeline), kept as the reference of
tests/test_postprocess_fused.py and the "old" side of benchmarks/test_bench_end_to_end.py:
full-resolution id map (``repeat_interleave``), semantic map from ``F.interpolate`` + ``argmax``
in bands of rows, segment areas and boxes from a scan of the full-resolution map."""
import math

import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.inference import semantic_probs_on


def old_upsample_argmax(logits, scale, size, band=32):
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


def old_areas_and_boxes(panoptic, n):
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


def old_postprocess(pred, outputs, sizes):
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
        semantic = old_upsample_argmax(outputs.semantic[b], model.semantic_stride, (h, w))
        areas, boxes = old_areas_and_boxes(panoptic, int(seg.classes.numel()))
        out.append((panoptic, semantic, seg, areas, boxes, det))
    return out
