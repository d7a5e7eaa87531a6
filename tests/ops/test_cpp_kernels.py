"""The C++ (CPU) kernels of every op against the reference: random parity over seeds, sizes
and dtypes, degenerate / outside / NaN / inf boxes, exact ties, Q=1 and Q=256, gradients
(gradcheck in float64 and comparison with the reference's autograd), argument checks,
``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``."""
import math

import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import reference

BUILT = ops.available_backends("cpu")
pytestmark = pytest.mark.skipif(
    not all("cpp" in BUILT[op] for op in ops.OPS), reason="the C++ extension (all cpp kernels) is not built"
)
C = torch.ops.rtpanoptic
NAN, INF = float("nan"), float("inf")


def _boxes(n, seed, dtype=torch.float64, size=100.0, max_wh=40.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh], 1).to(dtype)


def _dense(h, w, seed, dtype=torch.float64, size=100.0):
    return _boxes(h * w, seed, dtype, size).t().reshape(4, h, w).contiguous()


def _special_boxes(dtype=torch.float64):
    """Zero-area, inverted, outside-the-image, identical, NaN and inf boxes."""
    return torch.tensor(
        [
            [10, 10, 10, 10],  # point
            [10, 10, 30, 10],  # zero height
            [10, 10, 30, 30],
            [10, 10, 30, 30],  # identical to the previous one
            [-50, -40, -10, -5],  # outside (negative)
            [5000, 5000, 5100, 5060],  # far outside
            [30, 30, 10, 10],  # inverted
            [NAN, 0, 10, 10],
            [-INF, -INF, INF, INF],
            [0, 0, INF, 20],
        ],
        dtype=dtype,
    )


def _assert_close(a, b, dtype=torch.float64):
    tol = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-5, 1e-5), torch.float16: (2e-2, 2e-2),
           torch.bfloat16: (5e-2, 5e-2)}[dtype]
    torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1], equal_nan=True)


# --------------------------------------------------------------------------- box_iou
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,n,m", [(0, 1, 1), (1, 17, 5), (2, 300, 70)])
def test_box_iou_random(dtype, seed, n, m):
    a, b = _boxes(n, seed, dtype), _boxes(m, seed + 100, dtype)
    out = ops.box_iou(a, b, backend="cpp")
    _assert_close(out, reference.box_iou(a, b), dtype)
    _assert_close(out, torchvision.ops.box_iou(a, b), dtype)


def _bitwise(a, b):
    assert a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_box_iou_special_boxes(dtype):
    """Special boxes, and boxes whose areas exceed float16's 65504 (native half arithmetic would
    give inf / NaN): computed in float32 (float64) and rounded once, exactly."""
    s = _special_boxes(torch.float64).to(dtype)
    out = ops.box_iou(s, s, backend="cpp")
    assert out.dtype == dtype
    _bitwise(out, reference.box_iou(s.to(torch.float64 if dtype == torch.float64 else torch.float32),
                                    s.to(torch.float64 if dtype == torch.float64 else torch.float32)).to(dtype))
    big = torch.tensor([[0.0, 0.0, 300.0, 400.0], [100.0, 0.0, 500.0, 400.0]]).to(dtype)  # areas 120000, 160000
    assert ops.box_iou(big, big, backend="cpp")[0, 1].item() == pytest.approx(80000 / 200000, rel=2**-7)


# ------------------------------------------------------------------------------- nms
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,n", [(0, 1), (1, 50), (2, 700)])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7, 1.0])
def test_nms_random(dtype, seed, n, thr):
    boxes = _boxes(n, seed, dtype, size=200)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    keep = ops.nms(boxes, scores, thr, backend="cpp")
    assert torch.equal(keep, reference.nms(boxes, scores, thr))
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, thr))
    idxs = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
    bkeep = ops.batched_nms(boxes, scores, idxs, thr, backend="cpp")
    assert torch.equal(bkeep, reference.batched_nms(boxes, scores, idxs, thr))


def test_nms_exact_iou_tie_at_threshold():
    # IoU([0,0,2,1], [1,0,3,1]) = 1/3 exactly in binary? use 0.5: [0,0,4,1] vs [0,0,2,1] -> 2/4
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0], [2.0, 0.0, 4.0, 1.0]])
    scores = torch.tensor([0.9, 0.8, 0.8])
    for thr, expected in [(0.5, [0, 1, 2]), (0.4999, [0])]:
        assert ops.nms(boxes, scores, thr, backend="cpp").tolist() == expected
        assert reference.nms(boxes, scores, thr).tolist() == expected


