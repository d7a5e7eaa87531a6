"""Where and how a command runs: the device, the number of CPU threads, the ops backend."""
from __future__ import annotations

import contextlib

import torch

from ..usage import UsageError


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when a GPU is visible, else cpu; ``"cuda"`` without a GPU is a UsageError."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported; use auto, cpu or cuda")
    return dev


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise UsageError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_backend(backend: str | None, device: torch.device) -> None:
    """``backend`` (None: the fastest per op) must run every op of the pipeline on ``device``."""
    from .. import ops
    from ..inference import PIPELINE_OPS

    if backend is None:
        return
    if backend not in ops.BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(ops.BACKENDS)}")
    avail = ops.available_backends(device.type)
    missing = [op for op in PIPELINE_OPS if backend not in avail[op]]
    if missing:
        raise UsageError(f"backend {backend!r} cannot run {', '.join(missing)} on {device.type} here "
                         f"(see rtpanoptic.ops.available_backends()); leave --backend out for the fastest")
