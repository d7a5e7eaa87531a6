"""Cell centres of a strided grid (paper §4.1) in the Triton kernels: the twin of
:func:`rtpanoptic.ops.grid.cell_centres` (and of ``csrc/grid.h``)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def cell_centre(i, stride, DTYPE: tl.constexpr):
    """Image coordinate ``i * stride + stride // 2`` of integer cell indices ``i``, rounded in
    ``DTYPE`` after each operation, as the reference's ``arange(dtype) * stride + stride // 2``."""
    return i.to(DTYPE) * stride + stride // 2