def test_nms_identical_boxes_and_score_ties():
    boxes = torch.tensor([[1.0, 2.0, 11.0, 12.0]]).repeat(6, 1)
    scores = torch.tensor([0.5, 0.7, 0.7, 0.1, 0.7, 0.5])
    assert ops.nms(boxes, scores, 0.5, backend="cpp").tolist() == [1]  # first of the tied best
    assert ops.nms(boxes, scores, 1.0, backend="cpp").tolist() == [1, 2, 4, 0, 5, 3]  # stable order
    idxs = torch.tensor([0, 1, 0, 1, 0, 1])
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend="cpp").tolist() == [1, 2]


def test_nms_nan_and_inf_boxes():
    boxes = _special_boxes(torch.float32)
    scores = torch.linspace(1, 0.1, len(boxes))
    for thr in (0.0, 0.5):
        keep = ops.nms(boxes, scores, thr, backend="cpp")
        assert torch.equal(keep, reference.nms(boxes, scores, thr))
        assert 7 in keep.tolist()  # the NaN box is never suppressed


# ----------------------------------------------------------------------- decode_boxes
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 5, 8, 128])
def test_decode_random_and_nonfinite(dtype, stride):
    g = torch.Generator().manual_seed(stride)
    off = torch.rand(2, 4, 6, 9, generator=g, dtype=torch.float64) * 50
    off[0, 1, 2, 3], off[1, 2, 0, 0], off[1, 3, 5, 8] = NAN, INF, -INF
    off = off.to(dtype)
    _assert_close(ops.decode_boxes(off, stride, backend="cpp"), reference.decode_boxes(off.double(), stride).to(dtype),
                  dtype)


def test_decode_gradcheck():
    off = torch.rand(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda o: ops.decode_boxes(o, 8, backend="cpp"), (off,))


# ------------------------------------------------------------------- gather_levelness
def _levels(seed, shapes, b=2, dtype=torch.float64, ties=False):
    g = torch.Generator().manual_seed(seed)
    offsets = [torch.rand(b, 4, h, w, generator=g, dtype=torch.float64).mul(64).to(dtype) for h, w in shapes]
    h, w = shapes[0][0] * 2, shapes[0][1] * 2
    if ties:  # few distinct values: many exact ties between levels and with the background
        levelness = torch.randint(0, 2, (b, len(shapes) + 1, h, w), generator=g).to(dtype)
    else:
        levelness = torch.randn(b, len(shapes) + 1, h, w, generator=g, dtype=torch.float64).to(dtype)
    return offsets, levelness


