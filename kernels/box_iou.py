"""``box_iou``: pairwise IoU ``[N, M]``, as torchvision (float16/bfloat16 computed in float32)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._box_score import div_rn, nan_max, nan_min
from ._common import launch, tile


@triton.jit
def pair_iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """IoU as torchvision: I / U with U = area_a + area_b - I (0/0 gives NaN)."""
    zero = tl.zeros_like(ax1 + bx1)
    w = nan_max(nan_min(ax2, bx2) - nan_max(ax1, bx1), zero)
    h = nan_max(nan_min(ay2, by2) - nan_max(ay1, by1), zero)
    inter = w * h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return div_rn(inter, union)


@triton.jit
def load_boxes(ptr, idx, mask, UPCAST: tl.constexpr):
    """Boxes ``idx`` of a contiguous [N, 4] tensor as four vectors (float16/bfloat16 in float32
    when ``UPCAST``); masked lanes get the unit box (no 0/0)."""
    idx = idx.to(tl.int64)
    x1 = tl.load(ptr + idx * 4, mask=mask, other=0)
    y1 = tl.load(ptr + idx * 4 + 1, mask=mask, other=0)
    x2 = tl.load(ptr + idx * 4 + 2, mask=mask, other=1)
    y2 = tl.load(ptr + idx * 4 + 3, mask=mask, other=1)
    if UPCAST:
        x1 = x1.to(tl.float32)
        y1 = y1.to(tl.float32)
        x2 = x2.to(tl.float32)
        y2 = y2.to(tl.float32)
    return x1, y1, x2, y2


@triton.jit
def _box_iou_kernel(a_ptr, b_ptr, out_ptr, N, M, UPCAST: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    i = tl.program_id(0) * BN + tl.arange(0, BN)
    j = tl.program_id(1) * BM + tl.arange(0, BM)
    im = i < N
    jm = j < M
    ax1, ay1, ax2, ay2 = load_boxes(a_ptr, i, im, UPCAST)
    bx1, by1, bx2, by2 = load_boxes(b_ptr, j, jm, UPCAST)
    iou = pair_iou(ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None],
                   bx1[None, :], by1[None, :], bx2[None, :], by2[None, :])
    offs = i[:, None].to(tl.int64) * M + j[None, :]
    tl.store(out_ptr + offs, iou, mask=im[:, None] & jm[None, :])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = boxes1.new_empty((n, m))
    if n == 0 or m == 0:
        return out
    bn, bm = tile(n, m, gpu=(32, 64), cap=16384)
    launch(_box_iou_kernel, (triton.cdiv(n, bn), triton.cdiv(m, bm)), boxes1.contiguous(), boxes2.contiguous(), out,
           n, m, UPCAST=boxes1.dtype in (torch.float16, torch.bfloat16), BN=bn, BM=bm)
    return out
