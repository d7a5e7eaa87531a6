"""Images as users give them, made into the network's input: uint8 ``[3, H, W]`` tensors, and batches
zero-padded (bottom/right) to a multiple of the network's size divisibility.

Shared by :class:`~rtpanoptic.inference.Predictor` (one batch per padded size) and the frame
streams of :mod:`rtpanoptic.stream`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def to_image_tensors(images) -> list[Tensor]:
    """uint8 RGB images as HWC numpy arrays, PIL images, ``[3, H, W]`` / ``[B, 3, H, W]`` tensors,
    ``[B, H, W, 3]`` arrays, or a list of those -> list of ``[3, H, W]`` uint8 tensors."""
    if isinstance(images, (list, tuple)):
        out: list[Tensor] = []
        for i, im in enumerate(images):
            converted = to_image_tensors(im)
            if len(converted) != 1 and not isinstance(im, (list, tuple)):
                raise ValueError(f"images[{i}]: expected one image, got a batch of {len(converted)}")
            out.extend(converted)
        return out
    if hasattr(images, "convert") and hasattr(images, "size"):  # PIL
        images = np.array(images.convert("RGB"))
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"images: numpy images must be uint8 RGB, got {images.dtype}")
        if images.ndim == 3 and images.shape[2] == 3:
            return [torch.from_numpy(np.ascontiguousarray(images)).permute(2, 0, 1)]
        if images.ndim == 4 and images.shape[3] == 3:
            return [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
        raise ValueError(f"images: numpy images must be [H, W, 3] or [B, H, W, 3], got {images.shape}")
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"images: tensors must be uint8 RGB, got {images.dtype}")
        if images.dim() == 3 and images.shape[0] == 3:
            return [images]
        if images.dim() == 4 and images.shape[1] == 3:
            return list(images.unbind(0))
        raise ValueError(f"images: tensors must be [3, H, W] or [B, 3, H, W], got {list(images.shape)}")
    raise TypeError(f"images: expected numpy arrays, PIL images or uint8 tensors, got {type(images).__name__}")


def padded_size(height: int, width: int, divisor: int = 128) -> tuple[int, int]:
    """``(H, W)`` rounded up to multiples of ``divisor``: the size the network runs an image at."""
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def pad_batch(images: Sequence[Tensor], divisor: int = 128) -> Tensor:
    """Zero-pad ``[3, H_i, W_i]`` images (bottom/right) to a common size, a multiple of ``divisor``."""
    hp, wp = padded_size(max(im.shape[1] for im in images), max(im.shape[2] for im in images), divisor)
    out = images[0].new_zeros((len(images), 3, hp, wp))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out
