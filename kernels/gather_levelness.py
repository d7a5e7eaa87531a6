"""``gather_levelness`` (eq. 14) in one kernel: torch.argmax of the levelness (first maximum,
NaN counts as the maximum), bilinear resampling (``align_corners=False``, as ``F.interpolate``)
of the chosen level's offsets only, and decoding around the output grid's cell centres.

The L levels are passed as one flat buffer plus a table ``(base, h, w)`` per level, so any
number of levels works with one compiled kernel per L.  Backward (w.r.t. the offsets) is
plain PyTorch: the bilinear adjoint of each level's masked gradient
(``aten.upsample_bilinear2d_backward``); the levelness gets no gradient (argmax).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._box_score import div_rn
from ._common import TL_DTYPES, argmax_better, block_size, constant, launch, opmath
from ._grid import cell_centre
from .decode_boxes import decode_block


@triton.jit
def _source_index(dst, in_size, out_size, OPMATH: tl.constexpr):
    """F.interpolate's (index0, index1, lambda1) along one axis, align_corners=False."""
    scale = div_rn(tl.cast(in_size, OPMATH), tl.cast(out_size, OPMATH))
    src = scale * (tl.cast(dst, OPMATH) + 0.5) - 0.5
    src = tl.where(src < 0, 0.0, src).to(OPMATH)
    i0 = tl.minimum(tl.floor(src).to(tl.int32), in_size - 1)
    lam = tl.minimum(tl.maximum(src - i0.to(OPMATH), 0.0), 1.0).to(OPMATH)
    i1 = i0 + tl.where(i0 < in_size - 1, 1, 0)
    # Equal sizes: F.interpolate copies the input, so both taps are the pixel itself with weight
    # 1 and 0 (the formula above gives the same index and lambda = 0, but its second tap is the
    # neighbour, whose inf/NaN would leak in as 0 * inf = NaN).
    same = in_size == out_size
    i0 = tl.where(same, dst, i0)
    i1 = tl.where(same, dst, i1)
    lam = tl.where(same, 0.0, lam).to(OPMATH)
    return i0, i1, lam


@triton.jit
def _bilinear(ch, i00, i01, i10, i11, ly0, ly, lx0, lx, m, OPMATH: tl.constexpr):
    """One channel's bilinear sample (the weights of F.interpolate's CPU kernel)."""
    v00 = tl.load(ch + i00, mask=m, other=0).to(OPMATH)
    v01 = tl.load(ch + i01, mask=m, other=0).to(OPMATH)
    v10 = tl.load(ch + i10, mask=m, other=0).to(OPMATH)
    v11 = tl.load(ch + i11, mask=m, other=0).to(OPMATH)
    return ly0 * (lx0 * v00 + lx * v01) + ly * (lx0 * v10 + lx * v11)


