"""NMS side by side: every rtpanoptic backend and torchvision, one pytest-benchmark run."""
import pytest
import torch
import torchvision

from rtpanoptic import ops

IMPLS = {f"rtpanoptic-{b}": b for b in ops.available_backends("cpu")["nms"] if b != "triton"}


@pytest.mark.parametrize("n", [1000, 5000])
@pytest.mark.parametrize("impl", list(IMPLS) + ["torchvision"])
def test_nms_cpu(benchmark, make_clustered_boxes, impl, n):
    if impl.endswith("reference") and n > 1000:
        pytest.skip("the reference's O(N^2) mask is slow beyond 1k boxes on CPU")
    boxes, scores = make_clustered_boxes(n)
    benchmark.group = f"nms cpu N={n}"
    if impl == "torchvision":
        keep = benchmark(torchvision.ops.nms, boxes, scores, 0.5)
    else:
        keep = benchmark(ops.nms, boxes, scores, 0.5, backend=IMPLS[impl])
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
