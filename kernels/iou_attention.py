"""``iou_attention``: P_loc(x, y, j) = score(B(x, y), B_j) (eq. 6), forward and backward in Triton.

Forward: one program scores a [QBLOCK queries x BLOCK pixels] tile.  Backward: one program
owns BLOCK pixels, loops over the queries, accumulates the dense-box gradient in registers
and writes per-program partial sums of the query gradient (summed by PyTorch afterwards:
deterministic, no atomics).  float16/bfloat16 boxes are computed in float32 (``OPMATH``), both
ways, and rounded once when stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rtpanoptic.ops.reference import TRI_EPS
from rtpanoptic.ops.registry import SCORE_IDS

from ._box_score import box_score, box_score_grad, load_box, load_dense
from ._common import TL_DTYPES, block_size, launch, opmath, scalars, tile


@triton.jit
def _iou_attention_fwd(dense_ptr, query_ptr, eps_ptr, out_ptr, Q, P,
                       TRI: tl.constexpr, OPMATH: tl.constexpr, QBLOCK: tl.constexpr, BLOCK: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_q = tl.program_id(1)
    p = pid_p * BLOCK + tl.arange(0, BLOCK)
    q = pid_q * QBLOCK + tl.arange(0, QBLOCK)
    pm = p < P
    qm = q < Q
    dx1, dy1, dx2, dy2 = load_dense(dense_ptr, P, p, pm, OPMATH)
    q4 = q.to(tl.int64) * 4
    qx1 = tl.load(query_ptr + q4, mask=qm, other=0).to(OPMATH)[:, None]
    qy1 = tl.load(query_ptr + q4 + 1, mask=qm, other=0).to(OPMATH)[:, None]
    qx2 = tl.load(query_ptr + q4 + 2, mask=qm, other=0).to(OPMATH)[:, None]
    qy2 = tl.load(query_ptr + q4 + 3, mask=qm, other=0).to(OPMATH)[:, None]
    eps = tl.load(eps_ptr)
    s = box_score(dx1[None, :], dy1[None, :], dx2[None, :], dy2[None, :], qx1, qy1, qx2, qy2, eps, TRI)
    offs = q[:, None].to(tl.int64) * P + p[None, :]
    tl.store(out_ptr + offs, s, mask=qm[:, None] & pm[None, :])


@triton.jit
def _iou_attention_bwd(grad_ptr, dense_ptr, query_ptr, eps_ptr, gdense_ptr, gquery_part_ptr, Q, P,
                       TRI: tl.constexpr, OPMATH: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    pm = p < P
    dx1, dy1, dx2, dy2 = load_dense(dense_ptr, P, p, pm, OPMATH)
    eps = tl.load(eps_ptr)
    acc1 = tl.zeros([BLOCK], dtype=OPMATH)
    acc2 = tl.zeros_like(acc1)
    acc3 = tl.zeros_like(acc1)
    acc4 = tl.zeros_like(acc1)
    for j in range(Q):
        qx1, qy1, qx2, qy2 = load_box(query_ptr, j, OPMATH)
        g = tl.load(grad_ptr + tl.cast(j, tl.int64) * P + p, mask=pm, other=0).to(OPMATH)
        gdx1, gdy1, gdx2, gdy2, gqx1, gqy1, gqx2, gqy2 = box_score_grad(
            dx1, dy1, dx2, dy2, qx1, qy1, qx2, qy2, eps, g, TRI)
        acc1 += gdx1
        acc2 += gdy1
        acc3 += gdx2
        acc4 += gdy2
        base = gquery_part_ptr + (pid.to(tl.int64) * Q + j) * 4
        tl.store(base, tl.sum(tl.where(pm, gqx1, 0)))
        tl.store(base + 1, tl.sum(tl.where(pm, gqy1, 0)))
        tl.store(base + 2, tl.sum(tl.where(pm, gqx2, 0)))
        tl.store(base + 3, tl.sum(tl.where(pm, gqy2, 0)))
    plane = tl.cast(P, tl.int64)
    tl.store(gdense_ptr + p, acc1, mask=pm)
    tl.store(gdense_ptr + plane + p, acc2, mask=pm)
    tl.store(gdense_ptr + 2 * plane + p, acc3, mask=pm)
    tl.store(gdense_ptr + 3 * plane + p, acc4, mask=pm)


def iou_attention(dense_boxes: torch.Tensor, query_boxes: torch.Tensor, score: str) -> torch.Tensor:
    _, h, w = dense_boxes.shape
    q, p = query_boxes.shape[0], h * w
    out = dense_boxes.new_empty((q, h, w))
    if q == 0 or p == 0:
        return out
    math = opmath(dense_boxes.dtype)
    qblock, block = tile(q, p)
    grid = (triton.cdiv(p, block), triton.cdiv(q, qblock))
    launch(_iou_attention_fwd, grid, dense_boxes.contiguous(), query_boxes.contiguous(),
           scalars(math, dense_boxes, TRI_EPS), out, q, p,
           TRI=SCORE_IDS[score] == 1, OPMATH=TL_DTYPES[math], QBLOCK=qblock, BLOCK=block)
    return out


def _iou_attention_backward(grad: torch.Tensor, dense_boxes: torch.Tensor, query_boxes: torch.Tensor,
                            score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``iou_attention`` w.r.t. ``dense_boxes`` and ``query_boxes`` (computed in
    float32 for float16/bfloat16, rounded once)."""
    _, h, w = dense_boxes.shape
    q, p = query_boxes.shape[0], h * w
    math = opmath(dense_boxes.dtype)
    # contiguous [4, H, W] whatever the input's strides: the kernel writes it densely
    gdense = torch.zeros(dense_boxes.shape, dtype=math, device=dense_boxes.device)
    if q == 0 or p == 0:
        return gdense.to(dense_boxes.dtype), torch.zeros_like(query_boxes)
    block = block_size(p, cap=4096)
    n_prog = triton.cdiv(p, block)
    parts = torch.empty((n_prog, q, 4), dtype=math, device=dense_boxes.device)
    launch(_iou_attention_bwd, (n_prog,), grad.contiguous(), dense_boxes.contiguous(), query_boxes.contiguous(),
           scalars(math, dense_boxes, TRI_EPS), gdense, parts, q, p,
           TRI=SCORE_IDS[score] == 1, OPMATH=TL_DTYPES[math], BLOCK=block)
    return gdense.to(dense_boxes.dtype), parts.sum(0).to(query_boxes.dtype)
