"""Query selection as one op: class-aware NMS, optional class-agnostic NMS and the top N."""
from __future__ import annotations

from typing import Literal, overload

import torch
from torch import Tensor

from . import _dispatch, _validate
from ._padded import count_on_host


@overload
def select_queries(boxes: Tensor, scores: Tensor, labels: Tensor, nms_thresh: float,
                   global_nms_thresh: float | None, top_n: int, *, padded: Literal[False] = ...,
                   backend: str | None = ...) -> Tensor: ...
@overload
def select_queries(boxes: Tensor, scores: Tensor, labels: Tensor, nms_thresh: float,
                   global_nms_thresh: float | None, top_n: int, *, padded: Literal[True],
                   backend: str | None = ...) -> tuple[Tensor, Tensor]: ...


def select_queries(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    nms_thresh: float,
    global_nms_thresh: float | None,
    top_n: int,
    *,
    padded: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The ``top_n`` queries of one image, exactly::

        keep = batched_nms(boxes, scores, labels, nms_thresh)
        if global_nms_thresh is not None and global_nms_thresh >= 0:
            keep = keep[nms(boxes[keep], scores[keep], global_nms_thresh)]
        keep = keep[:top_n]

    computed in one sweep in score order that stops once ``top_n`` queries are kept (cpp/cuda/triton).

    Args:
        boxes: ``[N, 4]`` float boxes, xyxy in absolute pixels (areas without +1).
        scores: ``[N]`` scores, same dtype and device as ``boxes``.
        labels: ``[N]`` integer class ids; only boxes of one class suppress each other in the
            class-aware pass.
        nms_thresh: class-aware IoU threshold (a box goes when IoU > threshold with a kept box).
        global_nms_thresh: class-agnostic IoU threshold over every class-NMS survivor; None or
            a negative number turns the pass off.
        top_n: at most this many queries (``>= 0``).
        padded: return the fixed-size form ``(keep, count)`` instead of the kept indices.
        backend: ``"reference" | "cpp" | "cuda" | "triton"`` or None (fastest available).

    Returns:
        int64 ``[K]`` kept indices in decreasing score order (ties: input order), ``K <= top_n``.
        With ``padded=True``: ``keep`` int64 ``[min(top_n, N)]`` (the K indices, then -1) and
        ``count`` int64 0-d (K), both on the input device and computed there: on a GPU nothing
        waits for the device, so the call can be captured in a CUDA graph.  The default form
        reads ``count`` on the host (one synchronisation on a GPU).

    NaN IoUs (a box with a NaN coordinate) never exceed a threshold; NaN scores sort first, as in
    :func:`rtpanoptic.ops.nms`.
    """
    op = "select_queries"
    _validate.boxes(op, "boxes", boxes)
    _validate.tensor(op, "scores", scores, ndim=1, floating=True)
    _validate.tensor(op, "labels", labels, ndim=1, integer=True)
    _validate.same_length(op, boxes=boxes, scores=scores, labels=labels)
    _validate.same_dtype(op, boxes=boxes, scores=scores)
    device = _validate.same_device(op, boxes=boxes, scores=scores, labels=labels)
    thr = _validate.number(op, "nms_thresh", nms_thresh)
    global_thr = -1.0 if global_nms_thresh is None else _validate.number(op, "global_nms_thresh",
                                                                         global_nms_thresh, low=None)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise ValueError(f"{op}: top_n must be a non-negative int, got {top_n!r}")
    if boxes.shape[0] == 0:
        keep, count = torch.empty(0, dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64,
                                                                                    device=device)
    else:
        impl = _dispatch.select(op, backend, device)
        keep, count = impl(boxes, scores, labels.to(torch.int64), thr, max(global_thr, -1.0), top_n)
    if padded:
        return keep, count
    return keep[: count_on_host(count, keep.shape[0])]
