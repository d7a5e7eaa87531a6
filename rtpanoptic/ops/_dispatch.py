"""Backend selection for ``rtpanoptic.ops``: a priority list over the op table.

Backends:
  ``reference``  pure PyTorch (:mod:`rtpanoptic.ops.reference`), any device, the spec.
  ``cpp``        C++ kernels of ``rtpanoptic._C`` (``torch.ops.rtpanoptic.<op>``), CPU tensors.
  ``cuda``       CUDA kernels of ``rtpanoptic._C`` (same ops), CUDA tensors.
  ``triton``     Triton kernels from :mod:`rtpanoptic.kernels` (``torch.ops.rtpanoptic_triton.<op>``),
                 CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

``backend=None`` picks the first backend of :data:`PRIORITY` that can run on the tensors' device:
``cpp`` then ``reference`` on the CPU; ``cuda``, ``triton``, ``reference`` on a GPU.  What each
op supports is in its row of :mod:`rtpanoptic.ops.registry`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from . import reference, registry
from .registry import BACKENDS, OPS

PRIORITY = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


def available_backends(device: str | torch.device | None = None) -> dict[str, list[str]]:
    """Backends of every op that were built, or, given ``device``, that can run there.

    >>> available_backends("cpu")["nms"]
    ['reference', 'cpp']
    """
    if device is None:
        return {op: [b for b in BACKENDS if registry.built(op, b)] for op in OPS}
    device_type = torch.device(device).type
    return {op: [b for b in BACKENDS if not registry.not_supported_reasons(op, b, device_type)] for op in OPS}


def select(op: str, backend: str | None, device: torch.device) -> Callable:
    """Return the implementation of ``op`` for ``backend`` (or the first of :data:`PRIORITY` that
    can run) on ``device``.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        RuntimeError: ``backend`` cannot run here (the message says why), or no backend can.
    """
    backend = choose(op, backend, device.type)
    if backend == "reference":
        return getattr(reference, op)
    namespace = registry.TRITON_NAMESPACE if backend == "triton" else registry.CPP_NAMESPACE
    return getattr(getattr(torch.ops, namespace), op)


# Under torch.compile, dynamo runs this once while tracing and keeps its answer as a constant: the
# checks behind it (the extension's dispatch table, Triton's import) cannot be traced, and the
# answer depends only on its arguments for the life of the process.
@torch.compiler.assume_constant_result
def choose(op: str, backend: str | None, device_type: str) -> str:
    """The backend :func:`select` runs ``op`` with on ``device_type`` tensors (raises as it does)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend is None:
        rejected = {}
        for candidate in PRIORITY.get(device_type, ("reference",)):
            reasons = registry.not_supported_reasons(op, candidate, device_type)
            if not reasons:
                return candidate
            rejected[candidate] = reasons
        listing = "; ".join(f"{b}: {', '.join(r)}" for b, r in rejected.items())
        raise RuntimeError(f"{op}: no backend can run on {device_type} tensors ({listing})")
    reasons = registry.not_supported_reasons(op, backend, device_type)
    if reasons:
        raise RuntimeError(f"{op}: backend {backend!r} cannot run on {device_type} tensors: {'; '.join(reasons)}")
    return backend
