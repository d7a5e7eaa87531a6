"""The cpp kernels' run-time ISA selection (csrc/cpu/simd.h: an AVX2 path where the CPU has it, a
scalar path otherwise): the cpp cases of the ops with vector paths (tests/ops/test_boxes.py: nms,
batched_nms; tests/ops/test_panoptic.py and test_panoptic_culls.py: panoptic_from_dense;
tests/ops/test_panoptic_release.py: panoptic_from_dense_release; tests/ops/test_dense.py:
gather_levelness) once more, in a subprocess, on the scalar path (``ATEN_CPU_CAPABILITY=default``)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtpanoptic import ops

HERE = Path(__file__).resolve().parent
FILES = ("test_boxes.py", "test_panoptic.py", "test_panoptic_culls.py", "test_panoptic_release.py", "test_dense.py")
pytestmark = pytest.mark.skipif(
    not all("cpp" in ops.available_backends("cpu")[op]
            for op in ("nms", "batched_nms", "panoptic_from_dense", "panoptic_from_dense_release", "gather_levelness")),
    reason="the C++ extension is not built",
)


@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == "default", reason="already on the scalar path")
def test_the_cpp_cases_on_the_scalar_path():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *(str(HERE / f) for f in FILES), "-q", "-p", "no:cacheprovider", "-x",
         "-k", "cpp-cpu"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    check = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "DEFAULT"
