"""Box ops, drop-in replacements for ``torchvision.ops.{nms, batched_nms, box_iou}``."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch, registry


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, backend: str | None = None) -> Tensor:
    """Non-maximum suppression, exactly as ``torchvision.ops.nms``.

    Args:
        boxes: ``[N, 4]`` float boxes, xyxy in absolute pixels (areas without +1).
        scores: ``[N]`` scores, same dtype and device as ``boxes``.
        iou_threshold: a box is discarded when its IoU with a kept, higher-scoring
            box is ``> iou_threshold``.
        backend: ``"reference" | "cpp" | "cuda" | "triton"`` or None (fastest available).

    Returns:
        int64 ``[K]`` indices of the kept boxes, in decreasing score order; equal
        scores keep their input order.  NaN coordinates give NaN IoUs, which never
        exceed the threshold: such a box is kept (if its score allows) and suppresses nothing.
    """
    args = registry.validate("nms", boxes, scores, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return _dispatch.select("nms", backend, boxes.device)(*args)


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, backend: str | None = None
) -> Tensor:
    """Per-category NMS, as ``torchvision.ops.batched_nms``: boxes suppress each other
    only when their ``idxs`` (int ``[N]``, e.g. class ids) are equal.

    Returns int64 ``[K]`` kept indices in decreasing score order (ties: input order).
    Computed per category exactly (no coordinate-offset trick, so no rounding from it).
    Empty ``boxes`` (any shape) give an empty result without looking at the other arguments,
    as torchvision's (``batched_nms(empty, None, None, None)``).
    """
    if isinstance(boxes, Tensor) and boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    args = registry.validate("batched_nms", boxes, scores, idxs, iou_threshold)
    return _dispatch.select("batched_nms", backend, boxes.device)(*args)


def box_iou(boxes1: Tensor, boxes2: Tensor, *, backend: str | None = None) -> Tensor:
    """Pairwise IoU ``[N, M]`` of xyxy boxes ``[N, 4]`` and ``[M, 4]``, as
    ``torchvision.ops.box_iou`` (no +1 on areas; two zero-area boxes give NaN).
    The result has the boxes' dtype (float16/bfloat16 are computed in float32); integer boxes
    are computed in torch's default float dtype and give it, as torchvision's (equal to
    torchvision's result while the areas stay below 2^24 pixels).
    Differentiable only through the reference: with ``backend=None`` and an input that
    requires grad, the reference is used (the cpp/cuda kernels raise on backward)."""
    boxes1, boxes2 = registry.validate("box_iou", boxes1, boxes2)
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    if backend is None and torch.is_grad_enabled() and (boxes1.requires_grad or boxes2.requires_grad):
        backend = "reference"
    return _dispatch.select("box_iou", backend, boxes1.device)(boxes1, boxes2)
