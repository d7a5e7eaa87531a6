"""select_queries (one sweep that stops at top_n) side by side with the three steps it replaces:
the reference (batched_nms + nms + [:top_n] in pure PyTorch), rtpanoptic's cpp batched_nms + nms
(today's ``nms_queries``) and torchvision's batched_nms + nms + [:top_n].

Inputs: clustered boxes (~20 per object), 19 classes, class NMS 0.5, class-agnostic NMS 0.97
(the TRI preset's), top 100.  The reference is skipped at N = 20k (its N x N IoU matrices).
"""
import pytest
import torch
import torchvision

from rtpanoptic import ops

T1, T2, TOP_N = 0.5, 0.97, 100
IMPLS = [("reference", "cpu"), ("cpp", "cpu"), ("three-step-cpp", "cpu"), ("three-step-torchvision", "cpu"),
         ("cuda", "cuda"), ("triton", "cuda"), ("three-step-torchvision", "cuda")]


def _three_steps(batched_nms, nms, boxes, scores, labels):
    keep = batched_nms(boxes, scores, labels, T1)
    keep = keep[nms(boxes[keep], scores[keep], T2)]
    return keep[:TOP_N]


def _cpp(fn):
    return lambda *a: fn(*a, backend="cpp")


@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("impl,device", IMPLS, ids=[f"{i}-{d}" for i, d in IMPLS])
def test_select_queries(benchmark, bench_run, need, make_clustered_boxes, impl, device, n):
    backend = "cpp" if impl == "three-step-cpp" else impl
    need(device, "torchvision" if impl == "three-step-torchvision" else backend,
         ops.available_backends(device)["select_queries"])
    if impl == "reference" and n > 5000:
        pytest.skip("the reference builds N x N IoU matrices (1.6 GB each at 20k)")
    boxes, scores = make_clustered_boxes(n, device=device)
    labels = torch.randint(0, 19, (n,), generator=torch.Generator().manual_seed(0)).to(device)
    benchmark.group = f"select_queries N={n} (19 classes, {T1}/{T2}, top {TOP_N})"
    if impl == "three-step-torchvision":
        tv = torchvision.ops
        keep = bench_run(benchmark, lambda: _three_steps(tv.batched_nms, tv.nms, boxes, scores, labels), device)
    elif impl == "three-step-cpp":
        keep = bench_run(benchmark, lambda: _three_steps(_cpp(ops.batched_nms), _cpp(ops.nms), boxes, scores,
                                                         labels), device)
    else:
        keep = bench_run(benchmark, lambda: ops.select_queries(boxes, scores, labels, T1, T2, TOP_N, padded=True,
                                                               backend=impl)[0], device)
    want = _three_steps(torchvision.ops.batched_nms, torchvision.ops.nms, boxes.cpu(), scores.cpu(), labels.cpu())
    assert torch.equal(keep.cpu()[: len(want)], want)
