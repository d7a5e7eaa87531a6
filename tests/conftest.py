"""Shared fixtures: small random inputs built in-process (no downloads)."""
from __future__ import annotations

import pytest
import torch

from rtpanoptic import ops


def random_boxes(n: int, size: float = 100.0, seed: int = 0, dtype=torch.float32, max_wh: float = 40.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.fixture
def make_boxes():
    """``make_boxes(n, size=100, seed=0, dtype=float32)`` -> random valid xyxy boxes."""
    return random_boxes


def backends_for(op: str, device: str = "cpu"):
    """Backends of ``op`` that run on ``device`` here, as pytest params."""
    return ops.available_backends(device)[op]


@pytest.fixture
def cpu_backends():
    return backends_for
