"""Semantic map at input resolution: fused bilinear upsampling + argmax over the classes; semantic
probabilities on a grid: fused bilinear resize + softmax over the classes."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _extension
from . import _dispatch, registry
from .panoptic_release import _fused_multiply_add


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


def semantic_probs(logits: Tensor, size: Sequence[int]) -> Tensor:
    """``F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(dim=1)``,
    bit for bit: ``[B, C, h, w]`` logits -> ``[B, C, *size]`` probabilities, same dtype and device.

    On the CPU the C++ kernel ``_bilinear_softmax`` (csrc/cpu/bilinear_softmax_kernel.cpp) computes
    it in one pass, without the resized tensor, where it reproduces ATen's arithmetic
    (:func:`_cpp_applies`: float32 NCHW logits that ATen resizes with its generic kernel, outside
    tracing, compiling and exporting).  Its softmax is checked once per process against ATen's on
    adversarial values (:func:`exact_cpp_paths`); where it differs the kernel only resizes and
    ``Tensor.softmax`` follows, and where the resize differs too this expression runs as written.
    """
    if _cpp_applies(logits, size):
        resize_ok, softmax_ok = exact_cpp_paths()  # softmax_ok implies resize_ok
        if resize_ok:
            out = torch.ops.rtpanoptic._bilinear_softmax(logits, list(size), _fused_multiply_add(logits.device),
                                                         softmax_ok)
            return out if softmax_ok else out.softmax(dim=1)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False).softmax(dim=1)


def _tracing() -> bool:
    """Whether torch.compile, torch.export or torch.jit.trace is capturing the caller."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or (exporting is not None and exporting())


def _cpp_applies(logits: Tensor, size: Sequence[int]) -> bool:
    """Whether ``_bilinear_softmax`` may stand in for the expression: a plain float32 CPU tensor
    ``[B, C, h, w]``, contiguous, needing no gradient, outside tracing, with the extension loaded,
    and resized by ATen's generic kernel (UpSampleKernel.cpp, upsample_bilinear2d_kernel_impl_float:
    not its channels-last kernel, which it takes for output H + W <= 128, for channels-last inputs
    with C > 3 and for C == 3 at one thread, and which rounds otherwise)."""
    if _tracing() or type(logits) is not torch.Tensor or logits.device.type != "cpu" or logits.dtype != torch.float32:
        return False
    if logits.dim() != 4 or logits.numel() == 0 or not logits.is_contiguous() or len(size) != 2:
        return False
    c = logits.shape[1]
    if size[0] + size[1] <= 128 or (c > 3 and logits.is_contiguous(memory_format=torch.channels_last)):
        return False
    if c == 3 and torch.get_num_threads() == 1:
        return False
    if logits.requires_grad and torch.is_grad_enabled():
        return False
    return _extension.has_kernel("_bilinear_softmax", "CPU")


_probe: dict[str, tuple[bool, bool]] = {}


def _probe_logits() -> Tensor:
    """``[2, 19, 23, 37]`` float32 logits for the probe: normal values at several scales, huge and
    tiny ones, exact ties, NaN, +inf, -inf, cells whose classes are all -inf or all equal, and
    gaps that underflow exp."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 19, 23, 37, generator=g)
    x = x * torch.tensor([1e-3, 1.0, 30.0, 1e4])[torch.randint(0, 4, x.shape, generator=g)]
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-40, 0.0, -0.0, 88.0, -104.0])
    pick = torch.rand(x.shape, generator=g) < 0.02
    x[pick] = special[torch.randint(0, len(special), (int(pick.sum()),), generator=g)]
    x[0, :, 0, :5] = 2.5  # ties
    x[0, :, 1, :3] = -float("inf")  # a cell with no finite class
    x[1, :, 2, 4] = float("inf")
    x[1, 7, 3, :] = 200.0  # others underflow
    return x


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal shapes and NaN positions, and equal bits elsewhere (-0.0 != 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.isnan(), b.isnan()):
        return False
    zero = torch.zeros((), dtype=a.dtype)
    return torch.equal(torch.where(a.isnan(), zero, a).view(torch.int32), torch.where(b.isnan(), zero, b).view(torch.int32))


def exact_cpp_paths() -> tuple[bool, bool]:
    """``(resize, softmax)``: whether ``_bilinear_softmax`` equals ATen in this process, bit for bit,
    on :func:`_probe_logits` resized to an odd grid (non-integer scales, vector tails): resizing
    (against ``F.interpolate``) and resizing + softmax (against ``F.interpolate(...).softmax(1)``).
    Probed once per process; False where the extension lacks the kernel or it raises."""
    if "result" not in _probe:
        result = (False, False)
        if _extension.has_kernel("_bilinear_softmax", "CPU"):
            x, size = _probe_logits(), [45, 91]
            fma = _fused_multiply_add(x.device)
            want = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            try:
                resize = same_bits(torch.ops.rtpanoptic._bilinear_softmax(x, size, fma, False), want)
                fused = same_bits(torch.ops.rtpanoptic._bilinear_softmax(x, size, fma, True), want.softmax(dim=1))
                result = (resize, resize and fused)
            except (RuntimeError, ValueError, TypeError):  # the kernel's checks (TORCH_CHECK*)
                pass
        _probe["result"] = result
    return _probe["result"]
