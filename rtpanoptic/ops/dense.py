"""Dense box decoding (eq. 8) and levelness gathering (eq. 14)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _dispatch, _validate


def decode_boxes(offsets: Tensor, stride: int, *, backend: str | None = None) -> Tensor:
    """Decode per-location (l, t, r, b) offsets into xyxy boxes (paper eq. 8).

    Args:
        offsets: ``[B, 4, h, w]`` float distances in input pixels.
        stride: the map's stride; cell (i, j) sits at image point
            ``(floor(stride/2) + j*stride, floor(stride/2) + i*stride)``.

    Returns:
        ``[B, 4, h, w]`` boxes ``(x - l, y - t, x + r, y + b)``; differentiable.
    """
    op = "decode_boxes"
    _validate.tensor(op, "offsets", offsets, shape=(None, 4, None, None), floating=True)
    stride = _validate.positive_int(op, "stride", stride)
    if offsets.numel() == 0:
        return offsets.new_empty(offsets.shape)
    return _dispatch.select(op, backend, offsets.device)(offsets, stride)


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
    op = "gather_levelness"
    _validate.tensor(op, "levelness", levelness, ndim=4, floating=True)
    if isinstance(offsets, Tensor) or not isinstance(offsets, (list, tuple)):
        raise TypeError(f"{op}: offsets must be a list of L tensors [B, 4, h_i, w_i], got {type(offsets).__name__}")
    offsets = list(offsets)
    n_levels = levelness.shape[1] - 1
    if len(offsets) != n_levels or n_levels < 1:
        raise ValueError(
            f"{op}: levelness has {levelness.shape[1]} channels, so it needs {n_levels} levels of offsets "
            f"(channel 0 is background), got {len(offsets)}"
        )
    batch = levelness.shape[0]
    for i, o in enumerate(offsets):
        _validate.tensor(op, f"offsets[{i}]", o, shape=(batch, 4, None, None), floating=True)
        if o.dtype != levelness.dtype:
            raise TypeError(f"{op}: offsets[{i}] is {o.dtype} but levelness is {levelness.dtype}")
        if min(o.shape[2:]) == 0 and levelness[0, 0].numel() > 0:
            raise ValueError(f"{op}: offsets[{i}] is empty ({list(o.shape)}) but the levelness grid is not")
    _validate.same_device(op, levelness=levelness, **{f"offsets[{i}]": o for i, o in enumerate(offsets)})
    out_stride = _validate.positive_int(op, "out_stride", out_stride)
    _, _, h, w = levelness.shape
    if batch == 0 or h == 0 or w == 0:
        return levelness.new_empty((batch, 4, h, w)), torch.zeros(
            (batch, h, w), dtype=torch.bool, device=levelness.device
        )
    return tuple(_dispatch.select(op, backend, levelness.device)(offsets, levelness, out_stride))
