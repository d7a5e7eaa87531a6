"""CPU counterparts of tests/ops/test_gpu_execution.py's execution checks, on the same cases: every
op's CPU backends give the same bits twice, forward and backward, also under
``torch.use_deterministic_algorithms(True)`` (none of them raises there).  The GPU-only checks with
no CPU meaning (a second device, a side stream, CUDA-graph capture, the 2**31 size limits) stay
there; capture-safety has its CPU proof in tests/test_postprocess_device.py (the dynamo graph of
the device stage holds no host read)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from rtpanoptic import ops


def _gpu_cases():
    """tests/ops/test_gpu_execution.py as a module: its ``_case`` inputs and ``_run`` / ``_assert_equal``."""
    spec = importlib.util.spec_from_file_location("gpu_execution_cases", Path(__file__).with_name("test_gpu_execution.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU = _gpu_cases()
# the interpreter's cost per call: its cases of the ops with a backward or many queries run on a GPU
INTERPRETED = ("nms", "batched_nms", "box_iou", "decode_boxes", "select_queries", "upsample_argmax")


def _params():
    avail = ops.available_backends("cpu")
    return [pytest.param(op, b, id=f"{op}-{b}") for op in GPU.ALL for b in avail[op]
            if b != "reference" and (b != "triton" or op in INTERPRETED)]


@pytest.mark.parametrize("op,backend", _params())
def test_run_twice_bitwise(op, backend, make):
    args, grad_at = GPU._case(make, op, seed=5)
    first = GPU._run(op, backend, args, grad_at)
    GPU._assert_equal(first, GPU._run(op, backend, args, grad_at))
    torch.use_deterministic_algorithms(True)
    try:
        third = GPU._run(op, backend, args, grad_at)
    finally:
        torch.use_deterministic_algorithms(False)
    GPU._assert_equal(first, third)