SHAPES = [[(8, 12)], [(8, 12), (4, 6), (2, 3)], [(7, 9), (4, 5), (2, 3), (1, 2), (1, 1)], [(3, 3), (5, 7)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("out_stride", [4, 3])
def test_gather_random(dtype, shapes, ties, out_stride):
    offsets, levelness = _levels(len(shapes), shapes, dtype=dtype, ties=ties)
    boxes, fg = ops.gather_levelness(offsets, levelness, out_stride, backend="cpp")
    rboxes, rfg = reference.gather_levelness(offsets, levelness, out_stride)
    _assert_close(boxes, rboxes, dtype)
    assert torch.equal(fg, rfg)


def test_gather_nan_logits_follow_torch_argmax():
    offsets, levelness = _levels(3, SHAPES[1])
    levelness[0, 2, 0, 0] = NAN  # a NaN level logit wins the argmax (and beats the background)
    levelness[0, 0, 1, 1] = NAN  # a NaN background logit: background
    levelness[1, :, 2, 2] = NAN
    boxes, fg = ops.gather_levelness(offsets, levelness, 4, backend="cpp")
    rboxes, rfg = reference.gather_levelness(offsets, levelness, 4)
    _assert_close(boxes, rboxes)
    assert torch.equal(fg, rfg)


@pytest.mark.parametrize("ties", [False, True])
def test_gather_grad_matches_reference_and_gradcheck(ties):
    offsets, levelness = _levels(5, SHAPES[3], ties=ties)
    offsets = [o.requires_grad_() for o in offsets]
    boxes, _ = ops.gather_levelness(offsets, levelness, 4, backend="cpp")
    w = torch.randn(boxes.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad((boxes * w).sum(), offsets)
    ref_grads = torch.autograd.grad((reference.gather_levelness(offsets, levelness, 4)[0] * w).sum(), offsets)
    for a, b in zip(grads, ref_grads):
        _assert_close(a, b)
    torch.autograd.gradcheck(lambda *o: ops.gather_levelness(list(o), levelness, 4, backend="cpp")[0], tuple(offsets))


def test_gather_levelness_gets_no_gradient():
    offsets, levelness = _levels(6, SHAPES[0])
    levelness.requires_grad_()
    boxes, _ = ops.gather_levelness(offsets, levelness, 4, backend="cpp")
    assert torch.autograd.grad(boxes.sum(), levelness, allow_unused=True)[0] is None


# ---------------------------------------------------------------------- iou_attention
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q,h,w", [(1, 1, 1), (1, 7, 5), (13, 16, 33), (256, 5, 6)])
def test_attention_random(dtype, score, q, h, w):
    dense, queries = _dense(h, w, q, dtype), _boxes(q, q + 1, dtype)
    _assert_close(ops.iou_attention(dense, queries, score, backend="cpp"),
                  reference.iou_attention(dense, queries, score), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_attention_half_upcasts(dtype, score):
    """Boxes of 300-800 px (areas far above float16's 65504): computed in float32 and rounded
    once, bit for bit; native half arithmetic would overflow to inf/NaN."""
    dense = _dense(6, 7, 0, torch.float32, size=500) + torch.tensor([0.0, 0.0, 300.0, 300.0]).view(4, 1, 1)
    queries = _boxes(9, 1, torch.float32, size=500) + torch.tensor([0.0, 0.0, 300.0, 300.0])
    out = ops.iou_attention(dense.to(dtype), queries.to(dtype), score, backend="cpp")
    assert out.dtype == dtype
    ref = reference.iou_attention(dense.to(dtype).float(), queries.to(dtype).float(), score).to(dtype)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    _bitwise(out, ref)


@pytest.mark.parametrize("score", ["iou", "tri"])
def test_attention_special_boxes(score):
    s = _special_boxes()
    dense = s.t().reshape(4, 2, 5)
    _assert_close(ops.iou_attention(dense, s, score, backend="cpp"), reference.iou_attention(dense, s, score))
    # union == 0 (two identical points) gives 0, not NaN
    assert ops.iou_attention(dense, s, "iou", backend="cpp")[0, 0, 0].item() == 0.0


@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("case", ["random", "identical", "touching", "zero_union"])
def test_attention_grad_matches_reference(score, case):
    dense, queries = _dense(3, 4, 7), _boxes(5, 8)
    if case == "identical":  # min/max ties everywhere: autograd splits the gradient
        dense = queries[1].view(4, 1, 1).expand(4, 3, 4).clone()
    elif case == "touching":  # zero-width intersections: clamp passes no gradient at 0
        dense[0] = queries[0, 2]
    elif case == "zero_union":  # where(union != 0): zero gradient
        queries[2] = torch.tensor([5.0, 5.0, 5.0, 5.0], dtype=torch.float64)
        dense[:, 0, 0] = queries[2]
    dense.requires_grad_()
    queries.requires_grad_()
    out = ops.iou_attention(dense, queries, score, backend="cpp")
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((out * w).sum(), (dense, queries))
    ref_grads = torch.autograd.grad((reference.iou_attention(dense, queries, score) * w).sum(), (dense, queries))
    for a, b in zip(grads, ref_grads):
        _assert_close(a, b)
    if case == "zero_union" and score == "iou":
        assert grads[1][2].abs().sum().item() == 0.0


@pytest.mark.parametrize("score", ["iou", "tri"])
def test_attention_gradcheck_q1_and_wide(score):
    for q, h, w in [(1, 2, 3), (4, 3, 5)]:
        dense = _dense(h, w, q, size=20).requires_grad_()
        queries = _boxes(q, q + 3, size=20).requires_grad_()
        torch.autograd.gradcheck(lambda d, qq: ops.iou_attention(d, qq, score, backend="cpp"), (dense, queries))


# ----------------------------------------------------------------- panoptic_from_dense
def _scene(seed, h, w, q, c=6, dtype=torch.float64, score_ties=False):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(q, 1), 2, generator=g, dtype=torch.float64) * torch.tensor([w, h]) * 4
    sizes = 8 + torch.rand(max(q, 1), 2, generator=g, dtype=torch.float64) * 40
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    owner = torch.randint(0, max(q, 1), (h, w), generator=g)
    dense = boxes[owner].permute(2, 0, 1) + torch.randn(4, h, w, generator=g, dtype=torch.float64)
    sem = torch.softmax(torch.randn(c, h, w, generator=g, dtype=torch.float64) * 3, 0)
    is_thing = torch.tensor([i >= 2 for i in range(c)])
    classes = torch.randint(2, c, (q,), generator=g)
    scores = torch.rand(q, generator=g, dtype=torch.float64)
    if score_ties:
        scores = (scores * 3).floor() / 3
    return dense.to(dtype), sem.to(dtype), boxes[:q].to(dtype), classes, scores.to(dtype), is_thing


def _check_panoptic(args, **kw):
    dense, sem, boxes, classes, scores, is_thing = args
    kw = {"sigma": 0.2, "score": "iou", "score_threshold": 0.0, "overlap_threshold": 0.5, "stuff_area_limit": 5, **kw}
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend="cpp", **kw)
    ref = reference.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, *kw.values())
    for a, b in zip(out, ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("seed,h,w,q", [(0, 9, 13, 1), (1, 24, 32, 12), (2, 20, 20, 40), (3, 30, 17, 256)])
def test_panoptic_random(dtype, score, seed, h, w, q):
    out = _check_panoptic(_scene(seed, h, w, q, dtype=dtype), score=score, sigma=0.2 if score == "iou" else 0.4)
    assert len(out.classes) >= 2


@pytest.mark.parametrize("kw", [dict(score_threshold=0.5), dict(overlap_threshold=0.0), dict(overlap_threshold=1.0),
                                dict(stuff_area_limit=0), dict(stuff_area_limit=10**6), dict(sigma=-1.0),
                                dict(sigma=2.0)])
def test_panoptic_parameters(kw):
    _check_panoptic(_scene(4, 16, 20, 10), **kw)


def test_panoptic_score_ties_identical_boxes_and_nonfinite():
    dense, sem, boxes, classes, scores, is_thing = _scene(5, 16, 16, 8, score_ties=True)
    _check_panoptic((dense, sem, boxes, classes, scores, is_thing))
    same = boxes[:1].repeat(8, 1)  # all query boxes identical, equal scores: input order decides
    _check_panoptic((dense, sem, same, classes, torch.full_like(scores, 0.5), is_thing), overlap_threshold=1.0)
    dense = dense.clone()
    dense[:, 0, :5] = NAN
    dense[:, 1, :3] = torch.tensor([-INF, -INF, INF, INF], dtype=dense.dtype).view(4, 1)
    _check_panoptic((dense, sem, boxes, classes, scores, is_thing))
    sem = sem.clone()
    sem[:, 2, 2] = NAN
    scores = scores.clone()
    scores[3] = NAN
    _check_panoptic((dense, sem, boxes, classes, scores, is_thing))


def test_panoptic_empty_grid_and_no_queries():
    dense, sem, boxes, classes, scores, is_thing = _scene(6, 0, 7, 3)
    out = _check_panoptic((dense, sem, boxes, classes, scores, is_thing))
    assert out.segment_map.shape == (0, 7) and len(out.classes) == 0
    dense, sem, boxes, classes, scores, is_thing = _scene(6, 5, 7, 0)
    _check_panoptic((dense, sem, boxes, classes, scores, is_thing))


# --------------------------------------------------------------------------- mask_loss
def _loss_case(seed, b=2, h=6, w=7, q=5, dtype=torch.float64, empty=()):
    g = torch.Generator().manual_seed(seed)
    dense = torch.stack([_dense(h, w, seed * 10 + i, size=20) for i in range(b)]).to(dtype)
    queries = _boxes(q, seed + 50, size=20).to(dtype)
    masks = torch.rand(q, h, w, generator=g) > 0.6
    masks[-1, 0, 0] = True  # at least one non-empty mask, so the reference has a graph
    for j in empty:
        masks[j] = False
    beta = torch.rand(q, generator=g, dtype=torch.float64).to(dtype)
    return dense, queries, masks, beta, torch.randint(0, b, (q,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,b,h,w,q", [(0, 1, 1, 1, 1), (1, 2, 6, 7, 5), (2, 3, 17, 9, 30), (3, 1, 4, 4, 100)])
def test_mask_loss_random_with_grads(dtype, seed, b, h, w, q):
    dense, queries, masks, beta, bi = _loss_case(seed, b, h, w, q, dtype, empty=(0,) if q > 1 else ())
    dense.requires_grad_()
    queries.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend="cpp")
    ref = reference.mask_loss(dense, queries, masks, beta, bi)
    _assert_close(loss, ref, dtype)
    for a, r in zip(torch.autograd.grad(loss, (dense, queries)), torch.autograd.grad(ref, (dense, queries))):
        _assert_close(a, r, dtype)


def test_mask_loss_all_empty_and_degenerate():
    dense, queries, masks, beta, bi = _loss_case(4, empty=range(5))
    dense.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend="cpp")
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, dense)[0].abs().sum().item() == 0.0
    # zero-union pixels (point boxes equal to a point query) give IoU 0 and no gradient
    dense, queries, masks, beta, bi = _loss_case(5, b=1, q=2)
    queries[0] = torch.tensor([3.0, 3.0, 3.0, 3.0], dtype=torch.float64)
    dense[0, :, 0, :] = 3.0
    dense.requires_grad_()
    queries.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend="cpp")
    ref = reference.mask_loss(dense, queries, masks, beta, bi)
    _assert_close(loss, ref)
    for a, r in zip(torch.autograd.grad(loss, (dense, queries)), torch.autograd.grad(ref, (dense, queries))):
        _assert_close(a, r)


