"""select_queries (one greedy pass that stops at top_n) side by side with the three steps it
replaces: the reference (batched_nms + nms + [:top_n] in pure PyTorch), rtpanoptic's cpp
batched_nms + nms (today's ``nms_queries``), torchvision's batched_nms + nms + [:top_n], and
torchvision's batched_nms alone (the class-aware pass on the same boxes).

Inputs: clustered boxes (~20 per object), class NMS 0.5, class-agnostic NMS 0.97 (the TRI
preset's), top 100 / 300, N = 1k / 5k / 20k, three label distributions (conftest.LABELS): random
over 19 classes (few survivors per class: top_n is reached after ~100-200 boxes), and the worst
cases for a scan that stops at top_n kept -- one class per object in tight clusters (class NMS
keeps about one box per object: fewer than top_n survive, so every box is visited) and one
class for everything.  The reference is skipped at N = 20k (its N x N IoU matrices); on the CPU
the interpreter-free backends run every size.
"""
import pytest
import torch
import torchvision

from rtpanoptic import ops

T1, T2 = 0.5, 0.97
IMPLS = [("reference", "cpu"), ("cpp", "cpu"), ("three-step-cpp", "cpu"), ("three-step-torchvision", "cpu"),
         ("batched_nms-torchvision", "cpu"), ("cuda", "cuda"), ("triton", "cuda"),
         ("three-step-torchvision", "cuda"), ("batched_nms-torchvision", "cuda")]
LABELS = ["random-19", "per-object-tight", "one-class-tight"]


def _three_steps(batched_nms, nms, boxes, scores, labels, top_n):
    keep = batched_nms(boxes, scores, labels, T1)
    keep = keep[nms(boxes[keep], scores[keep], T2)]
    return keep[:top_n]


def _cpp(fn):
    return lambda *a: fn(*a, backend="cpp")


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("top_n", [100, 300])
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("impl,device", IMPLS, ids=[f"{i}-{d}" for i, d in IMPLS])
def test_select_queries(benchmark, bench_run, need, make_labelled_boxes, impl, device, n, top_n, labels):
    tv = impl.endswith("torchvision")
    backend = "cpp" if impl == "three-step-cpp" else impl
    need(device, "torchvision" if tv else backend, ops.available_backends(device)["select_queries"])
    if impl == "reference" and n > 5000:
        pytest.skip("the reference builds N x N IoU matrices (1.6 GB each at 20k)")
    if impl.startswith("batched_nms") and top_n != 100:
        pytest.skip("batched_nms alone does not depend on top_n")
    boxes, scores, lab = make_labelled_boxes(n, labels, device=device)
    benchmark.group = f"select_queries N={n} ({labels}, {T1}/{T2}, top {top_n})"
    if impl == "batched_nms-torchvision":
        bench_run(benchmark, lambda: torchvision.ops.batched_nms(boxes, scores, lab, T1), device)
        return
    if impl == "three-step-torchvision":
        tv_ops = torchvision.ops
        keep = bench_run(benchmark, lambda: _three_steps(tv_ops.batched_nms, tv_ops.nms, boxes, scores, lab, top_n),
                         device)
    elif impl == "three-step-cpp":
        keep = bench_run(benchmark, lambda: _three_steps(_cpp(ops.batched_nms), _cpp(ops.nms), boxes, scores, lab,
                                                         top_n), device)
    else:
        keep = bench_run(benchmark, lambda: ops.select_queries(boxes, scores, lab, T1, T2, top_n, padded=True,
                                                               backend=impl)[0], device)
    want = _three_steps(torchvision.ops.batched_nms, torchvision.ops.nms, boxes.cpu(), scores.cpu(), lab.cpu(), top_n)
    assert torch.equal(keep.cpu()[: len(want)], want)
