"""The CUDA kernels of every op against the reference, on the GPU, for float32, float16,
bfloat16 and float64 (skipped without a GPU or without the CUDA build of rtpanoptic._C).
float16/bfloat16 are computed in float32 and rounded once, by the kernels and by the reference:
box scores, IoUs and panoptic segments agree bit for bit in every dtype; sums (gradients, the
loss) within tolerances of the dtype."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference

HAS_CUDA = torch.cuda.is_available() and all("cuda" in ops.available_backends("cuda")[op] for op in ops.OPS
                                                 if "cuda" in ops.registry.ROWS[op].backends)
pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA build of rtpanoptic._C")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
TOL = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-5, 1e-5), torch.float16: (2e-2, 2e-2),
       torch.bfloat16: (5e-2, 5e-2)}
NAN, INF = float("nan"), float("inf")


def _up(t):
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _close(a, b, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(_up(a).cpu(), _up(b).cpu().to(_up(a).dtype), rtol=rtol, atol=atol, equal_nan=True)


def _bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _boxes(n, seed, dtype, size=100.0, max_wh=40.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * max_wh
    return torch.cat([xy, xy + wh], 1).to(dtype).cuda()


def _dense(h, w, seed, dtype, size=100.0, max_wh=40.0):
    return _boxes(h * w, seed, dtype, size, max_wh).t().reshape(4, h, w).contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_cuda(dtype):
    a, b = _boxes(300, 0, dtype, size=600, max_wh=500), _boxes(77, 1, dtype, size=600, max_wh=500)  # areas > 65504
    a[0] = torch.tensor([10, 10, 10, 10])
    b[0] = torch.tensor([10, 10, 10, 10])
    a[1, 0] = NAN
    out = ops.box_iou(a, b, backend="cuda")
    assert out.dtype == dtype and out.is_cuda
    _bitwise(out, reference.box_iou(a, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 3000])
@pytest.mark.parametrize("thr", [0.0, 0.5, 1.0])
def test_nms_cuda(dtype, n, thr):
    boxes = _boxes(n, n, dtype, size=400)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n)).to(dtype).cuda()
    if n > 10:
        boxes[3] = boxes[5]  # identical boxes
        boxes[7, 1] = NAN
        scores[8] = scores[9]  # score tie
    assert torch.equal(ops.nms(boxes, scores, thr, backend="cuda").cpu(), reference.nms(boxes, scores, thr).cpu())
    idxs = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(1)).cuda()
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, thr, backend="cuda").cpu(),
                       reference.batched_nms(boxes, scores, idxs, thr).cpu())


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_cuda_and_grad(dtype):
    off = (torch.rand(2, 4, 9, 11, generator=torch.Generator().manual_seed(0)) * 40).to(dtype).cuda()
    off.requires_grad_()
    out = ops.decode_boxes(off, 8, backend="cuda")
    _close(out, reference.decode_boxes(_up(off.detach()), 8), dtype)
    (g,) = torch.autograd.grad(out.sum(), off)
    assert g.dtype == dtype
    assert (g[:, :2] == -1).all() and (g[:, 2:] == 1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
def test_gather_levelness_cuda_and_grad(dtype, ties):
    g = torch.Generator().manual_seed(3)
    shapes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    offsets = [(torch.rand(2, 4, h, w, generator=g) * 64).to(dtype).cuda().requires_grad_() for h, w in shapes]
    lv = torch.randint(0, 2, (2, 6, 16, 24), generator=g).float() if ties else torch.randn(2, 6, 16, 24, generator=g)
    lv = lv.to(dtype).cuda()
    boxes, fg = ops.gather_levelness(offsets, lv, 4, backend="cuda")
    up = [_up(o.detach()).requires_grad_() for o in offsets]
    rboxes, rfg = reference.gather_levelness(up, _up(lv), 4)
    _close(boxes, rboxes, dtype)
    assert torch.equal(fg, rfg)
    w = torch.randn(boxes.shape, generator=g).cuda()
    grads = torch.autograd.grad((_up(boxes) * w.to(_up(boxes).dtype)).sum(), offsets)
    ref_grads = torch.autograd.grad((rboxes * w.to(rboxes.dtype)).sum(), up)
    for a, b in zip(grads, ref_grads):
        _close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q", [1, 20, 256])
def test_iou_attention_cuda_and_grad(dtype, score, q):
    dense, queries = _dense(24, 40, q, dtype, 600, 500), _boxes(q, q + 1, dtype, 600, 500)  # areas > 65504
    dense[:, 0, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # zero union with the query below
    queries[0] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    dense[:, 0, 1] = NAN
    dense.requires_grad_()
    queries.requires_grad_()
    out = ops.iou_attention(dense, queries, score, backend="cuda")
    rd, rq = dense.detach().clone().requires_grad_(), queries.detach().clone().requires_grad_()
    ref = reference.iou_attention(rd, rq, score)
    _bitwise(out, ref)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).cuda()
    w[:, 0, 1] = 0  # no upstream gradient at the NaN pixel: its gradients are NaN all the same
    grads = torch.autograd.grad((_up(out) * w.to(_up(out).dtype)).nan_to_num().sum(), (dense, queries))
    ref_grads = torch.autograd.grad((_up(ref) * w.to(_up(ref).dtype)).nan_to_num().sum(), (rd, rq))
    for a, b in zip(grads, ref_grads):
        assert a.dtype == dtype
        _close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q", [0, 1, 100, 256])
def test_panoptic_cuda(dtype, score, q):
    g = torch.Generator().manual_seed(q)
    h, w, c = 40, 56, 8
    centres = torch.rand(max(q, 1), 2, generator=g) * torch.tensor([w, h]) * 4
    sizes = 8 + torch.rand(max(q, 1), 2, generator=g) * 40
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    dense = boxes[torch.randint(0, max(q, 1), (h, w), generator=g)].permute(2, 0, 1) + torch.randn(4, h, w, generator=g)
    sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
    is_thing = torch.tensor([i >= 3 for i in range(c)]).cuda()
    classes = torch.randint(3, c, (q,), generator=g).cuda()
    scores = ((torch.rand(q, generator=g) * 4).floor() / 4).cuda()  # many score ties
    dense, sem, boxes = dense.to(dtype).cuda(), sem.to(dtype).cuda(), boxes[:q].to(dtype).cuda()
    sigma = 0.25 if score == "iou" else 0.4
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, sigma=sigma, score=score,
                                  stuff_area_limit=4, backend="cuda")
    ref = reference.panoptic_from_dense(dense, sem, boxes, classes, scores.to(dtype), is_thing, sigma, score, 0.0,
                                        0.5, 4)
    for a, b in zip(out, ref):  # float16/bfloat16 too: scores and threshold in float32 on both sides
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q", [1, 100])
def test_mask_loss_cuda_and_grad(dtype, q):
    g = torch.Generator().manual_seed(q)
    b, h, w = 2, 32, 48
    dense = torch.stack([_dense(h, w, q + i, dtype, size=60) for i in range(b)]).requires_grad_()
    queries = _boxes(q, q + 7, dtype, size=60).requires_grad_()
    masks = (torch.rand(q, h, w, generator=g) > 0.7).cuda()
    masks[0] = False if q > 1 else masks[0]  # N_j = 0
    beta = torch.rand(q, generator=g).to(dtype).cuda()
    bi = torch.randint(0, b, (q,), generator=g).cuda()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend="cuda")
    rd, rq = _up(dense.detach()).requires_grad_(), _up(queries.detach()).requires_grad_()
    ref = reference.mask_loss(rd, rq, masks, _up(beta), bi)
    _close(loss, ref, dtype)
    for a, r in zip(torch.autograd.grad(loss, (dense, queries)), torch.autograd.grad(ref, (rd, rq))):
        _close(a, r, dtype)


def test_cuda_gradcheck_float64():
    dense = _dense(3, 4, 0, torch.float64, size=20).requires_grad_()
    queries = _boxes(3, 1, torch.float64, size=20).requires_grad_()
    torch.autograd.gradcheck(lambda d, q: ops.iou_attention(d, q, "tri", backend="cuda"), (dense, queries))
    masks = (torch.rand(3, 3, 4, generator=torch.Generator().manual_seed(0)) > 0.5).cuda()
    beta = torch.rand(3, dtype=torch.float64).cuda()
    bi = torch.zeros(3, dtype=torch.long).cuda()
    torch.autograd.gradcheck(lambda d, q: ops.mask_loss(d[None], q, masks, beta, bi, backend="cuda"),
                             (dense, queries))


def test_cuda_empty_inputs():
    e = torch.zeros(0, 4, device="cuda")
    assert torch.ops.rtpanoptic.nms(e, torch.zeros(0, device="cuda"), 0.5).shape == (0,)
    assert torch.ops.rtpanoptic.box_iou(e, _boxes(3, 0, torch.float32)).shape == (0, 3)
    assert torch.ops.rtpanoptic.iou_attention(torch.zeros(4, 0, 3, device="cuda"), _boxes(2, 0, torch.float32),
                                              "iou").shape == (2, 0, 3)
    loss = torch.ops.rtpanoptic.mask_loss(torch.zeros(1, 4, 0, 3, device="cuda"), _boxes(2, 0, torch.float32),
                                          torch.zeros(2, 0, 3, dtype=torch.bool, device="cuda"),
                                          torch.ones(2, device="cuda"), torch.zeros(2, dtype=torch.long, device="cuda"))
    assert loss.item() == 0.0