def test_mask_loss_nan_box_gives_nan():
    dense, queries, masks, beta, bi = _loss_case(6, b=1)
    dense[0, 0, 0, 0] = NAN
    assert math.isnan(ops.mask_loss(dense, queries, masks, beta, bi, backend="cpp").item())
    assert math.isnan(reference.mask_loss(dense, queries, masks, beta, bi).item())


def test_mask_loss_gradcheck():
    dense, queries, masks, beta, bi = _loss_case(7, b=2, h=3, w=4, q=4, empty=(1,))
    dense.requires_grad_()
    queries.requires_grad_()
    torch.autograd.gradcheck(lambda d, q: ops.mask_loss(d, q, masks, beta, bi, backend="cpp"), (dense, queries))


# ------------------------------------------------------ no silently missing gradient
def test_box_iou_and_panoptic_backward_raise_not_silently_zero():
    a = _boxes(3, 0).requires_grad_()
    with pytest.raises(RuntimeError, match="box_iou: the cpp/cuda kernels have no backward"):
        ops.box_iou(a, a.detach(), backend="cpp").sum().backward()
    # the default backend stays differentiable (it uses the reference when grads are needed)
    (g,) = torch.autograd.grad(ops.box_iou(a, _boxes(4, 1)).sum(), a)
    (r,) = torch.autograd.grad(reference.box_iou(a, _boxes(4, 1)).sum(), a)
    _assert_close(g, r)
    dense, sem, boxes, classes, scores, is_thing = _scene(0, 6, 7, 3)
    out = ops.panoptic_from_dense(dense.requires_grad_(), sem, boxes, classes, scores, is_thing, backend="cpp")
    if out.scores.requires_grad:
        with pytest.raises(RuntimeError, match="panoptic_from_dense: the cpp/cuda kernels have no backward"):
            out.scores.sum().backward()


