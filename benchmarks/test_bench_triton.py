"""Triton backend side by side with the reference (and the CUDA backend where built), on a GPU.

Sizes follow the paper's inference grids (levelness / semantic stride 4): 256x512 (Cityscapes
1024x2048) and 200x336 (COCO-sized 800x1344), with Q in {20, 100} queries after NMS; the mask
loss at Q=100.  Every parameter needs CUDA and skips without it: Triton on CPU only runs
through its interpreter (``TRITON_INTERPRET=1``), whose timings say nothing about the kernels.
Run with ``make bench`` (or ``pytest benchmarks/test_bench_triton.py --benchmark-enable``).
"""
import pytest
import torch
import torchvision

from rtpanoptic import ops

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="Triton benchmarks need a GPU (no timings from the interpreter)")
GRIDS = {"256x512": (256, 512), "200x336": (200, 336)}
QUERIES = [20, 100]


def _backends(op):
    found = ops.available_backends("cuda")[op] if HAS_CUDA else []
    return [b for b in ("triton", "cuda", "reference") if b in found] or ["triton"]


def _synced(fn):
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


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


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", QUERIES)
@pytest.mark.parametrize("backend", _backends("iou_attention"))
def test_iou_attention(benchmark, backend, q, grid):
    dense, _, boxes, *_ = _scene(GRIDS[grid], q)
    benchmark.group = f"iou_attention Q={q} {grid}"
    benchmark(_synced(ops.iou_attention), dense, boxes, backend=backend)


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", QUERIES)
@pytest.mark.parametrize("backend", _backends("panoptic_from_dense"))
def test_panoptic_from_dense(benchmark, backend, q, grid):
    dense, sem, boxes, classes, scores, is_thing = _scene(GRIDS[grid], q)
    benchmark.group = f"panoptic_from_dense Q={q} {grid}"
    out = benchmark(_synced(ops.panoptic_from_dense), dense, sem, boxes, classes, scores, is_thing, backend=backend)
    ref = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend="reference")
    assert torch.equal(out.segment_map, ref.segment_map)


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("backend", _backends("mask_loss"))
def test_mask_loss_forward_backward(benchmark, backend, grid):
    q = 100
    dense, _, boxes, *_ = _scene(GRIDS[grid], q)
    dense = dense[None].repeat(2, 1, 1, 1).requires_grad_()
    boxes = boxes.requires_grad_()
    masks = torch.rand(q, *GRIDS[grid], device="cuda") > 0.7
    beta = torch.rand(q, device="cuda")
    batch_index = torch.arange(q, device="cuda") % 2

    def step():
        loss = ops.mask_loss(dense, boxes, masks, beta, batch_index, backend=backend)
        torch.autograd.grad(loss, (dense, boxes))

    benchmark.group = f"mask_loss fwd+bwd Q={q} {grid} B=2"
    benchmark(_synced(step))


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("backend", _backends("gather_levelness"))
def test_gather_levelness(benchmark, backend, grid):
    h, w = GRIDS[grid]
    g = torch.Generator().manual_seed(0)
    sizes = [(-(-h * 4 // s), -(-w * 4 // s)) for s in (8, 16, 32, 64, 128)]  # ceil: levels of an H*4 x W*4 input
    offsets = [(torch.rand(2, 4, hi, wi, generator=g) * 100).cuda() for hi, wi in sizes]
    levelness = torch.randn(2, 6, h, w, generator=g).cuda()
    benchmark.group = f"gather_levelness B=2 {grid}"
    benchmark(_synced(ops.gather_levelness), offsets, levelness, 4, backend=backend)


@pytest.mark.parametrize("n", [1000, 5000])
@pytest.mark.parametrize("impl", _backends("nms") + ["torchvision"])
def test_nms(benchmark, make_clustered_boxes, impl, n):
    boxes, scores = make_clustered_boxes(n, device="cuda")
    benchmark.group = f"nms cuda N={n}"
    if impl == "torchvision":
        keep = benchmark(_synced(torchvision.ops.nms), boxes, scores, 0.5)
    else:
        keep = benchmark(_synced(ops.nms), boxes, scores, 0.5, backend=impl)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
