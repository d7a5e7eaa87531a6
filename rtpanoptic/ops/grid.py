"""Cell centres of a strided grid (paper §4.1): the one definition of where a location sits.

Location ``i`` of a stride-``s`` map (an FPN level, the levelness or semantic grid) sits at image
coordinate ``i * s + s // 2`` (``floor(s/2) + i*s``).  The device kernels compute the same
formula inline (``csrc/cpu/decode_boxes_kernel.cpp``, ``csrc/cpu/gather_levelness_kernel.cpp``,
``csrc/cuda/decode_boxes_kernel.cu``, ``csrc/cuda/gather_levelness_kernel.cu``,
``kernels/decode_boxes.py``, ``kernels/gather_levelness.py``) and the executable specification
keeps its own copy (:func:`rtpanoptic.ops.reference.locations`) so that it reads alone.
"""
from __future__ import annotations

import torch
from torch import Tensor


def cell_centres(size: int, stride: int, dtype: torch.dtype = torch.int64, device=None) -> Tensor:
    """Image coordinates of the ``size`` cell centres along one axis of a stride-``stride`` grid:
    ``[size]`` tensor of ``dtype`` on ``device``, ``i * stride + stride // 2`` (pixels)."""
    return torch.arange(size, dtype=dtype, device=device) * stride + stride // 2

