"""``upsample_argmax``: bilinear resampling (``align_corners=False``) of every class at one output
pixel and the first maximum over the classes (NaN is the maximum), one program per block of
output pixels, nothing written but the class map, stored in its output dtype (int64, int32, int16
or uint8: the output pointer's).

Arithmetic as the C++ kernel (csrc/cpu/upsample_argmax_kernel.cpp): ATen's sampling positions
with ``src = fma(in/out, dst + 0.5, -0.5)`` and
``fma(fma(x00, ww0, x01 * ww1), wh0, fma(x10, ww0, x11 * ww1) * wh1)``.  On a GPU ``tl.fma`` is
one rounding; the interpreter's ``fma`` rounds twice, so there it is evaluated in float64 and
rounded once to float32 (equal to a fused multiply-add except where that double rounding meets
an exact float32 tie).  float16/bfloat16 logits are computed in float32.

An unresized axis follows the reference of the tensors' device (``_cuda_rule``).  On a GPU, ATen's
CUDA kernel: both sizes unchanged, a copy; one unchanged, the general rule (``src = d`` exactly:
taps d and d + 1, weights 1 and 0, so an infinite neighbour gives ``inf * 0 = NaN`` there too).  On
the CPU (the interpreter), ATen's CPU kernel: taps (d, d) with weights (1, 0) on an unresized
axis, also when both are (an infinite logit becomes NaN, which wins the argmax).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rtpanoptic.ops.registry import triton_interpreting

from ._box_score import div_rn
from ._common import argmax_better, block_size, launch


@triton.jit
def _fma(a, b, c, INTERPRET: tl.constexpr):
    """float32 ``a * b + c`` with one rounding."""
    if INTERPRET:
        return (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def _axis(dst, in_size, out_size, CUDA_RULE: tl.constexpr, INTERPRET: tl.constexpr):
    """(index0, index1, lambda0, lambda1) along one axis: ATen's rule, in float32."""
    scale = div_rn(tl.cast(in_size, tl.float32), tl.cast(out_size, tl.float32))
    src = _fma(tl.zeros_like(dst.to(tl.float32)) + scale, dst.to(tl.float32) + 0.5,
               tl.full(dst.shape, -0.5, tl.float32), INTERPRET)
    src = tl.where(src < 0, 0.0, src)
    i0 = tl.minimum(tl.floor(src).to(tl.int32), in_size - 1)
    lam = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = i0 + tl.where(i0 < in_size - 1, 1, 0)
    if not CUDA_RULE:  # ATen's CPU rule on an unresized axis: taps (d, d), weights (1, 0)
        same = in_size == out_size
        i0 = tl.where(same, dst, i0)
        i1 = tl.where(same, dst, i1)
        lam = tl.where(same, 0.0, lam)
    return i0, i1, 1.0 - lam, lam


@triton.jit
def _upsample_argmax_kernel(in_ptr, out_ptr, C, h, w, H, W, crop_h, crop_w,
                            CUDA_RULE: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    P = crop_h * crop_w
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < P
    y0, y1, wh0, wh1 = _axis(p // crop_w, h, H, CUDA_RULE, INTERPRET)
    x0, x1, ww0, ww1 = _axis(p % crop_w, w, W, CUDA_RULE, INTERPRET)
    copy = (h == H) & (w == W)  # with CUDA_RULE: ATen's CUDA kernel copies (no inf * 0)
    plane = tl.cast(h * w, tl.int64)
    base = in_ptr + img * C * plane
    i00, i01, i10, i11 = y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    idx = tl.zeros([BLOCK], dtype=tl.int64)
    for c in range(C):
        ch = base + c * plane
        v00 = tl.load(ch + i00, mask=m, other=0).to(tl.float32)
        v01 = tl.load(ch + i01, mask=m, other=0).to(tl.float32)
        v10 = tl.load(ch + i10, mask=m, other=0).to(tl.float32)
        v11 = tl.load(ch + i11, mask=m, other=0).to(tl.float32)
        top = _fma(v00, ww0, v01 * ww1, INTERPRET)
        bottom = _fma(v10, ww0, v11 * ww1, INTERPRET)
        v = _fma(top, wh0, bottom * wh1, INTERPRET)
        if CUDA_RULE:
            v = tl.where(copy, v00, v)
        better = argmax_better(v, best) | (c == 0)
        best = tl.where(better, v, best)
        idx = tl.where(better, c, idx)
    # the class index in the output's dtype (it holds every index < C: checked by the caller)
    tl.store(out_ptr + img * P + p, idx.to(out_ptr.dtype.element_ty), mask=m)


def _cuda_rule(logits: torch.Tensor) -> bool:
    """Whether ``logits``' device computes ``F.interpolate`` with ATen's CUDA kernel (else its CPU one)."""
    return logits.device.type != "cpu"


def upsample_argmax(logits: torch.Tensor, size: list[int], crop: list[int],
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    b, c, h, w = logits.shape
    out = torch.empty((b, crop[0], crop[1]), dtype=torch.int64 if out_dtype is None else out_dtype,
                      device=logits.device)
    n = crop[0] * crop[1]
    if b == 0:
        return out
    block = block_size(n)
    launch(_upsample_argmax_kernel, (triton.cdiv(n, block), b), logits.contiguous(), out, c, h, w,
           size[0], size[1], crop[0], crop[1], CUDA_RULE=_cuda_rule(logits),
           INTERPRET=triton_interpreting(), BLOCK=block)
    return out
