"""Every op on the GPU, every backend side by side: triton, cuda, reference (torchvision too for
nms / batched_nms / box_iou), on the same inputs in one run.

Sizes follow the paper's inference grids (levelness / semantic stride 4): 256x512 (Cityscapes
1024x2048) and 200x336 (COCO-sized 800x1344), with Q in {20, 100} queries after NMS; the mask
loss at Q=100; NMS at N in {1k, 5k, 20k} clustered boxes.  Time: :func:`conftest.run` (CUDA
events, ``extra_info["cuda_ms"]``) and peak memory (``torch.cuda.max_memory_allocated``).
Every parameter needs CUDA and skips without it: Triton on CPU only runs through its interpreter
(``TRITON_INTERPRET=1``), whose timings say nothing about the kernels.  Run with ``make bench``,
``pytest benchmarks/test_bench_gpu.py --benchmark-enable`` or ``make gpu-check``.
"""
import pytest
import torch
import torchvision

from rtpanoptic import ops

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmarks need a GPU (no timings from the interpreter)")
GRIDS = {"256x512": (256, 512), "200x336": (200, 336)}
QUERIES = [20, 100]
BOX_OPS = {"nms": torchvision.ops.nms, "batched_nms": torchvision.ops.batched_nms, "box_iou": torchvision.ops.box_iou}


def _backends(op):
    found = ops.available_backends("cuda")[op] if HAS_CUDA else []
    impls = [b for b in ("triton", "cuda", "reference") if b in found] or ["triton"]
    return impls + (["torchvision"] if op in BOX_OPS else [])


def _call(op, impl, *args):
    """``ops.<op>(*args, backend=impl)``, or torchvision's op for ``impl == "torchvision"``."""
    if impl == "torchvision":
        return BOX_OPS[op](*args)
    return getattr(ops, op)(*args, backend=impl)


def _scene(grid, q, c=19, seed=0):
    """Dense boxes that cluster around q objects, softmax semantics, q query boxes (CUDA)."""
    h, w = grid
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(q, 2, generator=g) * torch.tensor([w, h]) * 4
    sizes = 16 + torch.rand(q, 2, generator=g) * 200
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    owner = torch.randint(0, q, (h, w), generator=g)
    dense = boxes[owner].permute(2, 0, 1) + 2 * torch.randn(4, h, w, generator=g)
    sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
    is_thing = torch.arange(c) >= 11
    classes = torch.randint(11, c, (q,), generator=g)
    scores = torch.rand(q, generator=g)
    return [t.cuda() for t in (dense, sem, boxes, classes, scores, is_thing)]


@pytest.mark.parametrize("labels", ["random-8", "per-object-tight", "one-class-tight"])
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("op,impl", [(op, impl) for op in ("nms", "batched_nms") for impl in _backends(op)])
def test_nms(benchmark, bench_run, make_labelled_boxes, op, impl, n, labels):
    """Random labels over 8 classes and the worst cases of a greedy scan (conftest.LABELS)."""
    if impl == "reference" and n > 5000:
        pytest.skip("the reference copies the N x N overlap matrix to the host and loops over it in Python")
    if op == "nms" and labels == "one-class-tight":
        pytest.skip("nms ignores the labels: per-object-tight has the same boxes")
    boxes, scores, lab = make_labelled_boxes(n, labels, device="cuda")
    args = (boxes, scores)
    benchmark.group = f"nms N={n} ({'tight clusters' if labels.endswith('tight') else 'clusters'})"
    if op == "batched_nms":
        args += (lab,)
        benchmark.group = f"batched_nms N={n} ({labels})"
    keep = bench_run(benchmark, lambda: _call(op, impl, *args, 0.5), "cuda")
    expected = BOX_OPS[op](*args, 0.5)
    if op == "nms":
        assert torch.equal(keep, expected)
    else:  # the same set; the order of equal scores may differ
        assert torch.equal(keep.sort().values, expected.sort().values)


@pytest.mark.parametrize("labels", ["random-19", "per-object-tight", "one-class-tight"])
@pytest.mark.parametrize("top_n", [100, 300])
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("impl", _backends("select_queries") + ["torchvision"])
def test_select_queries(benchmark, bench_run, make_labelled_boxes, impl, n, top_n, labels):
    """select_queries (class NMS 0.5, class-agnostic 0.97, top_n) on random labels and the worst
    cases of a greedy scan (conftest.LABELS); "torchvision": batched_nms + nms + [:top_n]."""
    if impl == "reference" and n > 5000:
        pytest.skip("the reference builds N x N IoU matrices")
    boxes, scores, lab = make_labelled_boxes(n, labels, device="cuda")
    benchmark.group = f"select_queries N={n} ({labels}, top {top_n})"

    def three_steps():
        keep = torchvision.ops.batched_nms(boxes, scores, lab, 0.5)
        return keep[torchvision.ops.nms(boxes[keep], scores[keep], 0.97)][:top_n]

    if impl == "torchvision":
        bench_run(benchmark, three_steps, "cuda")
        return
    keep, count = bench_run(benchmark, lambda: ops.select_queries(boxes, scores, lab, 0.5, 0.97, top_n, padded=True,
                                                                  backend=impl), "cuda")
    assert torch.equal(keep[: int(count)], three_steps())