# ---------------------------------------------------------------- argument checks (C++)
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: C.box_iou(torch.zeros(2, 3), torch.zeros(2, 4)), r"box_iou: boxes1 must have shape \[\*, 4\], got \[2, 3\]"),
        (lambda: C.box_iou(torch.zeros(2, 4), torch.zeros(2, 4).double()), "box_iou: tensors must share one dtype, got boxes1: torch.float32, boxes2: torch.float64"),
        (lambda: C.decode_boxes(torch.zeros(1, 3, 2, 2), 8), r"decode_boxes: offsets must have shape \[B, 4, h, w\]"),
        (lambda: C.decode_boxes(torch.zeros(1, 4, 2, 2), 0), "decode_boxes: stride must be a positive int"),
        (lambda: C.decode_boxes(torch.zeros(1, 4, 2, 2, dtype=torch.int32), 8), "decode_boxes: offsets must be a floating-point tensor, got torch.int32"),
        (lambda: C.gather_levelness([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 3, 4, 4), 4), "offsets must hold 2"),
        (lambda: C.gather_levelness([torch.zeros(2, 4, 2, 2)], torch.zeros(1, 2, 4, 4), 4), r"offsets\[0\] must have"),
        (lambda: C.iou_attention(torch.zeros(3, 2, 2), torch.zeros(1, 4), "iou"), r"dense_boxes must have shape \[4"),
        (lambda: C.iou_attention(torch.zeros(4, 2, 2), torch.zeros(1, 4), "giou"), "score must be"),
        (lambda: C._iou_attention_backward(torch.zeros(2, 2, 2), torch.zeros(4, 2, 2), torch.zeros(1, 4), "iou"),
         r"grad must have shape \[Q=1"),
        (lambda: C.mask_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4), torch.zeros(1, 2, 3, dtype=torch.bool),
                             torch.ones(1), torch.zeros(1, dtype=torch.long)), r"gt_masks must have shape \[Q=1, H=2"),
        (lambda: C.mask_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4), torch.zeros(1, 2, 2, dtype=torch.bool),
                             torch.ones(1), torch.ones(1, dtype=torch.long)), r"batch_index must lie in \[0, 1\)"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([5]), torch.ones(1), torch.ones(3, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0), r"query_classes must lie in \[0, 3\)"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([1]), torch.ones(1), torch.ones(2, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0), r"is_thing must be a bool tensor of shape \[C=3\]"),
    ],
)
def test_cpp_argument_checks(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


# ------------------------------------------------------------- opcheck / torch.compile
def _op_samples():
    dense, queries = _dense(3, 4, 0), _boxes(3, 1)
    offsets, levelness = _levels(0, SHAPES[1], dtype=torch.float64)
    ldense, lq, masks, beta, bi = _loss_case(0)
    pdense, sem, pboxes, classes, scores, is_thing = _scene(0, 8, 9, 4)
    boxes = _boxes(30, 3, size=60)
    return {
        "nms": (boxes, torch.rand(30, dtype=torch.float64), 0.5),
        "batched_nms": (boxes, torch.rand(30, dtype=torch.float64), torch.randint(0, 3, (30,)), 0.5),
        "box_iou": (boxes, boxes[:7]),
        "decode_boxes": (offsets[0], 8),
        "gather_levelness": (offsets, levelness, 4),
        "iou_attention": (dense, queries, "tri"),
        "panoptic_from_dense": (pdense, sem, pboxes, classes, scores, is_thing, 0.2, "iou", 0.0, 0.5, 3),
        "mask_loss": (ldense, lq, masks, beta, bi),
        "select_queries": (boxes, torch.rand(30, dtype=torch.float64), torch.randint(0, 3, (30,)), 0.5, 0.3, 8),
        "upsample_argmax": (torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)), [20, 28], [18, 27]),
        "panoptic_from_dense_release": (pdense, sem, pboxes, classes, scores, is_thing, 4, 30, 33, 0.2, "iou", 0.0,
                                        0.5, 3, True),
    }


