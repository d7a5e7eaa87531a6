"""A/B of the CPU kernels of nms / batched_nms / panoptic_from_dense against an earlier revision,
in one process, interleaved (the machine is noisy: rounds alternate between the contenders).

The earlier revision's kernel files are taken from git, their ops registered under another
namespace (``rtpanoptic_ab``) and built with ``torch.utils.cpp_extension.load`` in a temporary
directory, so both versions load side by side.  Inputs are the benchmarks' own (clustered boxes,
``test_bench_ops._scene``); every row checks that both versions return identical outputs.

    python benchmarks/ab_cpu_kernels.py --rev main --rounds 11 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KERNELS = ("nms_kernel.cpp", "panoptic_from_dense_kernel.cpp")
SCHEMAS = """
#include <torch/library.h>
TORCH_LIBRARY(rtpanoptic_ab, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("panoptic_from_dense(Tensor dense_boxes, Tensor sem_probs, Tensor query_boxes, Tensor query_classes, "
        "Tensor query_scores, Tensor is_thing, float sigma, str score, float score_threshold, "
        "float overlap_threshold, int stuff_area_limit) -> "
        "(Tensor segment_map, Tensor segment_class, Tensor segment_query, Tensor segment_score, Tensor segment_area)");
}
"""


def build_revision(rev: str, workdir: str):
    """Builds ``rev``'s kernels of the three ops as ``torch.ops.rtpanoptic_ab``."""
    src = os.path.join(workdir, "csrc")
    os.makedirs(src)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "csrc"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", workdir], input=archive, check=True)
    sources = [os.path.join(src, "ab_ops.cpp")]
    with open(sources[0], "w") as f:
        f.write(SCHEMAS)
    for name in KERNELS:
        path = os.path.join(src, "cpu", name)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("TORCH_LIBRARY_IMPL(rtpanoptic,", "TORCH_LIBRARY_IMPL(rtpanoptic_ab,"))
        sources.append(path)
    from torch.utils.cpp_extension import load

    load("rtpanoptic_ab", sources, extra_include_paths=[src], extra_cflags=["-O3", "-ffp-contract=off"],
         build_directory=workdir, is_python_module=False)
    return torch.ops.rtpanoptic_ab


def interleaved(cases: dict, rounds: int) -> dict:
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) * 1e3 for name, v in times.items()}


def report(title: str, medians: dict):
    base = medians["new"]
    cells = "  ".join(f"{name} {ms:8.2f} ms ({ms / base:5.1f}x)" for name, ms in medians.items())
    print(f"{title:34s} {cells}")


def nms_rows(new, old, rev: str, n: int, rounds: int):
    from conftest import clustered_boxes

    boxes, scores = clustered_boxes(n)
    idxs = torch.randint(0, 8, (n,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(new.nms(boxes, scores, 0.5), old.nms(boxes, scores, 0.5))
    assert torch.equal(new.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(new.batched_nms(boxes, scores, idxs, 0.5), old.batched_nms(boxes, scores, idxs, 0.5))
    report(f"nms N={n}", interleaved({
        "new": lambda: new.nms(boxes, scores, 0.5),
        rev: lambda: old.nms(boxes, scores, 0.5),
        "torchvision": lambda: torchvision.ops.nms(boxes, scores, 0.5),
    }, rounds))
    report(f"batched_nms N={n} (8 classes)", interleaved({
        "new": lambda: new.batched_nms(boxes, scores, idxs, 0.5),
        rev: lambda: old.batched_nms(boxes, scores, idxs, 0.5),
        "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
    }, rounds))


def panoptic_rows(new, old, rev: str, q: int, score: str, rounds: int, sigma: float = 0.3):
    from test_bench_ops import _scene

    from rtpanoptic.ops import reference

    dense, sem, queries, classes, qscores, is_thing = _scene(q, 256, 512, "cpu")
    call = (dense, sem, queries, classes, qscores, is_thing, sigma, score, 0.0, 0.5, 64)
    got, want = new.panoptic_from_dense(*call), old.panoptic_from_dense(*call)
    if len(got) != len(want):  # a revision with the fixed-size form (Q + C slots and the count) against one without
        from rtpanoptic.ops import PaddedPanopticSegments

        got, want = (o if len(o) == 5 else PaddedPanopticSegments(*o).trimmed() for o in (got, want))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    report(f"panoptic_from_dense Q={q} {score}", interleaved({
        "new": lambda: new.panoptic_from_dense(*call),
        rev: lambda: old.panoptic_from_dense(*call),
        "broadcast": lambda: (reference.iou_attention(dense, queries, score) * sem[classes] > sigma, sem.argmax(0)),
    }, rounds))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, HERE)
    from rtpanoptic import ops  # noqa: F401  (loads rtpanoptic._C)

    new = torch.ops.rtpanoptic
    with tempfile.TemporaryDirectory() as workdir:
        old = build_revision(args.rev, workdir)
        print(f"torch {torch.__version__}, {args.threads} threads, capability "
              f"{torch.backends.cpu.get_cpu_capability()}; (ratio = time / new)")
        for n in (5000, 20000):
            nms_rows(new, old, args.rev, n, args.rounds)
        for q in (20, 100):
            for score in ("iou", "tri"):
                panoptic_rows(new, old, args.rev, q, score, args.rounds)


if __name__ == "__main__":
    main()