@pytest.mark.parametrize("impl", _backends("box_iou"))
def test_box_iou(benchmark, bench_run, make_clustered_boxes, impl):
    a, _ = make_clustered_boxes(5000, device="cuda")
    b, _ = make_clustered_boxes(1000, seed=1, device="cuda")
    benchmark.group = "box_iou 5000x1000"
    bench_run(benchmark, lambda: _call("box_iou", impl, a, b), "cuda")


@pytest.mark.parametrize("impl", _backends("decode_boxes"))
def test_decode_boxes(benchmark, bench_run, impl):
    offsets = (torch.rand(1, 4, 128, 256, generator=torch.Generator().manual_seed(0)) * 100).cuda()
    benchmark.group = "decode_boxes [1,4,128,256] stride 8"
    bench_run(benchmark, lambda: ops.decode_boxes(offsets, 8, backend=impl), "cuda")


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("impl", _backends("gather_levelness"))
def test_gather_levelness(benchmark, bench_run, impl, grid):
    h, w = GRIDS[grid]
    g = torch.Generator().manual_seed(0)
    sizes = [(-(-h * 4 // s), -(-w * 4 // s)) for s in (8, 16, 32, 64, 128)]  # ceil: levels of an H*4 x W*4 input
    offsets = [(torch.rand(2, 4, hi, wi, generator=g) * 100).cuda() for hi, wi in sizes]
    levelness = torch.randn(2, 6, h, w, generator=g).cuda()
    benchmark.group = f"gather_levelness B=2 {grid}"
    bench_run(benchmark, lambda: ops.gather_levelness(offsets, levelness, 4, backend=impl), "cuda")


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", QUERIES)
@pytest.mark.parametrize("impl", _backends("iou_attention"))
def test_iou_attention(benchmark, bench_run, impl, q, grid):
    dense, _, boxes, *_ = _scene(GRIDS[grid], q)
    benchmark.group = f"iou_attention Q={q} {grid}"
    bench_run(benchmark, lambda: ops.iou_attention(dense, boxes, backend=impl), "cuda")


def _object_scene(grid, q, c=19, seed=0):
    """:func:`_scene`'s queries laid out as objects of an image: each cell predicts (with noise) the box
    of the last query whose box holds the cell's centre, the other cells a box far from every query.
    Each mask lies in its object's rows (the CUDA fusion's word ranges), where :func:`_scene`'s dense
    boxes, of random owners, spread every mask over the whole grid."""
    dense, sem, boxes, classes, scores, is_thing = _scene(grid, q, c, seed)
    h, w = grid
    g = torch.Generator().manual_seed(seed + 1)
    ys = torch.arange(h, dtype=torch.float32).view(h, 1) * 4 + 2
    xs = torch.arange(w, dtype=torch.float32).view(1, w) * 4 + 2
    cpu = boxes.cpu()
    owned = torch.tensor([-1e4, -1e4, -1e4 + 10, -1e4 + 10]).view(4, 1, 1).repeat(1, h, w)
    for j in range(q):
        inside = (xs >= cpu[j, 0]) & (xs < cpu[j, 2]) & (ys >= cpu[j, 1]) & (ys < cpu[j, 3])
        owned[:, inside] = cpu[j].view(4, 1)
    dense = (owned + 2 * torch.randn(4, h, w, generator=g)).cuda()
    return [dense, sem, boxes, classes, scores, is_thing]


@pytest.mark.parametrize("layout", ["scattered", "objects"])
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", QUERIES)
@pytest.mark.parametrize("impl", _backends("panoptic_from_dense"))
def test_panoptic_from_dense(benchmark, bench_run, impl, q, grid, layout):
    """``scattered``: every mask spans the grid (the fusion's worst case); ``objects``: masks in row bands."""
    make_scene = _scene if layout == "scattered" else _object_scene
    dense, sem, boxes, classes, scores, is_thing = make_scene(GRIDS[grid], q)
    benchmark.group = f"panoptic_from_dense Q={q} {grid} {layout}"
    out = bench_run(benchmark, lambda: ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing,
                                                                backend=impl), "cuda")
    ref = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend="reference")
    assert torch.equal(out.segment_map, ref.segment_map)


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("impl", _backends("mask_loss"))
def test_mask_loss_forward_backward(benchmark, bench_run, impl, grid):
    q = 100
    dense, _, boxes, *_ = _scene(GRIDS[grid], q)
    dense = dense[None].repeat(2, 1, 1, 1).requires_grad_()
    boxes = boxes.requires_grad_()
    masks = torch.rand(q, *GRIDS[grid], device="cuda") > 0.7
    beta = torch.rand(q, device="cuda")
    batch_index = torch.arange(q, device="cuda") % 2

    def step():
        loss = ops.mask_loss(dense, boxes, masks, beta, batch_index, backend=impl)
        return torch.autograd.grad(loss, (dense, boxes))

    benchmark.group = f"mask_loss fwd+bwd Q={q} {grid} B=2"
    bench_run(benchmark, step, "cuda")
