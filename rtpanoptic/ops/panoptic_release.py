"""Release-exact masks (bilinear upsampling of the soft masks, ``>= sigma``) fused with panoptic fusion."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _dispatch, registry
from .panoptic import PanopticSegments


def _fused_multiply_add(device: torch.device) -> bool:
    """Whether ``F.interpolate(mode="bilinear")`` on ``device`` rounds ``a * w0 + b * w1`` once (fma).

    ATen's CPU kernel does in its AVX2/AVX512 builds (the compiler contracts it) and not in its
    DEFAULT build.  Its CUDA kernel (aten/src/ATen/native/cuda/UpSampleBilinear2d.cu,
    ``upsample_bilinear2d_out_frame``: ``h0lambda * (w0lambda * v00 + w1lambda * v01) + h1lambda *
    (...)``) is compiled by nvcc with contraction on: the machine code of torch 2.14.1's
    libtorch_cuda.so (sm_80, sm_90, sm_100, sm_120; float32 FFMA/FMUL, float64 DFMA/DMUL) is
    ``fma(h0, fma(w0, v00, w1 * v01), h1 * fma(w0, v10, w1 * v11))``, the fma form of upsample_math.h."""
    if device.type == "cpu":
        return torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    return True


def panoptic_from_dense_release(
    dense_boxes: Tensor,
    sem_probs: Tensor,
    query_boxes: Tensor,
    query_classes: Tensor,
    query_scores: Tensor,
    is_thing: Tensor | Sequence[bool],
    *,
    stride: int,
    size: tuple[int, int],
    sigma: float = 0.4,
    score: str = "tri",
    score_threshold: float = 0.0,
    overlap_threshold: float = 0.5,
    stuff_area_limit: int = 0,
    backend: str | None = None,
) -> PanopticSegments:
    """The released TRI code's instance masks, then the panoptic fusion of :func:`panoptic_from_dense`.

    Mask of query j at input pixel (y, x): ``up(S_j)(y, x) >= sigma``, where
    ``S_j = score(B, B_j) * P_sem(c_j)`` is the soft mask on the grid and ``up`` is
    ``F.interpolate(scale_factor=stride, mode="bilinear", align_corners=False)`` cropped to ``size``.
    The fused backends never build the ``[Q, H, W]`` upsampled masks: an output pixel whose 4 grid
    neighbours all lie clearly above (below) sigma is in (out of) the mask, and only the others get the
    interpolated value, computed with the float operations of this device's ``F.interpolate`` so that
    every decision equals the reference's on the same device (cpp and Triton's interpreter: the CPU
    reference; cuda and compiled Triton: the CUDA one; on the CPU, for upsampled planes
    ``(h * stride) x (w * stride)`` of more than 4096 pixels, i.e. any image of at least 64 x 64
    pixels: ATen rounds smaller planes otherwise, so there a value within rounding of sigma may be
    decided differently).  Fusion as :func:`panoptic_from_dense` (the release has none); stuff takes
    the grid's semantic argmax, nearest-upsampled.

    Args:
        dense_boxes: ``[4, h, w]`` xyxy box per grid cell (input pixels); pass the grid cells beyond
            the image too (e.g. one row and column of padding) where the release had them, since the
            bilinear upsampling of the last rows and columns reads them.
        sem_probs: ``[C, h, w]`` semantic probabilities on the same grid.
        query_boxes, query_classes, query_scores, is_thing: as :func:`panoptic_from_dense`.
        stride: the grid's stride in input pixels, a power of two (4 in the release).
        size: ``(height, width)`` of the output in input pixels, at most ``(h * stride, w * stride)``.
        sigma: mask threshold (0.4 in the release, with ``score="tri"``).
        stuff_area_limit: minimum stuff segment area, in output pixels.

    Returns:
        :class:`PanopticSegments` with ``segment_map`` int32 ``[height, width]``.
    """
    op = "panoptic_from_dense_release"
    args = registry.validate(
        op, dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, stride=stride, size=size,
        sigma=sigma, score=score, score_threshold=score_threshold, overlap_threshold=overlap_threshold,
        stuff_area_limit=stuff_area_limit,
    )
    device = dense_boxes.device
    return PanopticSegments(*_dispatch.select(op, backend, device)(*args, _fused_multiply_add(device)))
