"""Query selection as one op: class-aware NMS, optional class-agnostic NMS and the top N."""
from __future__ import annotations

from typing import Literal, overload

import torch
from torch import Tensor

from . import _dispatch, registry
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
    args = registry.validate("select_queries", boxes, scores, labels, nms_thresh, global_nms_thresh, top_n)
    device = boxes.device
    if boxes.shape[0] == 0:
        keep, count = torch.empty(0, dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64,
                                                                                    device=device)
    else:
        keep, count = _dispatch.select("select_queries", backend, device)(*args)
    if padded:
        return keep, count
    return keep[: count_on_host(count, keep.shape[0])]
