"""Every Triton kernel compiles for sm_90 (frontend, LLVM, ptxas) without a GPU, with exactly the
launch options the ops use at run time (recorded by running every op through the interpreter),
and its PTX has no fused multiply-add and no approximate float32 division.  The interpreter
cannot catch compiled-dialect errors nor FMA contraction, so this runs
``python -m rtpanoptic.kernels._compile_check`` in a subprocess without ``TRITON_INTERPRET``."""
import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


def test_all_kernels_compile_for_sm90_as_launched():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "rtpanoptic.kernels._compile_check", "--arch", "90"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if "No such file" in proc.stderr and "ptxas" in proc.stderr:
        pytest.skip("triton's bundled ptxas is missing")
    # (a kernel that the recorded workload never launches is a failure too)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compiled = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("OK ")}
    assert len(compiled) >= 14, proc.stdout


def test_wide_division_pattern():
    """The PTX pattern of the panoptic kernels' "no 64-bit integer division" check: it matches PTX's
    64-bit signed / unsigned quotient and remainder, not their 32-bit forms nor float division."""
    from rtpanoptic.kernels._compile_check import WIDE_DIVISION

    for line in ("div.s64 \t%rd5, %rd3, %rd4;", "rem.s64 %rd6, %rd3, %rd4;", "div.u64 %rd1, %rd2, 7;", "rem.u64 %rd1"):
        assert WIDE_DIVISION.search(line), line
    for line in ("div.s32 %r3, %r1, %r2;", "rem.u32 %r1", "div.rn.f64 %fd1, %fd2, %fd3;", "div.full.f32 %f1"):
        assert not WIDE_DIVISION.search(line), line
