"""Backend discovery, defaults, torch.library registration and torch.compile."""
import os

import pytest
import torch
import torchvision

from rtpanoptic import ops

HAS_CPP_NMS = "cpp" in ops.available_backends("cpu")["nms"]


def test_available_backends_shape():
    built = ops.available_backends()
    assert set(built) == set(ops.OPS)
    for backends in built.values():
        assert backends[0] == "reference"
        assert set(backends) <= set(ops.BACKENDS)
    here = ops.available_backends("cpu")
    for op in ops.OPS:
        assert set(here[op]) <= set(built[op])
        assert "cuda" not in here[op]
        if "triton" in here[op]:
            assert os.environ.get("TRITON_INTERPRET") == "1"


def test_extension_is_built_in_ci():
    if os.environ.get("RTPANOPTIC_REQUIRE_EXTENSION") != "1":
        pytest.skip("set RTPANOPTIC_REQUIRE_EXTENSION=1 to require the compiled extension")
    assert HAS_CPP_NMS, "rtpanoptic._C was not built or failed to load"


@pytest.mark.skipif(not HAS_CPP_NMS, reason="C++ extension not built")
def test_cpp_nms_opcheck(make):
    boxes = make.boxes(64, seed=1)
    scores = torch.rand(64, generator=torch.Generator().manual_seed(1))
    torch.library.opcheck(torch.ops.rtpanoptic.nms.default, (boxes, scores, 0.5))


@pytest.mark.skipif(not HAS_CPP_NMS, reason="C++ extension not built")
def test_cpp_nms_under_torch_compile_fullgraph(make):
    torch._dynamo.reset()

    def select_boxes(boxes, scores):
        keep = torch.ops.rtpanoptic.nms(boxes, scores, 0.5)
        return boxes[keep]

    compiled = torch.compile(select_boxes, fullgraph=True, backend="eager")
    boxes = make.boxes(100, seed=2)
    scores = torch.rand(100, generator=torch.Generator().manual_seed(2))
    expected = boxes[torchvision.ops.nms(boxes, scores, 0.5)]
    torch.testing.assert_close(compiled(boxes, scores), expected)