DATA_DEPENDENT = ("nms", "batched_nms", "panoptic_from_dense", "panoptic_from_dense_release")  # output sizes
DIFFERENTIABLE = {"decode_boxes": [0], "gather_levelness": [0], "iou_attention": [0, 1], "mask_loss": [0, 1]}


@pytest.mark.parametrize("op", ops.OPS)
def test_opcheck(op):
    args = _op_samples()[op]
    if op in DIFFERENTIABLE:
        args = list(args)
        for i in DIFFERENTIABLE[op]:
            args[i] = [t.clone().requires_grad_() for t in args[i]] if isinstance(args[i], list) else \
                args[i].clone().requires_grad_()
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if op not in DATA_DEPENDENT:
        utils += ("test_aot_dispatch_dynamic",)
    torch.library.opcheck(getattr(C, op).default, tuple(args), test_utils=utils)


@pytest.mark.parametrize("op", ops.OPS)
def test_compile_fullgraph(op):
    args = _op_samples()[op]
    fn = getattr(C, op)
    torch._dynamo.reset()
    if op in DATA_DEPENDENT:
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
    try:
        compiled = torch.compile(lambda *a: fn(*a), fullgraph=True, backend="aot_eager")
        out, expected = compiled(*args), fn(*args)
    finally:
        torch._dynamo.config.capture_dynamic_output_shape_ops = False
    for a, b in zip(out if isinstance(out, (tuple, list)) else [out], expected if isinstance(expected, (tuple, list))
                    else [expected]):
        torch.testing.assert_close(a, b, equal_nan=True)


