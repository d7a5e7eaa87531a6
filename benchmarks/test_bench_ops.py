"""Dense ops side by side: rtpanoptic reference / cpp (CPU) / cuda (GPU; skipped without one).

Sizes: iou_attention and panoptic_from_dense at Q in {20, 100} over 256x512 and 200x336 grids
(a 1024x2048 Cityscapes image and an 800x1344 COCO image at stride 4); mask_loss at Q = 100;
decode_boxes / gather_levelness on the 5-level FPN of a 1024x2048 image (stride 4 output).
panoptic_from_dense runs with score "iou" (sigma 0.3) and "tri" (sigma 0.4, the TRI preset's) and
also has a "broadcast" row (the masks as one [Q, H, W] tensor expression plus the stuff argmax),
the baseline of issue 15's goal; benchmarks/ab_cpu_kernels.py compares the cpp
kernels with an earlier revision's."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference

IMPLS = [("reference", "cpu"), ("cpp", "cpu"), ("cuda", "cuda")]
IDS = [f"{impl}-{dev}" for impl, dev in IMPLS]
GRIDS = {"256x512": (256, 512), "200x336": (200, 336)}
N_CLASSES = 19
SIGMAS = {"iou": 0.3, "tri": 0.4}  # panoptic_from_dense: the op's default, and the TRI preset's score and sigma


def _boxes(n, seed, h, w):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g) * torch.tensor([w * 4.0, h * 4.0])
    s = 16 + torch.rand(n, 2, generator=g) * 300
    return torch.cat([c - s / 2, c + s / 2], 1)


def _scene(q, h, w, device):
    """Dense boxes that mostly repeat the query boxes (as a trained model's do), semantic probs."""
    g = torch.Generator().manual_seed(q + h)
    queries = _boxes(q, 0, h, w)
    owner = torch.randint(0, q, (h, w), generator=g)
    dense = queries[owner].permute(2, 0, 1) + 4 * torch.randn(4, h, w, generator=g)
    sem = torch.softmax(torch.randn(N_CLASSES, h, w, generator=g) * 2, 0)
    classes = torch.randint(11, N_CLASSES, (q,), generator=g)
    scores = torch.rand(q, generator=g)
    is_thing = torch.tensor([c >= 11 for c in range(N_CLASSES)])
    return [t.to(device) for t in (dense.contiguous(), sem, queries, classes, scores, is_thing)]


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", [20, 100])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_iou_attention(benchmark, bench_run, need, impl, device, q, grid):
    need(device, impl, ops.available_backends(device)["iou_attention"])
    dense, _, queries, *_ = _scene(q, *GRIDS[grid], device)
    benchmark.group = f"iou_attention Q={q} {grid}"
    bench_run(benchmark, lambda: ops.iou_attention(dense, queries, backend=impl), device)


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", [20])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_iou_attention_fwd_bwd(benchmark, bench_run, need, impl, device, q, grid):
    need(device, impl, ops.available_backends(device)["iou_attention"])
    dense, _, queries, *_ = _scene(q, *GRIDS[grid], device)
    dense.requires_grad_()
    queries.requires_grad_()

    def step():
        return torch.autograd.grad(ops.iou_attention(dense, queries, backend=impl).sum(), (dense, queries))

    benchmark.group = f"iou_attention fwd+bwd Q={q} {grid}"
    bench_run(benchmark, step, device)


@pytest.mark.parametrize("score", list(SIGMAS))
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", [20, 100])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_panoptic_from_dense(benchmark, bench_run, need, impl, device, q, grid, score):
    need(device, impl, ops.available_backends(device)["panoptic_from_dense"])
    dense, sem, queries, classes, scores, is_thing = _scene(q, *GRIDS[grid], device)
    benchmark.group = f"panoptic_from_dense Q={q} {grid}" + ("" if score == "iou" else f" {score}")
    sigma = SIGMAS[score]
    out = bench_run(
        benchmark,
        lambda: ops.panoptic_from_dense(dense, sem, queries, classes, scores, is_thing, sigma=sigma, score=score,
                                        stuff_area_limit=64, backend=impl),
        device,
    )
    ref = reference.panoptic_from_dense(dense, sem, queries, classes, scores, is_thing, sigma, score, 0.0, 0.5, 64)
    assert torch.equal(out.segment_map.cpu(), ref[0].cpu())


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("q", [20, 100])
def test_panoptic_from_dense_broadcast(benchmark, bench_run, q, grid):
    """What the fused op replaces, in plain tensor ops: the [Q, H, W] masks IoU x P_sem > sigma
    and the stuff argmax (no fusion loop), in the same group as the kernels."""
    dense, sem, queries, classes, *_ = _scene(q, *GRIDS[grid], "cpu")
    benchmark.group = f"panoptic_from_dense Q={q} {grid}"

    def broadcast():
        return reference.iou_attention(dense, queries, "iou") * sem[classes] > 0.3, sem.argmax(0)

    bench_run(benchmark, broadcast, "cpu")


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_mask_loss(benchmark, bench_run, need, impl, device, pass_, grid):
    need(device, impl, ops.available_backends(device)["mask_loss"])
    if impl == "reference" and grid == "256x512":
        pytest.skip("the reference loops over queries in Python (~4 s forward, ~25 s forward+backward here); "
                    "it is timed at 200x336")
    q = 100
    dense, _, queries, *_ = _scene(q, *GRIDS[grid], device)
    h, w = GRIDS[grid]
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(q, h, w, generator=g) > 0.9).to(device)
    beta = torch.rand(q, generator=g).to(device)
    dense = dense[None].clone().requires_grad_(pass_ != "fwd")
    queries = queries.clone().requires_grad_(pass_ != "fwd")

    def step():
        loss = ops.mask_loss(dense, queries, masks, beta, backend=impl)
        return torch.autograd.grad(loss, (dense, queries)) if pass_ != "fwd" else loss

    benchmark.group = f"mask_loss {pass_} Q={q} {grid}"
    bench_run(benchmark, step, device)


def _fpn(device, batch=2, image=(1024, 2048)):
    g = torch.Generator().manual_seed(0)
    offsets = [torch.rand(batch, 4, image[0] // s, image[1] // s, generator=g) * s * 4 for s in (8, 16, 32, 64, 128)]
    levelness = torch.randn(batch, 6, image[0] // 4, image[1] // 4, generator=g)
    return [o.to(device) for o in offsets], levelness.to(device)


@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_decode_boxes(benchmark, bench_run, need, impl, device):
    need(device, impl, ops.available_backends(device)["decode_boxes"])
    offsets, _ = _fpn(device)
    benchmark.group = "decode_boxes [2,4,128,256] stride 8"
    bench_run(benchmark, lambda: ops.decode_boxes(offsets[0], 8, backend=impl), device)


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl,device", IMPLS, ids=IDS)
def test_gather_levelness(benchmark, bench_run, need, impl, device, pass_):
    need(device, impl, ops.available_backends(device)["gather_levelness"])
    offsets, levelness = _fpn(device)
    offsets = [o.requires_grad_(pass_ != "fwd") for o in offsets]

    def step():
        boxes, _ = ops.gather_levelness(offsets, levelness, 4, backend=impl)
        return torch.autograd.grad(boxes.sum(), offsets) if pass_ != "fwd" else boxes

    benchmark.group = f"gather_levelness {pass_} B=2 5 levels -> 256x512"
    bench_run(benchmark, step, device)
