"""COCO panoptic format: segment ids encoded in PNGs as ``id = R + 256 * G + 256**2 * B``."""
from __future__ import annotations

import numpy as np


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 PNG pixels -> ``[H, W]`` int64 segment ids."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb2id: expected an [H, W, 3] array, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` non-negative segment ids (< 256**3) -> ``[H, W, 3]`` uint8 PNG pixels."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("id2rgb: segment ids must lie in [0, 256**3)")
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = ids // (256 * 256)
    return out
