"""Loads the compiled extension ``rtpanoptic._C`` (C++/CUDA kernels) if it was built.

The extension only works with the torch it was compiled against.  setup.py records that
version in ``_build_info.json`` beside it; loading it under another torch raises ImportError
naming both versions and the command that rebuilds it (instead of a crash or a silent fallback).
"""
from __future__ import annotations

import importlib.util
import json
import os
import warnings

import torch

_loaded: bool | None = None
_error: str | None = None


def build_info(origin: str | None = None) -> dict | None:
    """What ``rtpanoptic._C`` was built with: ``{"torch", "cuda", "cuda_targets"}`` (None when no
    record exists: not built, or built before records were written)."""
    if origin is None:
        spec = importlib.util.find_spec("rtpanoptic._C")
        origin = spec.origin if spec is not None else None
    if origin is None:
        return None
    try:
        with open(os.path.join(os.path.dirname(origin), "_build_info.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def rebuild_command(origin: str) -> str:
    """The command that rebuilds the extension against the installed torch."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(origin)))
    if os.path.exists(os.path.join(root, "setup.py")):  # a checkout (editable or in-place build)
        return f"pip install --no-build-isolation --no-deps -e {root}"
    return "pip install --no-build-isolation --no-deps --force-reinstall <rtpanoptic source folder>"


def version_mismatch(built: str, installed: str, origin: str) -> str | None:
    """The one-line error for an extension built for torch ``built`` under torch ``installed``."""
    if built == installed:
        return None
    return (f"rtpanoptic._C was built for torch {built} but torch {installed} is installed; "
            f"rebuild it with this torch: {rebuild_command(origin)}")


def load() -> bool:
    """Load ``rtpanoptic._C`` once; return whether it is available.

    Raises:
        ImportError: the extension was built for another torch version.
    """
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    spec = importlib.util.find_spec("rtpanoptic._C")
    if spec is None or spec.origin is None:
        _loaded, _error = False, "rtpanoptic._C was not built (pure-Python install)"
        return False
    info = build_info(spec.origin)
    if info is not None:
        mismatch = version_mismatch(str(info.get("torch")), str(torch.__version__), spec.origin)
        if mismatch is not None:
            raise ImportError(mismatch)
    try:
        torch.ops.load_library(spec.origin)
        _loaded = True
    except OSError as exc:  # missing CUDA runtime, a build from before build records, ...
        _loaded, _error = False, f"rtpanoptic._C failed to load: {exc}"
        warnings.warn(f"{_error}; falling back to the other backends (rebuild: {rebuild_command(spec.origin)})",
                      RuntimeWarning, stacklevel=2)
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
