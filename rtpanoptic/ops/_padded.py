"""The fixed-size ("padded") outputs of the ops: a count tensor beside arrays of a bound length."""
from __future__ import annotations

import torch
from torch import Tensor


def count_on_host(count: Tensor, length: int) -> int:
    """The value of a 0-d ``count`` tensor, read on the host (one synchronisation on a GPU).  Under
    tracing (``torch.export``, ``torch.compile``) an unbacked size, bounded by the padded ``length``."""
    k = count.item()
    torch._check(k >= 0)
    torch._check(k <= length)
    return k


def capturing(device: torch.device) -> bool:
    """Whether ``device`` is a GPU whose current stream is capturing a CUDA graph (where nothing
    may be read back to the host).  False on other devices and under ``torch.compile`` tracing."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return False
    return torch.cuda.is_current_stream_capturing()