CUDA_BUILT = torch.cuda.is_available() and all("cuda" in ops.available_backends("cuda")[op] for op in ops.OPS
                                                 if "cuda" in ops.registry.ROWS[op].backends)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA_BUILT, reason="needs a GPU and the CUDA kernels"))])
def test_compile_fullgraph_training_step(device):
    """iou_attention + mask_loss forward and backward under torch.compile (inductor), on the
    C++ kernels and, with a GPU, the CUDA ones."""
    dense, queries, masks, beta, bi = (t.to(device) for t in _loss_case(1))

    def step(d, q):
        return C.mask_loss(d, q, masks, beta, bi) + C.iou_attention(d[0], q, "iou").mean()

    d1, q1 = dense.clone().requires_grad_(), queries.clone().requires_grad_()
    d2, q2 = dense.clone().requires_grad_(), queries.clone().requires_grad_()
    torch._dynamo.reset()
    loss = torch.compile(step, fullgraph=True)(d1, q1)
    ref = step(d2, q2)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, (d1, q1)), torch.autograd.grad(ref, (d2, q2))):
        torch.testing.assert_close(a, b)


def test_cpp_kernels_accept_empty_inputs_directly():
    """N = 0, Q = 0 and H*W = 0 straight into the kernels (bypassing the Python wrappers)."""
    e, q3 = torch.zeros(0, 4), _boxes(3, 0, torch.float32)
    assert C.nms(e, torch.zeros(0), 0.5).shape == (0,)
    assert C.batched_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
    assert C.box_iou(e, q3).shape == (0, 3) and C.box_iou(q3, e).shape == (3, 0)
    assert C.decode_boxes(torch.zeros(0, 4, 2, 2), 8).shape == (0, 4, 2, 2)
    boxes, fg = C.gather_levelness([torch.zeros(2, 4, 1, 1)], torch.zeros(2, 2, 0, 3), 4)
    assert boxes.shape == (2, 4, 0, 3) and fg.shape == (2, 0, 3)
    assert C.iou_attention(torch.zeros(4, 0, 5), q3, "iou").shape == (3, 0, 5)
    assert C.iou_attention(torch.zeros(4, 2, 5), e, "tri").shape == (0, 2, 5)
    gd, gq = C._iou_attention_backward(torch.zeros(3, 0, 5), torch.zeros(4, 0, 5), q3, "iou")
    assert gd.shape == (4, 0, 5) and torch.equal(gq, torch.zeros(3, 4))
    seg = C.panoptic_from_dense(torch.zeros(4, 0, 5), torch.zeros(2, 0, 5), q3, torch.zeros(3, dtype=torch.long),
                                torch.ones(3), torch.tensor([False, True]), 0.3, "iou", 0.0, 0.5, 0)
    assert seg[0].shape == (0, 5) and len(seg[1]) == 0
    args = (torch.zeros(1, 4, 0, 5), q3, torch.zeros(3, 0, 5, dtype=torch.bool), torch.ones(3),
            torch.zeros(3, dtype=torch.long))
    assert C.mask_loss(*args).item() == 0.0
    gd, gq = C._mask_loss_backward(torch.ones(()), *args)
    assert gd.shape == (1, 4, 0, 5) and torch.equal(gq, torch.zeros(3, 4))
    assert C.mask_loss(torch.zeros(1, 4, 2, 2), e, torch.zeros(0, 2, 2, dtype=torch.bool), torch.zeros(0),
                       torch.zeros(0, dtype=torch.long)).item() == 0.0
