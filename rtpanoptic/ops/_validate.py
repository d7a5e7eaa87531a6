"""Input checks of the public ops: clear TypeError / ValueError messages.

First the helpers, then one validator per op, named in the op's row of
:mod:`rtpanoptic.ops.registry`.  A validator takes the public function's arguments (all of them
given, ``backend=`` aside), raises the public op's error for a bad one and returns the op's
arguments canonical, in the schema's order: what every backend is called with.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ._padded import capturing
from .reference import SCORES


def tensor(
    op: str,
    name: str,
    t,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = False,
    integer: bool = False,
    boolean: bool = False,
) -> Tensor:
    """Check one argument; ``shape`` entries of None match any size."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{op}: {name} must be an integer tensor, got {t.dtype}")
    if boolean and t.dtype != torch.bool:
        raise TypeError(f"{op}: {name} must be a bool tensor, got {t.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]" if shape else f"{ndim}-D"
        raise ValueError(f"{op}: {name} must have shape {want}, got {list(t.shape)}")
    if shape is not None:
        for i, s in enumerate(shape):
            if s is not None and t.shape[i] != s:
                want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
                raise ValueError(f"{op}: {name} must have shape {want}, got {list(t.shape)}")
    return t


def xyxy(op: str, name: str, t, *, integer: bool = False) -> Tensor:
    """xyxy boxes: floating point, shape [N, 4].  ``integer=True`` also takes integer boxes and
    returns them in torch's default float dtype (torchvision's IoU dtype for integer boxes)."""
    if integer and isinstance(t, Tensor) and not t.is_floating_point():
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must be a floating-point or integer tensor, got {t.dtype}")
        return tensor(op, name, t, shape=(None, 4)).to(torch.get_default_dtype())
    return tensor(op, name, t, shape=(None, 4), floating=True)


def same_length(op: str, **named: Tensor) -> None:
    (first_name, first), *rest = named.items()
    for name, t in rest:
        if t.shape[0] != first.shape[0]:
            raise ValueError(
                f"{op}: {name} has {t.shape[0]} entries but {first_name} has {first.shape[0]}; they must match"
            )


def same_device(op: str, **named: Tensor) -> torch.device:
    devices = {name: t.device for name, t in named.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on the same device, got {listing}")
    return first


def same_dtype(op: str, **named: Tensor) -> None:
    dtypes = {name: t.dtype for name, t in named.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: tensors must share one dtype, got {listing}")


def number(op: str, name: str, value, *, low: float | None = 0.0, high: float | None = None) -> float:
    """A finite real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{op}: {name} must not be NaN")
    if low is not None and value < low:
        raise ValueError(f"{op}: {name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{op}: {name} must be <= {high}, got {value}")
    return value


INT64_MAX = 2**63 - 1  # the largest int an op schema's ``int`` argument holds


def _int_in(op: str, name: str, value, low: int, what: str) -> int:
    """A Python int in [low, INT64_MAX]: checked here, before dispatch, so that every backend
    raises the public op's ValueError (the schema would raise its own RuntimeError)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{op}: {name} must be a {what} int, got {value!r}")  # the C++ checks' words
    if value > INT64_MAX:
        raise ValueError(f"{op}: {name} must be a {what} int below 2**63 (an int64), got {value!r}")
    return value


def positive_int(op: str, name: str, value) -> int:
    return _int_in(op, name, value, 1, "positive")


def choice(op: str, name: str, value, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{op}: {name} must be one of {options}, got {value!r}")
    return value


def _scored_boxes(op: str, boxes: Tensor, scores: Tensor, **labels: Tensor) -> None:
    """Boxes ``[N, 4]``, their scores ``[N]`` (same dtype) and integer ``labels`` ``[N]``, on one device."""
    xyxy(op, "boxes", boxes)
    tensor(op, "scores", scores, ndim=1, floating=True)
    for name, t in labels.items():
        tensor(op, name, t, ndim=1, integer=True)
    same_length(op, boxes=boxes, scores=scores, **labels)
    same_dtype(op, boxes=boxes, scores=scores)
    same_device(op, boxes=boxes, scores=scores, **labels)


def _non_negative_int(op: str, name: str, value) -> int:
    return _int_in(op, name, value, 0, "non-negative")


def _is_flag(value) -> bool:
    """True / False, 0 / 1, or their numpy and 0-d tensor spellings."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.is_floating_point() and value.item() in (0, 1)
    integral = isinstance(value, numbers.Integral) or getattr(getattr(value, "dtype", None), "kind", "") in "biu"
    return integral and not isinstance(value, str) and value in (0, 1)


# ------------------------------------------------------------------ one validator per op
def nms(boxes, scores, iou_threshold) -> tuple:
    _scored_boxes("nms", boxes, scores)
    return boxes, scores, number("nms", "iou_threshold", iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold) -> tuple:
    _scored_boxes("batched_nms", boxes, scores, idxs=idxs)
    return boxes, scores, idxs, number("batched_nms", "iou_threshold", iou_threshold)


def box_iou(boxes1, boxes2) -> tuple:
    op = "box_iou"
    boxes1 = xyxy(op, "boxes1", boxes1, integer=True)
    boxes2 = xyxy(op, "boxes2", boxes2, integer=True)
    same_dtype(op, boxes1=boxes1, boxes2=boxes2)
    same_device(op, boxes1=boxes1, boxes2=boxes2)
    return boxes1, boxes2


def decode_boxes(offsets, stride) -> tuple:
    op = "decode_boxes"
    tensor(op, "offsets", offsets, shape=(None, 4, None, None), floating=True)
    return offsets, positive_int(op, "stride", stride)


def gather_levelness(offsets, levelness, out_stride) -> tuple:
    op = "gather_levelness"
    tensor(op, "levelness", levelness, ndim=4, floating=True)
    if isinstance(offsets, Tensor) or not isinstance(offsets, (list, tuple)):
        raise TypeError(f"{op}: offsets must be a list of L tensors [B, 4, h_i, w_i], got {type(offsets).__name__}")
    offsets = list(offsets)
    n_levels = levelness.shape[1] - 1
    if len(offsets) != n_levels or n_levels < 1:
        raise ValueError(
            f"{op}: levelness has {levelness.shape[1]} channels, so it needs {n_levels} levels of offsets "
            f"(channel 0 is background), got {len(offsets)}"
        )
    batch = levelness.shape[0]
    for i, o in enumerate(offsets):
        tensor(op, f"offsets[{i}]", o, shape=(batch, 4, None, None), floating=True)
        if o.dtype != levelness.dtype:
            raise TypeError(f"{op}: offsets[{i}] is {o.dtype} but levelness is {levelness.dtype}")
        if min(o.shape[2:]) == 0 and levelness[0, 0].numel() > 0:
            raise ValueError(f"{op}: offsets[{i}] is empty ({list(o.shape)}) but the levelness grid is not")
    same_device(op, levelness=levelness, **{f"offsets[{i}]": o for i, o in enumerate(offsets)})
    return offsets, levelness, positive_int(op, "out_stride", out_stride)


def iou_attention(dense_boxes, query_boxes, score) -> tuple:
    op = "iou_attention"
    tensor(op, "dense_boxes", dense_boxes, shape=(4, None, None), floating=True)
    xyxy(op, "query_boxes", query_boxes)
    same_dtype(op, dense_boxes=dense_boxes, query_boxes=query_boxes)
    same_device(op, dense_boxes=dense_boxes, query_boxes=query_boxes)
    return dense_boxes, query_boxes, choice(op, "score", score, SCORES)


def _fusion(op: str, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, sigma, score,
            score_threshold, overlap_threshold, stuff_area_limit, num_queries, read_values: bool) -> tuple:
    """The arguments both panoptic ops share, canonical: ``query_classes`` int64, ``query_scores`` in
    ``dense_boxes``' dtype, ``is_thing`` a bool tensor on the device.  ``read_values``: also check
    the values of ``query_classes`` (of the present queries) and ``num_queries``, which reads them
    on the host (skipped under ``torch.compile`` tracing)."""
    tensor(op, "dense_boxes", dense_boxes, shape=(4, None, None), floating=True)
    _, h, w = dense_boxes.shape
    tensor(op, "sem_probs", sem_probs, shape=(None, h, w), floating=True)
    xyxy(op, "query_boxes", query_boxes)
    tensor(op, "query_classes", query_classes, ndim=1, integer=True)
    tensor(op, "query_scores", query_scores, ndim=1, floating=True)
    same_length(op, query_boxes=query_boxes, query_classes=query_classes, query_scores=query_scores)
    same_dtype(op, dense_boxes=dense_boxes, sem_probs=sem_probs, query_boxes=query_boxes)
    device = same_device(
        op, dense_boxes=dense_boxes, sem_probs=sem_probs, query_boxes=query_boxes,
        query_classes=query_classes, query_scores=query_scores,
    )
    if not isinstance(is_thing, Tensor):
        flags = list(is_thing) if isinstance(is_thing, Iterable) and not isinstance(is_thing, (str, bytes)) else None
        bad = [f for f in flags if not _is_flag(f)] if flags is not None else [is_thing]
        if bad:
            raise TypeError(f"{op}: is_thing must be a bool tensor or a sequence of True / False (or 0 / 1), "
                            f"got {'an item ' if flags is not None else ''}{bad[0]!r}")
        is_thing = torch.as_tensor([bool(f) for f in flags], dtype=torch.bool)
    tensor(op, "is_thing", is_thing, ndim=1, boolean=True)
    n_classes = sem_probs.shape[0]
    if is_thing.shape[0] != n_classes:
        raise ValueError(f"{op}: is_thing has {is_thing.shape[0]} entries but sem_probs has {n_classes} classes")
    if n_classes == 0:
        raise ValueError(f"{op}: sem_probs must have at least one class")
    is_thing = is_thing.to(device)
    sigma = number(op, "sigma", sigma, low=None)
    choice(op, "score", score, SCORES)
    score_threshold = number(op, "score_threshold", score_threshold, low=None)
    overlap_threshold = number(op, "overlap_threshold", overlap_threshold, low=0.0, high=1.0)
    _non_negative_int(op, "stuff_area_limit", stuff_area_limit)
    if num_queries is not None:
        tensor(op, "num_queries", num_queries, ndim=0, integer=True)
        same_device(op, dense_boxes=dense_boxes, num_queries=num_queries)
    query_classes = query_classes.to(torch.int64)
    if read_values and not torch.compiler.is_compiling():
        present = query_classes
        if num_queries is not None:
            n, n_q = int(num_queries), query_classes.shape[0]
            if not 0 <= n <= n_q:
                raise ValueError(f"{op}: num_queries must lie in [0, {n_q}] (the number of queries), got {n}")
            present = query_classes[:n]
        if present.numel():
            lo, hi = int(present.min()), int(present.max())
            if lo < 0 or hi >= n_classes:
                raise ValueError(f"{op}: query_classes must lie in [0, {n_classes}), got values in [{lo}, {hi}]")
    query_scores = query_scores.to(dense_boxes.dtype)
    return (dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, sigma, score,
            score_threshold, overlap_threshold, stuff_area_limit)


def panoptic_from_dense(dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, *, sigma, score,
                        score_threshold, overlap_threshold, stuff_area_limit, num_queries, padded) -> tuple:
    """Values are read (see :func:`_fusion`) where that costs no synchronisation: on CPU tensors,
    and on a GPU in the default form, which synchronises anyway; not in the padded form on a GPU
    nor while a CUDA stream is capturing (where the default form is an error)."""
    op = "panoptic_from_dense"
    in_capture = capturing(tensor(op, "dense_boxes", dense_boxes).device)
    if in_capture and not padded:
        raise RuntimeError(f"{op}: the default form reads the segment count on the host, which a CUDA graph "
                           "capture cannot do; pass padded=True")
    args = _fusion(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, sigma, score,
                   score_threshold, overlap_threshold, stuff_area_limit, num_queries,
                   read_values=not in_capture and (not padded or dense_boxes.device.type == "cpu"))
    return *args, None if num_queries is None else num_queries.to(torch.int64)


def panoptic_from_dense_release(dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, *,
                                stride, size, sigma, score, score_threshold, overlap_threshold,
                                stuff_area_limit) -> tuple:
    """The schema's arguments but the last, ``fma`` (a property of the device, not an argument)."""
    op = "panoptic_from_dense_release"
    args = _fusion(op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, sigma, score,
                   score_threshold, overlap_threshold, stuff_area_limit, None, read_values=True)
    if (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or stride & (stride - 1)
            or stride > INT64_MAX):
        limit = " below 2**63" if isinstance(stride, int) and stride > INT64_MAX else ""
        raise ValueError(f"{op}: stride must be a power of two (1, 2, 4, ...){limit}, got {stride!r}")
    _, h, w = dense_boxes.shape
    if (
        not isinstance(size, (tuple, list)) or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise ValueError(f"{op}: size must be a (height, width) pair of ints, got {size!r}")
    height, width = size
    if not (0 <= height <= h * stride and 0 <= width <= w * stride):
        raise ValueError(f"{op}: size must lie in [0, {h * stride}] x [0, {w * stride}] (the grid {h}x{w} "
                         f"times stride {stride}), got {tuple(size)}")
    return *args[:6], stride, height, width, *args[6:]


def mask_loss(dense_boxes, query_boxes, gt_masks, beta, batch_index) -> tuple:
    """``dense_boxes`` ``[4, H, W]`` becomes ``[1, 4, H, W]``; ``batch_index`` None (one image)
    zeros, int64; ``beta`` detached, in the boxes' dtype."""
    op = "mask_loss"
    if isinstance(dense_boxes, Tensor) and dense_boxes.dim() == 3:
        dense_boxes = dense_boxes.unsqueeze(0)
    tensor(op, "dense_boxes", dense_boxes, shape=(None, 4, None, None), floating=True)
    b, _, h, w = dense_boxes.shape
    xyxy(op, "query_boxes", query_boxes)
    q = query_boxes.shape[0]
    tensor(op, "gt_masks", gt_masks, shape=(q, h, w), boolean=True)
    tensor(op, "beta", beta, shape=(q,), floating=True)
    same_dtype(op, dense_boxes=dense_boxes, query_boxes=query_boxes)
    if batch_index is None:
        if b != 1:
            raise ValueError(f"{op}: batch_index is required when dense_boxes holds {b} images")
        batch_index = torch.zeros(q, dtype=torch.int64, device=dense_boxes.device)
    tensor(op, "batch_index", batch_index, shape=(q,), integer=True)
    same_device(
        op, dense_boxes=dense_boxes, query_boxes=query_boxes, gt_masks=gt_masks, beta=beta, batch_index=batch_index
    )
    batch_index = batch_index.to(torch.int64)
    if q and not torch.compiler.is_compiling():
        lo, hi = int(batch_index.min()), int(batch_index.max())
        if lo < 0 or hi >= b:
            raise ValueError(f"{op}: batch_index must lie in [0, {b}), got values in [{lo}, {hi}]")
    return dense_boxes, query_boxes, gt_masks, beta.detach().to(dense_boxes.dtype), batch_index


def select_queries(boxes, scores, labels, nms_thresh, global_nms_thresh, top_n) -> tuple:
    """``global_nms_thresh`` None (the pass off) becomes -1, as does any negative number."""
    op = "select_queries"
    _scored_boxes(op, boxes, scores, labels=labels)
    thr = number(op, "nms_thresh", nms_thresh)
    global_thr = -1.0 if global_nms_thresh is None else number(op, "global_nms_thresh", global_nms_thresh, low=None)
    top_n = _non_negative_int(op, "top_n", top_n)
    return boxes, scores, labels.to(torch.int64), thr, max(global_thr, -1.0), top_n


def _size_pair(op: str, name: str, value) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"{op}: {name} must be a pair of ints (H, W), got {value!r}")
    return [positive_int(op, f"{name}[{i}]", v) for i, v in enumerate(value)]


# Output dtypes of upsample_argmax: the largest class index each holds.
LABEL_DTYPES = {torch.int64: 2**63 - 1, torch.int32: 2**31 - 1, torch.int16: 2**15 - 1, torch.uint8: 2**8 - 1}


def upsample_argmax(logits, size, crop, out_dtype) -> tuple:
    """``crop`` None becomes ``size``; (logits, size, crop, out_dtype)."""
    op = "upsample_argmax"
    tensor(op, "logits", logits, ndim=4, floating=True)
    size = _size_pair(op, "size", size)
    crop = size if crop is None else _size_pair(op, "crop", crop)
    if crop[0] > size[0] or crop[1] > size[1]:
        raise ValueError(f"{op}: crop {tuple(crop)} must not exceed size {tuple(size)}")
    _, c, h, w = logits.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"{op}: logits must have at least one class and one pixel, got {list(logits.shape)}")
    if out_dtype not in LABEL_DTYPES:
        raise TypeError(f"{op}: out_dtype must be torch.int64, torch.int32, torch.int16 or torch.uint8, got {out_dtype}")
    if c - 1 > LABEL_DTYPES[out_dtype]:
        raise ValueError(f"{op}: {c} classes do not fit in {out_dtype}")
    return logits, size, crop, out_dtype
