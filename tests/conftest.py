"""Shared fixtures: small random inputs built in-process (no downloads), and the
``backends`` marker that parametrises a test over the (backend, device) pairs of an op."""
from __future__ import annotations

import os

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


def backend_devices(op: str, reference: bool = True) -> list[tuple[str, str]]:
    """(backend, device) pairs that run ``op`` here: every CPU backend on "cpu" (Triton under
    ``TRITON_INTERPRET=1``) and, with a GPU, every backend on "cuda" (compiled Triton only: the
    interpreter copies CUDA tensors to the host)."""
    pairs = [(b, "cpu") for b in ops.available_backends("cpu")[op]]
    if torch.cuda.is_available():
        interpreting = os.environ.get("TRITON_INTERPRET") == "1"
        pairs += [(b, "cuda") for b in ops.available_backends("cuda")[op] if not (b == "triton" and interpreting)]
    return [(b, d) for b, d in pairs if reference or b != "reference"]


def pytest_generate_tests(metafunc):
    """``@pytest.mark.backends(op, reference=True)`` on a test taking ``backend`` and ``device``
    runs it once per pair of :func:`backend_devices` (``reference=False``: parity tests, which
    compare a backend with the reference and would compare the reference with itself)."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None:
        return
    pairs = backend_devices(*marker.args, **marker.kwargs)
    metafunc.parametrize(("backend", "device"), [pytest.param(b, d, id=f"{b}-{d}") for b, d in pairs])


@pytest.fixture
def assert_bitwise():
    """``assert_bitwise(out, want, backend, device)``: equal bit for bit (NaN where ``want`` has
    NaN).  One exception: Triton's interpreter converts float32 to bfloat16 by truncation where
    a GPU rounds to nearest even, so there bfloat16 results may be one unit in the last place
    off (toward zero)."""

    def check(out: torch.Tensor, want: torch.Tensor, backend: str, device: str):
        assert out.dtype == want.dtype and out.shape == want.shape
        assert torch.equal(out.isnan(), want.isnan())
        out, want = out.nan_to_num(), want.nan_to_num()
        if backend == "triton" and device == "cpu" and out.dtype == torch.bfloat16:
            torch.testing.assert_close(out.float(), want.float(), rtol=2.0**-7, atol=0)
        else:
            assert torch.equal(out, want)

    return check
