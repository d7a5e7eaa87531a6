"""Semantic map at input resolution: fused bilinear upsampling + argmax over the classes."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _dispatch, registry


def upsample_argmax(
    logits: Tensor,
    size: Sequence[int],
    crop: Sequence[int] | None = None,
    *,
    out_dtype: torch.dtype = torch.int64,
    backend: str | None = None,
) -> Tensor:
    """``argmax`` over the classes of ``logits`` bilinearly resized to ``size``, without building
    the resized ``[B, C, H, W]`` tensor.

    Equal to ``F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    [:, :, :crop[0], :crop[1]].argmax(dim=1).to(out_dtype)`` (:func:`rtpanoptic.ops.reference.upsample_argmax`).

    Args:
        logits: ``[B, C, h, w]`` floating point, C >= 1 (float16/bfloat16 are resized in float32).
        size: ``(H, W)`` of the resized map: it fixes the sampling positions
            (``src = (dst + 0.5) * h / H - 0.5``), e.g. ``(h * stride, w * stride)``.
        crop: ``(H', W')`` <= ``size``: only the first H' rows and W' columns are computed
            (an image's part of a padded batch); None: ``size``.
        out_dtype: ``torch.int64``, ``torch.int32``, ``torch.int16`` or ``torch.uint8``, holding the
            class indices: C - 1 must fit (uint8: C <= 256).  Every backend writes it directly (uint8
            is an eighth of the int64 map's memory traffic).

    Returns:
        ``out_dtype`` ``[B, H', W']`` class indices: first maximum on ties, NaN is the maximum (as
        ``torch.argmax``).

    The compiled kernels compute ``(x00 * ww0 + x01 * ww1) * wh0 + (x10 * ww0 + x11 * ww1) * wh1``
    with each ``a * b + c`` as one fused multiply-add, the arithmetic of ATen's CPU kernel on
    AVX2/AVX-512 machines: identical to ``F.interpolate`` there at integer scale factors.  The C++
    kernel skips that arithmetic for the pixels whose corner cells share a safely strict argmax
    (same bits; the proof is in csrc/upsample_math.h).
    """
    logits, size, crop, out_dtype = registry.validate("upsample_argmax", logits, size, crop, out_dtype)
    if logits.shape[0] == 0:
        return torch.empty((0, crop[0], crop[1]), dtype=out_dtype, device=logits.device)
    return _dispatch.select("upsample_argmax", backend, logits.device)(logits, size, crop, out_dtype)
