"""Box self-attention: P_loc(x, y, j) = IoU(B(x, y), B_j) (paper eq. 6)."""
from __future__ import annotations

from torch import Tensor

from . import _dispatch, registry


def iou_attention(
    dense_boxes: Tensor, query_boxes: Tensor, score: str = "iou", *, backend: str | None = None
) -> Tensor:
    """Score of every pixel's box against every query box.

    Args:
        dense_boxes: ``[4, H, W]`` xyxy box per pixel (one image's B(x, y)).
        query_boxes: ``[Q, 4]`` xyxy query boxes, same dtype and device.
        score: ``"iou"`` — I / U as in the paper (0 where U = 0); ``"tri"`` — the released
            TRI code's smoothed GIoU ``(I + 1)/(U + 1) - (C - U)/C``, C = enclosing area + 1e-7.

    Returns:
        ``[Q, H, W]`` scores, differentiable w.r.t. both box inputs.
    """
    args = registry.validate("iou_attention", dense_boxes, query_boxes, score)
    _, h, w = dense_boxes.shape
    if query_boxes.shape[0] == 0 or h * w == 0:
        return dense_boxes.new_zeros((query_boxes.shape[0], h, w))
    return _dispatch.select("iou_attention", backend, dense_boxes.device)(*args)
