"""Shared helpers of the Triton kernels: registration namespace, block sizes, launch options."""
from __future__ import annotations

import os

import torch
import triton

NAMESPACE = "rtpanoptic_triton"


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU tensors through numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Tests set this to True to run the GPU block sizes (many programs per launch) through the
# interpreter, so the multi-program paths are checked on CPU too.
GPU_BLOCKS_IN_INTERPRETER = False


def large_blocks() -> bool:
    """Use interpreter-sized blocks (as few programs as possible) instead of the GPU sizes."""
    return interpreting() and not GPU_BLOCKS_IN_INTERPRETER


def block_size(n: int, *, gpu=(256, 512, 1024), cap: int = 8192) -> int:
    """Elements per program for ``n`` elements: one explicit power of two per size class.

    On a GPU: ``gpu[0]`` up to 4096 elements, ``gpu[1]`` up to 65536, ``gpu[2]`` above.
    Under the interpreter every program costs ~0.4 ms of Python, so one program covers as
    much as possible (up to ``cap``).
    """
    if large_blocks():
        return max(16, min(triton.next_power_of_2(max(n, 1)), cap))
    if n <= 4096:
        return gpu[0]
    if n <= 65536:
        return gpu[1]
    return gpu[2]


def tile(n_rows: int, n_cols: int, *, gpu=(16, 256), cap: int = 16384):
    """(rows, cols) of a 2-D tile: fixed on a GPU, as large as allowed under the interpreter."""
    if not large_blocks():
        return gpu
    cols = max(16, min(triton.next_power_of_2(max(n_cols, 1)), cap))
    rows = max(1, min(triton.next_power_of_2(max(n_rows, 1)), max(1, cap // cols)))
    return rows, cols


def scalars(like: torch.Tensor, *values: float) -> torch.Tensor:
    """Float constants in ``like``'s dtype, as a tensor (Triton's float arguments are fp32;
    the reference compares with Python floats cast to the tensor dtype)."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of reductions: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Launch options: no fused multiply-add contraction, so results round like the
# reference's separate PyTorch ops (needed for bit-identical masks).
EXACT = {"enable_fp_fusion": False}
