"""Explicit mask loss (paper eqs. 16-18)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch, _validate


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
    op = "mask_loss"
    if isinstance(dense_boxes, Tensor) and dense_boxes.dim() == 3:
        dense_boxes = dense_boxes.unsqueeze(0)
    _validate.tensor(op, "dense_boxes", dense_boxes, shape=(None, 4, None, None), floating=True)
    b, _, h, w = dense_boxes.shape
    _validate.boxes(op, "query_boxes", query_boxes)
    q = query_boxes.shape[0]
    _validate.tensor(op, "gt_masks", gt_masks, shape=(q, h, w), boolean=True)
    _validate.tensor(op, "beta", beta, shape=(q,), floating=True)
    _validate.same_dtype(op, dense_boxes=dense_boxes, query_boxes=query_boxes)
    if batch_index is None:
        if b != 1:
            raise ValueError(f"{op}: batch_index is required when dense_boxes holds {b} images")
        batch_index = torch.zeros(q, dtype=torch.int64, device=dense_boxes.device)
    _validate.tensor(op, "batch_index", batch_index, shape=(q,), integer=True)
    device = _validate.same_device(
        op, dense_boxes=dense_boxes, query_boxes=query_boxes, gt_masks=gt_masks, beta=beta, batch_index=batch_index
    )
    batch_index = batch_index.to(torch.int64)
    if q and not torch.compiler.is_compiling():
        lo, hi = int(batch_index.min()), int(batch_index.max())
        if lo < 0 or hi >= b:
            raise ValueError(f"{op}: batch_index must lie in [0, {b}), got values in [{lo}, {hi}]")
    if q == 0:
        return dense_boxes.sum() * 0 + query_boxes.sum() * 0
    beta = beta.detach().to(dense_boxes.dtype)
    return _dispatch.select(op, backend, device)(dense_boxes, query_boxes, gt_masks, beta, batch_index)
