"""Cell centres of a strided grid (paper §4.1): the one definition of where a location sits.

Location ``i`` of a stride-``s`` map (an FPN level, the levelness or semantic grid) sits at image
coordinate ``i * s + s // 2`` (``floor(s/2) + i*s``).  The reference (``reference.decode_boxes``,
hence ``gather_levelness``), the targets and the candidates take it from here; the kernels from
its twins: ``cell_centre`` of ``csrc/grid.h`` (the CPU and CUDA ``decode_boxes`` and
``gather_levelness`` kernels) and of ``kernels/_grid.py`` (the Triton ones).
"""
from __future__ import annotations

import torch
from torch import Tensor


def cell_centres(size: int, stride: int, dtype: torch.dtype = torch.int64, device=None) -> Tensor:
    """Image coordinates of the ``size`` cell centres along one axis of a stride-``stride`` grid:
    ``[size]`` tensor of ``dtype`` on ``device``, ``i * stride + stride // 2`` (pixels)."""
    return torch.arange(size, dtype=dtype, device=device) * stride + stride // 2


def cells_before(limit: int, size: int, stride: int) -> int:
    """How many of the ``size`` cells of a stride-``stride`` grid along one axis have their centre
    (:func:`cell_centres`) below ``limit`` pixels: the centres increase, so those are the first ones,
    ``min(size, max(0, ceil((limit - stride // 2) / stride)))`` (integer arithmetic, on the host)."""
    return min(size, max(0, -((stride // 2 - limit) // stride)))
