"""Shared helpers of the Triton kernels: block sizes, compute dtypes, the launch helper and its
options."""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from rtpanoptic.ops.registry import triton_interpreting

from . import _interpreter_compat

if triton_interpreting():
    _interpreter_compat.install()

# Tests set this to True to run the GPU block sizes (many programs per launch) through the
# interpreter, so the multi-program paths are checked on CPU too.
GPU_BLOCKS_IN_INTERPRETER = False


def large_blocks() -> bool:
    """Use interpreter-sized blocks (as few programs as possible) instead of the GPU sizes."""
    return triton_interpreting() and not GPU_BLOCKS_IN_INTERPRETER


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


def opmath(dtype: torch.dtype) -> torch.dtype:
    """Dtype the kernels compute (and accumulate) in for inputs of ``dtype``: float16/bfloat16 in
    float32, rounded once when stored (as torchvision's box_iou and the reference); float32 and
    float64 in themselves."""
    return torch.float64 if dtype == torch.float64 else torch.float32


TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


# Every constant made in eager mode, for the life of the process: a captured CUDA graph reads a
# constant by address, so one must never be freed (an LRU cache would free the least recently used
# and let its memory be reused under a graph that still reads it).  The keys are the few distinct
# thresholds and shape tables of a run.
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _cached_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (values, dtype, device)
    found = _CONSTANTS.get(key)
    if found is None:
        found = _CONSTANTS.setdefault(key, torch.tensor(values, dtype=dtype, device=device))
    return found


def constant(values: tuple, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """``torch.tensor(values)`` on ``like``'s device, made once per (values, dtype, device) in
    eager mode and kept for the life of the process: a later launch copies nothing from the host,
    so the ops can be captured in a CUDA graph after a first (warm-up) call, and the graph's
    constants stay valid however many others are made later.  Under tracing (fake tensors) a fresh
    one."""
    if type(like) is not torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=like.device)
    return _cached_constant(values, dtype, like.device)


def scalars(dtype: torch.dtype, like: torch.Tensor, *values: float) -> torch.Tensor:
    """Float constants as a ``dtype`` tensor on ``like``'s device (Triton's float arguments are
    float32; the reference compares with Python floats cast to the dtype it computes in)."""
    return constant(tuple(values), dtype, like)


@triton.jit
def argmax_better(v, best):
    """torch.argmax's order: ``v`` beats ``best`` when it is greater, or when it is NaN and
    ``best`` is not (NaN is the maximum; the first NaN wins, as the first maximum does)."""
    return (v > best) | ((v != v) & (best == best))


# Options of every launch: no fused multiply-add contraction.  Every op promises float32 results
# rounded like the reference, which rounds after each operation (compiled kernels would otherwise
# fuse a * b + c into one rounding).  kernels/_compile_check.py checks the PTX of every launch.
LAUNCH_OPTIONS = {"enable_fp_fusion": False}


def launch(kernel, grid, *args, **meta) -> None:
    """Launch ``kernel[grid](*args, **meta)`` with :data:`LAUNCH_OPTIONS`, on the device of its
    tensor arguments (Triton launches on the current device: inputs on ``cuda:1`` while
    ``cuda:0`` is current would fail)."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    guard = contextlib.nullcontext()
    if device is not None and device.type == "cuda" and not torch.compiler.is_compiling():
        guard = torch.cuda.device(device)
    with guard:
        launchable(kernel)[grid](*args, **meta, **LAUNCH_OPTIONS)


def launchable(kernel):
    """``wrap_triton(kernel)`` (traceable by torch.compile / make_fx), or the kernel itself when it
    is the interpreter's (``TRITON_INTERPRET=1``): it can run eagerly but not be traced.  torch >=
    2.14's ``wrap_triton`` makes the same choice; older ones raise "wrap_triton only works on
    functions annotated with triton.jit or triton.autotune" for it."""
    if is_interpreted(kernel):
        return kernel
    return wrap_triton(kernel)


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` is a ``@triton.jit`` function as the interpreter makes it (an
    ``InterpretedFunction``, possibly inside an ``Autotuner``) rather than a ``JITFunction``."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction) or isinstance(getattr(kernel, "fn", None), InterpretedFunction)
