"""nms, batched_nms and box_iou side by side: rtpanoptic reference / cpp / cuda and torchvision.

The reference is skipped at N = 20k: it materialises the N x N IoU matrix (1.6 GB in float32)
and a Python loop over the kept boxes; it is timed at 1k and 5k."""
import pytest
import torch
import torchvision

from rtpanoptic import ops

IMPLS = [("reference", "cpu"), ("cpp", "cpu"), ("torchvision", "cpu"), ("cuda", "cuda"), ("torchvision", "cuda")]
IDS = [f"{impl}-{dev}" for impl, dev in IMPLS]


@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_nms(benchmark, bench_run, need, make_clustered_boxes, impl, device, n):
    need(device, impl, ops.available_backends(device)["nms"])
    if impl == "reference" and n > 5000:
        pytest.skip("the reference builds the N x N IoU matrix (1.6 GB at 20k)")
    boxes, scores = make_clustered_boxes(n, device=device)
    benchmark.group = f"nms N={n}"
    if impl == "torchvision":
        keep = bench_run(benchmark, lambda: torchvision.ops.nms(boxes, scores, 0.5), device)
    else:
        keep = bench_run(benchmark, lambda: ops.nms(boxes, scores, 0.5, backend=impl), device)
    assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.5))


@pytest.mark.parametrize("labels", ["random-8", "per-object-tight", "one-class-tight"])
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_batched_nms(benchmark, bench_run, need, make_labelled_boxes, impl, device, n, labels):
    """Random labels over 8 classes, and the worst cases of a greedy scan (conftest.LABELS): one
    class per object in tight clusters, one class for everything."""
    need(device, impl, ops.available_backends(device)["batched_nms"])
    if impl == "reference" and n > 5000:
        pytest.skip("the reference builds the N x N IoU matrix (1.6 GB at 20k)")
    boxes, scores, idxs = make_labelled_boxes(n, labels, device=device)
    benchmark.group = f"batched_nms N={n} ({labels})"
    if impl == "torchvision":
        keep = bench_run(benchmark, lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5), device)
    else:
        keep = bench_run(benchmark, lambda: ops.batched_nms(boxes, scores, idxs, 0.5, backend=impl), device)
    assert len(keep) == len(torchvision.ops.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5))


@pytest.mark.parametrize("n", [1000, 5000])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_box_iou(benchmark, bench_run, need, make_clustered_boxes, impl, device, n):
    need(device, impl, ops.available_backends(device)["box_iou"])
    a, _ = make_clustered_boxes(n, device=device)
    b, _ = make_clustered_boxes(1000, seed=1, device=device)
    benchmark.group = f"box_iou {n}x1000"
    if impl == "torchvision":
        bench_run(benchmark, lambda: torchvision.ops.box_iou(a, b), device)
    else:
        bench_run(benchmark, lambda: ops.box_iou(a, b, backend=impl), device)
