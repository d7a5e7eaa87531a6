"""``mask_loss`` (eqs. 16-18): fused forward and backward kernels.

Queries are grouped by image (a stable sort of ``batch_index`` and per-image ranges), so one
program owns BLOCK pixels of one image and loops over that image's queries:

* forward: per query and program, the partial sums of ``E_FP + E_FN`` and of ``N_j``
  (``[programs, Q]``, summed by PyTorch; no atomics, deterministic);
* backward: the gradient w.r.t. the dense boxes is accumulated in registers over the
  image's queries (those with a non-empty mask: the others take no part in the loss), the
  gradient w.r.t. each query box is written as per-program partials.

float16/bfloat16 boxes are computed in float32 (``ACC``), weights and gradients included.
Nothing of size ``Q x H x W`` is materialised besides the boolean ground-truth masks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._box_score import box_score, box_score_grad, load_box, load_dense
from ._common import TL_DTYPES, block_size, launch, opmath


@triton.jit
def _image_block(dense, start, P, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """This program's BLOCK pixels p (mask m) of image program_id(1), their boxes in the dense map
    ``dense``, and the image's range [first, last) in the query order (``start``)."""
    img = tl.program_id(1)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = p < P
    dx1, dy1, dx2, dy2 = load_dense(dense + img.to(tl.int64) * 4 * P, P, p, m, ACC)
    return p, m, dx1, dy1, dx2, dy2, tl.load(start + img), tl.load(start + img + 1)