@triton.jit
def _gather_levelness_kernel(off_ptr, meta_ptr, lev_ptr, box_ptr, fg_ptr, H, W, out_stride,
                             L: tl.constexpr, OPMATH: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    img = tl.program_id(1)
    P = H * W
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < P
    plane = tl.cast(P, tl.int64)
    lev = lev_ptr + img.to(tl.int64) * (L + 1) * plane
    background = tl.load(lev + p, mask=m, other=0)
    best = tl.load(lev + plane + p, mask=m, other=0)
    level = tl.zeros([BLOCK], dtype=tl.int32)
    for k in tl.static_range(1, L):
        v = tl.load(lev + (k + 1) * plane + p, mask=m, other=0)
        better = argmax_better(v, best)
        best = tl.where(better, v, best)
        level = tl.where(better, k, level)
    fg = argmax_better(best, background)  # argmax over all channels is 0 unless a level beats it

    base = tl.load(meta_ptr + level * 3, mask=m, other=0)
    h_in = tl.load(meta_ptr + level * 3 + 1, mask=m, other=1).to(tl.int32)
    w_in = tl.load(meta_ptr + level * 3 + 2, mask=m, other=1).to(tl.int32)
    yy = p // W
    xx = p % W
    y0, y1, ly = _source_index(yy, h_in, H, OPMATH)
    x0, x1, lx = _source_index(xx, w_in, W, OPMATH)
    ly0 = 1.0 - ly
    lx0 = 1.0 - lx
    p_in = h_in * w_in
    level_img = base + img.to(tl.int64) * 4 * p_in
    i00 = y0 * w_in + x0
    i01 = y0 * w_in + x1
    i10 = y1 * w_in + x0
    i11 = y1 * w_in + x1
    out_dtype = background.dtype
    # centres of the output grid, rounded in the levelness dtype
    cx = cell_centre(xx, out_stride, out_dtype)
    cy = cell_centre(yy, out_stride, out_dtype)
    l = _bilinear(off_ptr + level_img, i00, i01, i10, i11, ly0, ly, lx0, lx, m, OPMATH).to(out_dtype)
    t = _bilinear(off_ptr + level_img + p_in, i00, i01, i10, i11, ly0, ly, lx0, lx, m, OPMATH).to(out_dtype)
    r = _bilinear(off_ptr + level_img + 2 * p_in, i00, i01, i10, i11, ly0, ly, lx0, lx, m, OPMATH).to(out_dtype)
    b = _bilinear(off_ptr + level_img + 3 * p_in, i00, i01, i10, i11, ly0, ly, lx0, lx, m, OPMATH).to(out_dtype)
    x1b, y1b, x2b, y2b = decode_block(cx, cy, l, t, r, b)
    out = box_ptr + img.to(tl.int64) * 4 * plane
    tl.store(out + p, x1b, mask=m)
    tl.store(out + plane + p, y1b, mask=m)
    tl.store(out + 2 * plane + p, x2b, mask=m)
    tl.store(out + 3 * plane + p, y2b, mask=m)
    tl.store(fg_ptr + img.to(tl.int64) * plane + p, fg.to(tl.int8), mask=m)


def gather_levelness(offsets: list[torch.Tensor], levelness: torch.Tensor,
                     out_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = levelness.shape
    n_levels = c - 1
    boxes = levelness.new_empty((b, 4, h, w))
    fg = torch.zeros((b, h, w), dtype=torch.bool, device=levelness.device)
    if boxes.numel() == 0:
        return boxes, fg
    flat = torch.cat([o.contiguous().reshape(-1) for o in offsets])
    sizes = [o.numel() for o in offsets]
    starts = [sum(sizes[:i]) for i in range(n_levels)]
    meta = constant(tuple((s, o.shape[2], o.shape[3]) for s, o in zip(starts, offsets)), torch.int64, levelness)
    block = block_size(h * w, cap=4096)
    launch(_gather_levelness_kernel, (triton.cdiv(h * w, block), b), flat, meta, levelness.contiguous(), boxes,
           fg.view(torch.uint8), h, w, out_stride, L=n_levels, OPMATH=TL_DTYPES[opmath(levelness.dtype)], BLOCK=block)
    return boxes, fg


def _gather_levelness_backward(grad_boxes: torch.Tensor, offsets: list[torch.Tensor], levelness: torch.Tensor,
                               out_stride: int) -> list[torch.Tensor]:
    """Gradient w.r.t. every level's offsets (plain PyTorch): the chosen level's share of
    ``grad_boxes`` (signed as in eq. 8), through the bilinear adjoint of its resampling."""
    _, _, h, w = levelness.shape
    sign = torch.tensor((-1.0, -1.0, 1.0, 1.0), dtype=grad_boxes.dtype, device=grad_boxes.device)
    grad_chosen = grad_boxes * sign.view(1, 4, 1, 1)
    level = levelness[:, 1:].argmax(dim=1, keepdim=True)  # [B, 1, H, W], the forward's argmax
    grads = []
    for i, o in enumerate(offsets):
        g = grad_chosen * (level == i)
        if tuple(o.shape[2:]) == (h, w):
            grads.append(g)
        else:
            grads.append(torch.ops.aten.upsample_bilinear2d_backward(g, [h, w], list(o.shape), False, None, None))
    return grads
