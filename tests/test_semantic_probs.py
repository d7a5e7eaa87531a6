"""ops.semantic_probs (and inference.semantic_probs_on): the bilinear resize + softmax of the
semantic logits, bit for bit equal to ``F.interpolate(..., mode="bilinear",
align_corners=False).softmax(dim=1)`` on this process's ATen; the C++ kernel ``_bilinear_softmax``
directly (resize alone and fused with the softmax) on random and adversarial logits (NaN, +-inf,
ties, huge values), integer and non-integer scales, shrinking, one axis unchanged, batches, 1-3
threads; the probe; the fallbacks; and all of it once more under ATEN_CPU_CAPABILITY=avx2 and
=default (subprocesses)."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import _extension, ops
from rtpanoptic.inference import semantic_probs_on
from rtpanoptic.ops import upsample
from rtpanoptic.ops.panoptic_release import _fused_multiply_add

HAS_KERNEL = _extension.has_kernel("_bilinear_softmax", "CPU")
needs_kernel = pytest.mark.skipif(not HAS_KERNEL, reason="the C++ extension is not built")
FMA = _fused_multiply_add(torch.device("cpu"))

# (B, C, h, w, size): every size has H + W > 128 (ATen's generic kernel, the one reproduced)
CASES = [
    (1, 19, 64, 128, (128, 256)),  # the TRI preset at 512x1024
    (2, 5, 37, 61, (100, 150)),  # non-integer scales, a batch
    (1, 4, 33, 47, (67, 95)),  # odd sizes
    (1, 6, 90, 120, (45, 100)),  # shrinking
    (1, 7, 50, 64, (50, 129)),  # H unchanged: taps (d, d), weights (1, 0)
    (1, 5, 70, 80, (70, 80)),  # both unchanged
    (1, 1, 20, 30, (80, 120)),  # one class
    (2, 3, 16, 24, (64, 96)),  # three classes (ATen's channels-last kernel at one thread only)
]


def _ids(case):
    return "x".join(map(str, case[:4])) + f"-{case[4][0]}x{case[4][1]}"


def _logits(b, c, h, w, seed, special=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) * 4
    if special:
        values = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-40, 0.0, -0.0, 120.0])
        pick = torch.rand(x.shape, generator=g) < 0.01
        x[pick] = values[torch.randint(0, len(values), (int(pick.sum()),), generator=g)]
        x[0, :, 0, : min(w, 4)] = 1.5  # exact ties
        x[0, :, h - 1, 0] = -float("inf")  # a cell without a finite class
    return x


def _want(x, size, softmax=True):
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return up.softmax(dim=1) if softmax else up


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"threads{n}")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@needs_kernel
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_the_probe_passes_on_this_torch():
    """A kernel that does not reproduce this torch's CPU arithmetic shows here (the process would
    silently take the slower fallbacks)."""
    assert upsample.exact_cpp_paths() == (True, True)


@needs_kernel
@pytest.mark.parametrize("softmax", [False, True], ids=["resize", "softmax"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_kernel_equals_aten(case, softmax, threads):
    b, c, h, w, size = case
    if c == 3 and threads == 1:
        pytest.skip("ATen takes its channels-last kernel for 3 channels at one thread")
    for seed, special in ((0, False), (1, True)):
        x = _logits(b, c, h, w, seed, special)
        got = torch.ops.rtpanoptic._bilinear_softmax(x, list(size), FMA, softmax)
        assert upsample.same_bits(got, _want(x, size, softmax)), (seed, special)


@needs_kernel
def test_tri_preset_1024x2048(threads):
    x = _logits(1, 19, 128, 256, 2)
    got = ops.semantic_probs(x, (256, 512))
    assert upsample._cpp_applies(x, (256, 512))
    assert upsample.same_bits(got, _want(x, (256, 512)))


@pytest.mark.parametrize("case", CASES + [(1, 19, 16, 32, (32, 64)), (1, 19, 40, 40, (64, 64))], ids=_ids)
def test_public_function_equals_the_expression(case):
    """Small outputs (H + W <= 128) take the expression itself (ATen's channels-last kernel rounds
    otherwise); the others the kernel where it is built."""
    b, c, h, w, size = case
    x = _logits(b, c, h, w, 3)
    assert upsample._cpp_applies(x, size) == (HAS_KERNEL and size[0] + size[1] > 128 and not
                                              (c == 3 and torch.get_num_threads() == 1))
    assert upsample.same_bits(ops.semantic_probs(x, size), _want(x, size))


def test_semantic_probs_on_skips_the_resize_on_the_same_grid():
    x = _logits(1, 4, 70, 80, 4)
    assert upsample.same_bits(semantic_probs_on(x, (70, 80)), x.softmax(dim=1))
    assert upsample.same_bits(semantic_probs_on(x, (140, 160)), _want(x, (140, 160)))


@pytest.mark.parametrize("make", [
    lambda x: x.double(),
    lambda x: x.contiguous(memory_format=torch.channels_last),
    lambda x: x[:, :, :, ::2],
    lambda x: x.clone().requires_grad_(),
], ids=["float64", "channels_last", "strided", "requires_grad"])
def test_other_inputs_take_the_expression(make):
    x = make(_logits(1, 5, 40, 60, 5))
    assert not upsample._cpp_applies(x, (80, 120))
    got = ops.semantic_probs(x, (80, 120))
    assert upsample.same_bits(got.detach(), _want(x, (80, 120)).detach())


@needs_kernel
@pytest.mark.parametrize("probe", [(True, False), (False, False)], ids=["resize_only", "expression"])
def test_probe_failures_fall_back(monkeypatch, probe):
    monkeypatch.setitem(upsample._probe, "result", probe)
    x = _logits(2, 5, 37, 61, 6)
    assert upsample.same_bits(ops.semantic_probs(x, (100, 150)), _want(x, (100, 150)))


@needs_kernel
def test_the_probe_can_fail(monkeypatch):
    """With the other rounding (fma flag inverted) the probe sees the difference."""
    monkeypatch.setattr(upsample, "_probe", {})
    monkeypatch.setattr(upsample, "_fused_multiply_add", lambda device: not FMA)
    assert upsample.exact_cpp_paths() == (False, False)


@needs_kernel
def test_export_graph_has_no_internal_op():
    class Probs(torch.nn.Module):
        def forward(self, x):
            return semantic_probs_on(x, (80, 120))

    program = torch.export.export(Probs(), (_logits(1, 5, 40, 60, 7, special=False),), strict=False)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("_bilinear_softmax" in t for t in targets), targets
    assert any("upsample_bilinear2d" in t for t in targets), targets


@needs_kernel
def test_compiled_function_matches():
    x = _logits(1, 5, 40, 60, 8)
    compiled = torch.compile(lambda t: semantic_probs_on(t, (80, 120)), backend="eager", fullgraph=True)
    assert upsample.same_bits(compiled(x), _want(x, (80, 120)))


@needs_kernel
@pytest.mark.skipif(bool(os.environ.get("ATEN_CPU_CAPABILITY")), reason="already under a capability override")
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_under_other_cpu_capabilities(capability):
    """This file once more with ATen's AVX2 and DEFAULT kernels (other roundings: DEFAULT does not
    contract multiply-adds, and computes exp with libm instead of Sleef)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider", "-x",
         "-k", "not capabilities and not compiled and not export"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
