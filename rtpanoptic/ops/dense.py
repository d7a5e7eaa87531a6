"""Dense box decoding (eq. 8) and levelness gathering (eq. 14)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _dispatch, registry


def decode_boxes(offsets: Tensor, stride: int, *, backend: str | None = None) -> Tensor:
    """Decode per-location (l, t, r, b) offsets into xyxy boxes (paper eq. 8).

    Args:
        offsets: ``[B, 4, h, w]`` float distances in input pixels.
        stride: the map's stride; cell (i, j) sits at image point
            ``(floor(stride/2) + j*stride, floor(stride/2) + i*stride)``.

    Returns:
        ``[B, 4, h, w]`` boxes ``(x - l, y - t, x + r, y + b)``; differentiable.
    """
    offsets, stride = registry.validate("decode_boxes", offsets, stride)
    if offsets.numel() == 0:
        return offsets.new_empty(offsets.shape)
    return _dispatch.select("decode_boxes", backend, offsets.device)(offsets, stride)


def gather_levelness(
    offsets: Sequence[Tensor], levelness: Tensor, out_stride: int = 4, *, backend: str | None = None
) -> tuple[Tensor, Tensor]:
    """Global dense boxes B(x, y) from per-level predictions and levelness (eq. 14).

    Args:
        offsets: L tensors ``[B, 4, h_i, w_i]``, each level's (l, t, r, b) offsets in pixels.
        levelness: ``[B, L + 1, H, W]`` logits; channel 0 is background, channel i is level i.
        out_stride: stride of the levelness grid (4 in the paper).

    Every level's offsets are bilinearly resampled to ``[H, W]`` (``align_corners=False``);
    each location takes the offsets of level ``argmax(levelness[:, 1:])`` (first maximum on
    ties) and decodes them around its own centre ``floor(out_stride/2) + i*out_stride``.

    Returns:
        ``(boxes [B, 4, H, W], foreground [B, H, W] bool)``; foreground is
        ``argmax(levelness) != 0``.  Boxes are given everywhere (background too) and
        are differentiable w.r.t. ``offsets``.
    """
    args = registry.validate("gather_levelness", offsets, levelness, out_stride)
    batch, _, h, w = levelness.shape
    if batch == 0 or h == 0 or w == 0:
        return levelness.new_empty((batch, 4, h, w)), torch.zeros(
            (batch, h, w), dtype=torch.bool, device=levelness.device
        )
    return tuple(_dispatch.select("gather_levelness", backend, levelness.device)(*args))
