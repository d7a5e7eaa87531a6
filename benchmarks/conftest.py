"""Benchmark inputs: deterministic, built in-process.  Run with ``make bench``."""
import pytest
import torch


def clustered_boxes(n: int, seed: int = 0, image: float = 1024.0, device="cpu"):
    """``n`` boxes around ``n // 20`` objects (like dense detections before NMS)."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, n // 20)
    centres = torch.rand(k, 2, generator=g) * image
    sizes = 16 + torch.rand(k, 2, generator=g) * 200
    owner = torch.randint(0, k, (n,), generator=g)
    jitter = 1 + 0.15 * torch.randn(n, 4, generator=g)
    c, s = centres[owner], sizes[owner]
    boxes = torch.cat([c - s / 2 * jitter[:, :2], c + s / 2 * jitter[:, 2:]], 1)
    scores = torch.rand(n, generator=g)
    return boxes.to(device), scores.to(device)


@pytest.fixture
def make_clustered_boxes():
    return clustered_boxes
