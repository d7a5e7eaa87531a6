"""The semantic probabilities on the levelness grid (inference.semantic_probs_on at the TRI preset's
strides: 19 classes at stride 8 resized to stride 4, then softmax over the classes) on the CPU side
by side: the expression (F.interpolate + Tensor.softmax: the previous implementation and the
reference), the C++ resize followed by Tensor.softmax (what a process whose probe fails runs), and
the fused C++ pass (ops.semantic_probs).  Images 512x1024 and 1024x2048."""
import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import _extension, ops
from rtpanoptic.ops import upsample
from rtpanoptic.ops.panoptic_release import _fused_multiply_add

SIZES = {"512x1024": (512, 1024), "1024x2048": (1024, 2048)}
IMPLS = ["expression", "resize+softmax", "fused"]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", IMPLS)
def test_semantic_probs(benchmark, bench_run, impl, size):
    if impl != "expression" and not _extension.has_kernel("_bilinear_softmax", "CPU"):
        pytest.skip("the C++ extension is not built")
    h, w = SIZES[size]
    logits = 4 * torch.randn(1, 19, h // 8, w // 8, generator=torch.Generator().manual_seed(0))
    grid = (h // 4, w // 4)
    benchmark.group = f"semantic_probs 19 classes -> {grid[0]}x{grid[1]} ({size} image)"
    fma = _fused_multiply_add(logits.device)
    want = F.interpolate(logits, size=grid, mode="bilinear", align_corners=False).softmax(dim=1)
    if impl == "expression":
        fn = lambda: F.interpolate(logits, size=grid, mode="bilinear", align_corners=False).softmax(dim=1)
    elif impl == "resize+softmax":
        fn = lambda: torch.ops.rtpanoptic._bilinear_softmax(logits, list(grid), fma, False).softmax(dim=1)
    else:
        assert upsample.exact_cpp_paths() == (True, True)
        fn = lambda: ops.semantic_probs(logits, grid)
    assert upsample.same_bits(bench_run(benchmark, fn, "cpu"), want)