@triton.jit
def _mask_loss_fwd(dense_ptr, query_ptr, mask_ptr, order_ptr, start_ptr, err_ptr, count_ptr, Q, P,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    p, m, dx1, dy1, dx2, dy2, first, last = _image_block(dense_ptr, start_ptr, P, ACC, BLOCK)
    for k in range(first, last):
        j = tl.load(order_ptr + k).to(tl.int64)
        qx1, qy1, qx2, qy2 = load_box(query_ptr, j, ACC)
        iou = box_score(dx1, dy1, dx2, dy2, qx1, qy1, qx2, qy2, 0.0, False)
        inside = tl.load(mask_ptr + j * P + p, mask=m, other=0) != 0
        err = tl.where(inside, 1.0 - iou, iou)
        err = tl.where(m, err, 0.0)
        tl.store(err_ptr + j * n_prog + pid, tl.sum(err, axis=0))
        tl.store(count_ptr + j * n_prog + pid, tl.sum(inside.to(tl.int32), axis=0))


@triton.jit
def _mask_loss_bwd(dense_ptr, query_ptr, mask_ptr, order_ptr, start_ptr, count_ptr, weight_ptr, gdense_ptr,
                   gquery_ptr, Q, P, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    p, m, dx1, dy1, dx2, dy2, first, last = _image_block(dense_ptr, start_ptr, P, ACC, BLOCK)
    acc1 = tl.zeros([BLOCK], dtype=ACC)
    acc2 = tl.zeros([BLOCK], dtype=ACC)
    acc3 = tl.zeros([BLOCK], dtype=ACC)
    acc4 = tl.zeros([BLOCK], dtype=ACC)
    for k in range(first, last):
        j = tl.load(order_ptr + k).to(tl.int64)
        if tl.load(count_ptr + j) > 0:  # N_j = 0: no part in the loss, no gradient
            qx1, qy1, qx2, qy2 = load_box(query_ptr, j, ACC)
            wj = tl.load(weight_ptr + j)  # grad * beta_j / (N_j * Q)
            inside = tl.load(mask_ptr + j * P + p, mask=m, other=0) != 0
            # d(err)/d(iou) = +1 outside the mask (E_FP), -1 inside (E_FN)
            g = tl.where(m, tl.where(inside, -wj, wj), 0.0)
            gdx1, gdy1, gdx2, gdy2, gqx1, gqy1, gqx2, gqy2 = box_score_grad(
                dx1, dy1, dx2, dy2, qx1, qy1, qx2, qy2, 0.0, g, False)
            acc1 += gdx1
            acc2 += gdy1
            acc3 += gdx2
            acc4 += gdy2
            base = gquery_ptr + (j * n_prog + pid) * 4
            tl.store(base, tl.sum(tl.where(m, gqx1, 0.0), axis=0))
            tl.store(base + 1, tl.sum(tl.where(m, gqy1, 0.0), axis=0))
            tl.store(base + 2, tl.sum(tl.where(m, gqx2, 0.0), axis=0))
            tl.store(base + 3, tl.sum(tl.where(m, gqy2, 0.0), axis=0))
    out = gdense_ptr + tl.program_id(1).to(tl.int64) * 4 * P
    plane = tl.cast(P, tl.int64)
    tl.store(out + p, acc1, mask=m)
    tl.store(out + plane + p, acc2, mask=m)
    tl.store(out + 2 * plane + p, acc3, mask=m)
    tl.store(out + 3 * plane + p, acc4, mask=m)


def _by_image(batch_index: torch.Tensor, n_images: int):
    """Queries sorted by image (stable) and the start of each image's range ``[B + 1]``."""
    order = torch.sort(batch_index, stable=True).indices.to(torch.int32)
    # (index_add_, not bincount: a static output shape, so torch.compile can trace it)
    counts = torch.zeros(n_images, dtype=torch.int32, device=batch_index.device).index_add_(
        0, batch_index, torch.ones_like(batch_index, dtype=torch.int32))
    start = torch.zeros(n_images + 1, dtype=torch.int32, device=batch_index.device)
    start[1:] = torch.cumsum(counts, 0)
    return order, start


def _launch_shape(dense_boxes):
    b, _, h, w = dense_boxes.shape
    p = h * w
    block = block_size(p, cap=4096)
    return b, p, block, triton.cdiv(p, block)


def mask_loss(dense_boxes: torch.Tensor, query_boxes: torch.Tensor, gt_masks: torch.Tensor, beta: torch.Tensor,
              batch_index: torch.Tensor) -> torch.Tensor:
    q = query_boxes.shape[0]
    b, p, block, n_prog = _launch_shape(dense_boxes)
    acc = opmath(dense_boxes.dtype)
    if q == 0 or p == 0:
        return dense_boxes.new_zeros(())
    order, start = _by_image(batch_index, b)
    err = torch.empty((q, n_prog), dtype=acc, device=dense_boxes.device)
    count = torch.empty((q, n_prog), dtype=torch.int32, device=dense_boxes.device)
    launch(_mask_loss_fwd, (n_prog, b), dense_boxes.contiguous(), query_boxes.contiguous(),
           gt_masks.contiguous().view(torch.uint8), order, start, err, count, q, p, ACC=TL_DTYPES[acc], BLOCK=block)
    n = count.sum(1)
    per_query = torch.where(n > 0, beta.to(acc) * err.sum(1) / n.clamp(min=1).to(acc), 0.0)
    return (per_query.sum() / q).to(dense_boxes.dtype)


def _mask_loss_backward(grad: torch.Tensor, dense_boxes: torch.Tensor, query_boxes: torch.Tensor,
                        gt_masks: torch.Tensor, beta: torch.Tensor,
                        batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``mask_loss`` w.r.t. ``dense_boxes`` and ``query_boxes`` for an upstream ``grad``."""
    q = query_boxes.shape[0]
    b, p, block, n_prog = _launch_shape(dense_boxes)
    acc = opmath(dense_boxes.dtype)
    gdense = torch.zeros(dense_boxes.shape, dtype=acc, device=dense_boxes.device)
    if q == 0 or p == 0:
        return gdense.to(dense_boxes.dtype), torch.zeros_like(query_boxes)
    order, start = _by_image(batch_index, b)
    n = gt_masks.reshape(q, -1).sum(1)
    weight = grad.to(acc) * beta.to(acc) / (n.clamp(min=1).to(acc) * q)
    parts = torch.zeros((q, n_prog, 4), dtype=acc, device=dense_boxes.device)
    launch(_mask_loss_bwd, (n_prog, b), dense_boxes.contiguous(), query_boxes.contiguous(),
           gt_masks.contiguous().view(torch.uint8), order, start, n, weight, gdense, parts, q, p, ACC=TL_DTYPES[acc],
           BLOCK=block)
    return gdense.to(dense_boxes.dtype), parts.sum(1).to(query_boxes.dtype)
