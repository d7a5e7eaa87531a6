"""Every GPU kernel once, forward and backward, on small inputs with ragged sizes (tile and
word boundaries, one-element and empty cases), checked against the C++ kernels on the CPU.

Meant to run under NVIDIA's compute-sanitizer (``make gpu-check``), which reports out-of-bounds
and misaligned accesses (memcheck), shared-memory races (racecheck), uninitialised reads
(initcheck) and bad synchronisation (synccheck) of every kernel it launches::

    compute-sanitizer --tool memcheck --error-exitcode 1 python tests/ops/sanitizer_cases.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python tests/ops/sanitizer_cases.py --backends cuda

Also runs as ``python tests/ops/sanitizer_cases.py --device cpu`` (the cpp kernels against the
reference: a check of the cases themselves; tests/ops/test_sanitizer_cases.py) and in-process
from tests/ops/test_gpu_execution.py.  Exit status 0 when every case agrees, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from rtpanoptic import ops


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _boxes(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30], 1).to(dtype)


def _dense(h: int, w: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return _boxes(h * w, seed, dtype).t().reshape(4, h, w).contiguous()


def _local_scene(seed: int, h: int, w: int, q: int, c: int = 6):
    """panoptic_from_dense inputs whose query j's dense boxes fill a band of rows of the grid (the rest
    predicts a box far from every query); query 1's mask is the grid's last 3 pixels only, query 2's
    box meets no dense box (an empty mask)."""
    g = _gen(seed)
    boxes = _boxes(q, seed) * torch.tensor([w, h, w, h]) / 20
    dense = torch.tensor([-1e3, -1e3, -990.0, -990.0]).view(4, 1, 1).repeat(1, h, w)
    for j in range(3, q):
        y0, x0 = (int(torch.randint(0, n, (1,), generator=g)) for n in (h, w))
        dense[:, y0:y0 + 1 + h // 4, x0:x0 + 1 + w // 2] = boxes[j].view(4, 1, 1)
    boxes[1] = torch.tensor([3e3, 3e3, 3010.0, 3010.0])  # beyond every other box
    dense[:, h - 1, w - 3:] = boxes[1].view(4, 1)
    boxes[2] = torch.tensor([5e3, 5e3, 5010.0, 5010.0])
    dense = dense + torch.rand(4, h, w, generator=g)
    sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
    sem[2:, h - 1, w - 3:] = 0.9  # every thing class passes sigma where query 1 is predicted
    return (dense.contiguous(), sem, boxes, torch.randint(2, c, (q,), generator=g), torch.rand(q, generator=g),
            torch.arange(c) >= 2)


def cases():
    """(name, op, positional args on the CPU (a trailing dict: keyword args), indices of the differentiable args)."""
    out = []
    for n in (1, 63, 64, 65, 130):
        g = _gen(n)
        boxes, scores = _boxes(n, n), torch.rand(n, generator=g)
        out.append((f"nms n={n}", "nms", (boxes, scores, 0.5), ()))
        out.append((f"batched_nms n={n}", "batched_nms", (boxes, scores, torch.randint(0, 3, (n,), generator=g), 0.4),
                    ()))
        out.append((f"select_queries n={n}", "select_queries",
                    (boxes, scores, torch.randint(0, 3, (n,), generator=g), 0.4, 0.3, 20), ()))
    for n, classes in ((129, 40), (200, 1)):  # tight clusters: every word of the bitmask scans visited
        g = _gen(n + 1000)
        boxes = _boxes(classes, n)[torch.randint(0, classes, (n,), generator=g)]
        boxes = boxes + torch.randn(n, 4, generator=g)
        scores, labels = torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g)
        out.append((f"select_queries clusters n={n}", "select_queries", (boxes, scores, labels, 0.5, 0.3, n), ()))
        out.append((f"select_queries clusters n={n} no global", "select_queries",
                    (boxes, scores, labels, 0.5, -1.0, 7), ()))
        out.append((f"batched_nms clusters n={n}", "batched_nms", (boxes, scores, labels, 0.5), ()))
    out.append(("box_iou 33x65", "box_iou", (_boxes(33, 1), _boxes(65, 2)), ()))
    out.append(("box_iou half", "box_iou", (_boxes(33, 1, torch.float16), _boxes(65, 2, torch.float16)), ()))
    out.append(("decode_boxes", "decode_boxes", (torch.rand(2, 4, 7, 33, generator=_gen(3)) * 20, 8), (0,)))
    offsets = [torch.rand(2, 4, h, w, generator=_gen(4)) * 20 for h, w in ((9, 17), (5, 9), (3, 5), (1, 1))]
    out.append(("gather_levelness", "gather_levelness", (offsets, torch.randn(2, 5, 18, 34, generator=_gen(5)), 4),
                (0,)))
    for dtype in (torch.float32, torch.float16):
        for score in ("iou", "tri"):
            out.append((f"iou_attention {score} {dtype}", "iou_attention",
                        (_dense(9, 37, 6, dtype), _boxes(21, 7, dtype), score), (0, 1)))
    dense = torch.stack([_dense(9, 37, 8), _dense(9, 37, 9)])
    masks = torch.rand(21, 9, 37, generator=_gen(10)) > 0.5
    masks[3] = False  # an empty mask
    out.append(("mask_loss", "mask_loss", (dense, _boxes(21, 11), masks, torch.rand(21, generator=_gen(12)),
                                           torch.randint(0, 2, (21,), generator=_gen(13))), (0, 1)))
    for q in (0, 1, 40):
        g = _gen(14 + q)
        h, w, c = 17, 29, 6  # 493 pixels: a partial last word
        qb = _boxes(max(q, 1), 15)[:q] * 2
        dense = (qb if q else _boxes(1, 15))[torch.randint(0, max(q, 1), (h, w), generator=g)].permute(2, 0, 1)
        sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
        args = (dense.contiguous(), sem, qb, torch.randint(2, c, (q,), generator=g), torch.rand(q, generator=g),
                torch.arange(c) >= 2)
        out.append((f"panoptic_from_dense q={q}", "panoptic_from_dense", args, ()))
    for q, (h, w) in ((40, (130, 300)), (300, (20, 37))):
        # masks in bands of rows: word ranges starting and ending mid-block past 1024 words (the CUDA
        # fusion block), a mask in the last partial word only, empty masks; 300 queries: two chunks
        out.append((f"panoptic_from_dense local q={q} {h}x{w}", "panoptic_from_dense", _local_scene(q, h, w, q), ()))
    for q, stride, (h, w), size in ((0, 4, (17, 29), (66, 113)), (1, 4, (17, 29), (68, 116)), (40, 4, (17, 29), (66, 113)),
                                    (25, 2, (23, 41), (45, 81)), (12, 1, (30, 37), (29, 37))):
        # ragged output rows (partial last words), rectangles cut by the crop; stride 1: NaN cells
        g = _gen(70 + q + stride)
        c = 6
        qb = _boxes(max(q, 1), 71)[:q] * (8 / stride)
        dense = (qb if q else _boxes(1, 71))[torch.randint(0, max(q, 1), (h, w), generator=g)].permute(2, 0, 1)
        dense = dense + torch.randn(4, h, w, generator=g)
        sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
        if stride == 1:
            sem[:, 5:8, 9:12] = float("nan")
        args = (dense.contiguous(), sem, qb, torch.randint(2, c, (q,), generator=g), torch.rand(q, generator=g),
                torch.arange(c) >= 2, dict(stride=stride, size=size, sigma=0.3, stuff_area_limit=3))
        out.append((f"panoptic_from_dense_release q={q} stride={stride}", "panoptic_from_dense_release", args, ()))
    # release rectangles of more words than the CUDA fusion block's 1024 threads: tall (8 words a row)
    # and wider than the block (1038 words a row)
    g = _gen(80)
    big = torch.rand(6, 2, generator=g) * torch.tensor([200.0, 360.0])
    big = torch.cat([big, big + 150 + torch.rand(6, 2, generator=g) * 250], 1)
    dense = big[torch.randint(0, 6, (100, 60), generator=g)].permute(2, 0, 1) + torch.randn(4, 100, 60, generator=g)
    out.append(("panoptic_from_dense_release tall rectangles", "panoptic_from_dense_release",
                (dense.contiguous(), torch.softmax(torch.randn(4, 100, 60, generator=g), 0), big,
                 torch.randint(0, 2, (6,), generator=g), torch.rand(6, generator=g), torch.arange(4) < 2,
                 dict(stride=4, size=(400, 237), sigma=0.2, stuff_area_limit=3)), ()))
    wide = torch.tensor([[0.0, 0.0, 33200.0, 8.0], [16600.0, 0.0, 33200.0, 8.0]])
    logits = torch.randn(3, 2, 8300, generator=g)
    logits[0] += 3
    out.append(("panoptic_from_dense_release wide rectangle", "panoptic_from_dense_release",
                ((wide[0].view(4, 1, 1) + torch.rand(4, 2, 8300, generator=g)).contiguous(), logits.softmax(0), wide,
                 torch.tensor([0, 0]), torch.tensor([0.9, 0.95]), torch.tensor([True, False, False]),
                 dict(stride=4, size=(8, 33200), sigma=0.3)), ()))
    out.append(("upsample_argmax", "upsample_argmax", (torch.randn(2, 19, 9, 17, generator=_gen(60)), (72, 136),
                                                         (70, 133)), ()))
    return out


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, list):
        return [t.to(device) for t in x]
    return x


def _run(op: str, backend: str, device: str, args, grad_at) -> list[torch.Tensor]:
    kwargs = dict(args[-1]) if args and isinstance(args[-1], dict) else {}
    args = [_to(a, device) for a in (args[:-1] if kwargs else args)]
    leaves = []
    for i in grad_at:
        if isinstance(args[i], list):
            args[i] = [t.requires_grad_() for t in args[i]]
            leaves += args[i]
        else:
            args[i] = args[i].requires_grad_()
            leaves.append(args[i])
    if op == "panoptic_from_dense":
        kwargs = {"sigma": 0.1, "stuff_area_limit": 3}
    out = getattr(ops, op)(*args, backend=backend, **kwargs)
    outs = list(out) if isinstance(out, tuple) else [out]
    if leaves:
        first = outs[0]
        w = torch.linspace(-1, 1, first.numel(), dtype=torch.float64).reshape(first.shape).to(first)
        outs += list(torch.autograd.grad((first * w).sum(), leaves))
    return [t.detach().cpu() for t in outs]


def _agree(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.is_floating_point():
            tol = 2e-2 if a.dtype in (torch.float16, torch.bfloat16) else 1e-5
            if not torch.allclose(a.double(), b.double(), rtol=tol, atol=tol, equal_nan=True):
                return False
        elif not torch.equal(a, b):
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--backends", default=None,
                        help="comma-separated (default: every backend that runs on the device, reference excluded)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU", file=sys.stderr)
        return 2
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    failures = 0
    for name, op, inputs, grad_at in cases():
        available = ops.available_backends(args.device)[op]
        wanted = args.backends.split(",") if args.backends else [b for b in available if b != "reference"]
        if args.device == "cuda" and interpreting:
            wanted = [b for b in wanted if b != "triton"]  # interpreted Triton launches no kernel
        want = _run(op, "cpp" if args.device == "cuda" else "reference", "cpu", inputs, grad_at)
        for backend in wanted:
            if backend not in available:
                continue
            ok = _agree(_run(op, backend, args.device, inputs, grad_at), want)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name} [{backend}]")
    if args.device == "cuda":
        torch.cuda.synchronize()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
