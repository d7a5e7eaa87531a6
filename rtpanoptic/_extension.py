"""Loads the compiled extension ``rtpanoptic._C`` (C++/CUDA kernels) if it was built."""
from __future__ import annotations

import importlib.util
import warnings

import torch

_loaded: bool | None = None
_error: str | None = None


def load() -> bool:
    """Load ``rtpanoptic._C`` once; return whether it is available."""
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    spec = importlib.util.find_spec("rtpanoptic._C")
    if spec is None or spec.origin is None:
        _loaded, _error = False, "rtpanoptic._C was not built (pure-Python install)"
        return False
    try:
        torch.ops.load_library(spec.origin)
        _loaded = True
    except OSError as exc:  # ABI mismatch, missing CUDA runtime, ...
        _loaded, _error = False, f"rtpanoptic._C failed to load: {exc}"
        warnings.warn(_error + "; falling back to the other backends", RuntimeWarning, stacklevel=2)
    return _loaded


def load_error() -> str | None:
    load()
    return _error


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``rtpanoptic::<op>`` has a kernel for ``dispatch_key`` ("CPU" / "CUDA")."""
    if not load():
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"rtpanoptic::{op}", dispatch_key)
    except RuntimeError:
        return False
