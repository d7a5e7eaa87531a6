"""Explicit mask loss (paper eqs. 16-18)."""
from __future__ import annotations

from torch import Tensor

from . import _dispatch, registry


def mask_loss(
    dense_boxes: Tensor,
    query_boxes: Tensor,
    gt_masks: Tensor,
    beta: Tensor,
    batch_index: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """``L_mask = 1/|Q| * sum_j beta_j / N_j * (E_FP_j + E_FN_j)`` (eq. 16).

    ``E_FP_j = sum_xy IoU(B(x,y), b_j) * [xy not in M_j]`` (eq. 17) and
    ``E_FN_j = sum_xy (1 - IoU(B(x,y), b_j)) * [xy in M_j]`` (eq. 18), IoU = I/U (0 where U = 0).

    Args:
        dense_boxes: ``[B, 4, H, W]`` (or ``[4, H, W]``) predicted dense boxes B(x, y).
        query_boxes: ``[Q, 4]`` query boxes b_j (NMS output), xyxy in the same coordinates.
        gt_masks: bool ``[Q, H, W]`` ground-truth mask M_j of each query's matched instance.
        beta: ``[Q]`` IoU of each query with its matched ground-truth box (a constant weight).
        batch_index: int ``[Q]`` image of each query; optional when B == 1.

    Returns:
        A scalar.  Gradients flow to ``dense_boxes`` and ``query_boxes`` (the paper's masks
        depend on both; detach ``query_boxes`` to train the dense boxes alone), not to ``beta``.
        A query whose mask is empty (N_j = 0) contributes 0; Q = 0 gives 0.
    """
    args = registry.validate("mask_loss", dense_boxes, query_boxes, gt_masks, beta, batch_index)
    dense_boxes = args[0]
    if query_boxes.shape[0] == 0:
        return dense_boxes.sum() * 0 + query_boxes.sum() * 0
    return _dispatch.select("mask_loss", backend, dense_boxes.device)(*args)
