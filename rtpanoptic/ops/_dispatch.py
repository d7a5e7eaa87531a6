"""Backend selection for ``rtpanoptic.ops``.

Backends:
  ``reference``  pure PyTorch (:mod:`rtpanoptic.ops.reference`), any device, the spec.
  ``cpp``        C++ kernels of ``rtpanoptic._C`` (``torch.ops.rtpanoptic.<op>``), CPU tensors.
  ``cuda``       CUDA kernels of ``rtpanoptic._C`` (same ops), CUDA tensors.
  ``triton``     Triton kernels from :mod:`rtpanoptic.kernels` (``torch.ops.rtpanoptic_triton.<op>``),
                 CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

``backend=None`` picks the fastest backend that can run on the tensors' device:
``cpp`` then ``reference`` on the CPU; ``cuda``, ``triton``, ``reference`` on a GPU.
"""
from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

import torch

from .. import _extension
from . import reference

BACKENDS = ("reference", "cpp", "cuda", "triton")
OPS = (
    "nms",
    "batched_nms",
    "box_iou",
    "decode_boxes",
    "gather_levelness",
    "iou_attention",
    "panoptic_from_dense",
    "mask_loss",
)
_PREFERENCE = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}
TRITON_NAMESPACE = "rtpanoptic_triton"


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_loaded() -> bool:
    """Import the Triton kernels (they register ``rtpanoptic_triton::<op>``)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("rtpanoptic.kernels")
    except ImportError:
        return False
    return True


def _triton_has(op: str) -> bool:
    if not _triton_loaded():
        return False
    return hasattr(getattr(torch.ops, TRITON_NAMESPACE), op) and _has_op(f"{TRITON_NAMESPACE}::{op}")


def _has_op(qualname: str) -> bool:
    ns, name = qualname.split("::")
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _runs_on(backend: str, op: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpp":
        return device_type == "cpu" and _extension.has_kernel(op, "CPU")
    if backend == "cuda":
        return device_type == "cuda" and _extension.has_kernel(op, "CUDA")
    if backend == "triton":
        ok_device = device_type == "cuda" or (device_type == "cpu" and triton_interpreting())
        return ok_device and _triton_has(op)
    return False


def _built(backend: str, op: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpp":
        return _extension.has_kernel(op, "CPU")
    if backend == "cuda":
        return _extension.has_kernel(op, "CUDA")
    return _triton_has(op)


def available_backends(device: str | torch.device | None = None) -> dict[str, list[str]]:
    """Backends of every op that were built, or, given ``device``, that can run there.

    >>> available_backends("cpu")["nms"]
    ['reference', 'cpp']
    """
    if device is None:
        return {op: [b for b in BACKENDS if _built(b, op)] for op in OPS}
    device_type = torch.device(device).type
    return {op: [b for b in BACKENDS if _runs_on(b, op, device_type)] for op in OPS}


def select(op: str, backend: str | None, device: torch.device) -> Callable:
    """Return the implementation of ``op`` for ``backend`` (or the default) on ``device``."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} or None, got {backend!r}")
    device_type = device.type
    if backend is None:
        for candidate in _PREFERENCE.get(device_type, ("reference",)):
            if _runs_on(candidate, op, device_type):
                backend = candidate
                break
    elif not _runs_on(backend, op, device_type):
        raise RuntimeError(_unavailable_message(op, backend, device_type))
    if backend == "reference":
        return getattr(reference, op)
    if backend == "triton":
        return getattr(getattr(torch.ops, TRITON_NAMESPACE), op)
    return getattr(torch.ops.rtpanoptic, op)


def _unavailable_message(op: str, backend: str, device_type: str) -> str:
    msg = f"{op}: backend {backend!r} cannot run on {device_type} tensors"
    if backend in ("cpp", "cuda") and not _extension.load():
        return f"{msg}: {_extension.load_error()}"
    if backend == "cpp" and device_type != "cpu":
        return f"{msg}: the cpp backend takes CPU tensors (use backend='cuda' on a GPU)"
    if backend == "cuda" and device_type != "cuda":
        return f"{msg}: the cuda backend takes CUDA tensors"
    if backend == "triton" and device_type == "cpu" and not triton_interpreting():
        return f"{msg}: Triton runs on CPU tensors only with TRITON_INTERPRET=1"
    if not _built(backend, op):
        return f"{msg}: no {backend} kernel was built for {op} (see rtpanoptic.ops.available_backends())"
    return msg
