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
