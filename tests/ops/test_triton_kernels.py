"""Triton kernels (rtpanoptic.kernels) against the reference: parity in float32/float16
(float64 where exactness matters), edge cases, gradients, registration.

On this CPU-only machine they run through Triton's interpreter (``TRITON_INTERPRET=1``, as
``make test`` sets); the tests at the end need a GPU (real compiled kernels, bfloat16,
torch.compile) and skip without one.
"""
import importlib.util
import os

import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not HAS_TRITON or not (INTERPRET or HAS_CUDA),
    reason="needs triton, and a GPU or TRITON_INTERPRET=1",
)
# the interpreter runs on CPU tensors; with a GPU (and no interpreter) the kernels run there
DEV = "cpu" if INTERPRET else "cuda"
gpu_only = pytest.mark.skipif(INTERPRET or not HAS_CUDA, reason="needs a GPU (compiled Triton, not the interpreter)")
TRITON = dict(backend="triton")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _boxes(n, seed, size=60.0, max_wh=30.0, dtype=torch.float32):
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh], 1).to(dtype).to(DEV)


def _dense(h, w, seed, dtype=torch.float32, size=60.0, max_wh=30.0):
    return _boxes(h * w, seed, size, max_wh, dtype).t().reshape(4, h, w).contiguous()


# ------------------------------------------------------------------ NaN rules
if HAS_TRITON:
    import triton
    import triton.language as tl

    from rtpanoptic.kernels._box_score import nan_max, nan_min

    @triton.jit
    def _min_max_kernel(a_ptr, b_ptr, lo_ptr, hi_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        a = tl.load(a_ptr + i)
        b = tl.load(b_ptr + i)
        tl.store(lo_ptr + i, nan_min(a, b))
        tl.store(hi_ptr + i, nan_max(a, b))


def test_nan_min_max_propagate_nan_as_torch():
    """box_math.h's rule: the box formulas' min/max/clamp propagate NaN as torch.minimum/maximum
    (Triton's default minimum/maximum return the non-NaN operand)."""
    from rtpanoptic.kernels._common import launch

    a = torch.tensor([1.0, float("nan"), 2.0, float("nan"), -0.0, 3.0, float("inf"), 0.0], device=DEV)
    b = torch.tensor([2.0, 1.0, float("nan"), float("nan"), 0.0, -1.0, 1.0, float("-inf")], device=DEV)
    lo, hi = torch.empty_like(a), torch.empty_like(a)
    launch(_min_max_kernel, (1,), a, b, lo, hi, N=8)
    assert torch.equal(lo.isnan(), torch.minimum(a, b).isnan())
    assert torch.equal(hi.isnan(), torch.maximum(a, b).isnan())
    finite = ~a.isnan() & ~b.isnan()
    assert torch.equal(lo[finite], torch.minimum(a, b)[finite])
    assert torch.equal(hi[finite], torch.maximum(a, b)[finite])


# ------------------------------------------------------------------ registration
TRITON_OPS = [op for op in ops.OPS if "triton" in ops.registry.ROWS[op].backends]


def test_every_op_is_registered_and_selected():
    import rtpanoptic.kernels  # noqa: F401

    for op in TRITON_OPS:
        assert hasattr(torch.ops.rtpanoptic_triton, op), op
        assert "triton" in ops.available_backends(DEV)[op], op


def test_schemas_match_the_cpp_ops():
    import rtpanoptic.kernels  # noqa: F401
    from rtpanoptic import _extension

    if not _extension.load():
        pytest.skip("C++ extension not built: nothing to compare with")
    for op in TRITON_OPS:
        ours = getattr(torch.ops.rtpanoptic_triton, op).default._schema
        theirs = getattr(torch.ops.rtpanoptic, op).default._schema
        assert [(a.name, str(a.type)) for a in ours.arguments] == [(a.name, str(a.type)) for a in theirs.arguments]
        assert [str(r.type) for r in ours.returns] == [str(r.type) for r in theirs.returns]


# -------------------------------------------------------------- dense boxes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_boxes_bitwise(dtype):
    offsets = (torch.rand(2, 4, 5, 9, generator=_gen(0)) * 40).to(dtype).to(DEV)
    assert torch.equal(ops.decode_boxes(offsets, 8, **TRITON), reference.decode_boxes(offsets, 8))


def _levels(seed, dtype, b=2, grid=(16, 20), sizes=((16, 20), (5, 7), (3, 3))):
    g = _gen(seed)
    offsets = [(torch.rand(b, 4, h, w, generator=g, dtype=torch.float64) * 50).to(dtype).to(DEV) for h, w in sizes]
    # integer logits: many ties between levels, and with the background channel
    levelness = torch.randint(0, 3, (b, len(sizes) + 1, *grid), generator=g).to(dtype).to(DEV)
    return offsets, levelness


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seed", [0, 1])
def test_gather_levelness_matches_reference_with_ties(dtype, seed):
    offsets, levelness = _levels(seed, dtype)
    boxes, fg = ops.gather_levelness(offsets, levelness, 4, **TRITON)
    ref_boxes, ref_fg = reference.gather_levelness(offsets, levelness, 4)
    assert torch.equal(fg, ref_fg)
    tol = dict(rtol=2e-3, atol=0.13) if dtype == torch.float16 else {}
    torch.testing.assert_close(boxes, ref_boxes, **tol)


def test_gather_levelness_gradient_matches_reference():
    offsets, levelness = _levels(3, torch.float64, b=1, grid=(6, 8), sizes=((6, 8), (3, 4), (2, 3)))
    offsets = [o.requires_grad_() for o in offsets]
    w = torch.randn(1, 4, 6, 8, generator=_gen(4), dtype=torch.float64).to(DEV)
    got = torch.autograd.grad((ops.gather_levelness(offsets, levelness, 4, **TRITON)[0] * w).sum(), offsets)
    want = torch.autograd.grad((reference.gather_levelness(offsets, levelness, 4)[0] * w).sum(), offsets)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------- box_iou
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the intended 0/0
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_box_iou_matches_torchvision_with_degenerate_boxes(dtype):
    a = _boxes(37, 1, dtype=dtype)
    b = _boxes(45, 2, dtype=dtype)
    a[0] = a[1]  # identical boxes: IoU exactly 1
    a[2, 2:] = a[2, :2]  # zero area
    b[3] = a[2]  # zero area against zero area: 0/0 = NaN, as torchvision
    out = ops.box_iou(a, b, **TRITON)
    assert out.dtype == dtype
    torch.testing.assert_close(out, torchvision.ops.box_iou(a.float(), b.float()).to(dtype), equal_nan=True)
    assert torch.isnan(out[2, 3])


# ------------------------------------------------------------- iou_attention
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q", [1, 19])
def test_iou_attention_matches_reference(dtype, score, q):
    dense = _dense(9, 13, seed=q, dtype=dtype)
    queries = _boxes(q, seed=q + 1, dtype=dtype)
    out = ops.iou_attention(dense, queries, score, **TRITON)
    ref = reference.iou_attention(dense, queries, score)
    assert out.dtype == dtype and out.shape == (q, 9, 13)
    if dtype == torch.float32 and INTERPRET:
        assert torch.equal(out, ref)  # same operations, same rounding (a GPU may contract to FMA)
    elif dtype == torch.float32:
        torch.testing.assert_close(out, ref)
    else:
        torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)


def test_iou_attention_zero_union_is_zero():
    dense = torch.tensor([3.0, 3.0, 3.0, 3.0], device=DEV).view(4, 1, 1).expand(4, 2, 3).contiguous()
    queries = torch.tensor([[3.0, 3.0, 3.0, 3.0], [7.0, 7.0, 7.0, 9.0]], device=DEV)
    assert torch.equal(ops.iou_attention(dense, queries, **TRITON), torch.zeros(2, 2, 3, device=DEV))


@pytest.mark.parametrize("score", ["iou", "tri"])
def test_iou_attention_gradient_on_ties_matches_reference(score):
    # shared edges, identical boxes and touching boxes: min/max ties and clamp at exactly 0,
    # where PyTorch splits the gradient in half / passes it through
    dense = torch.tensor(
        [[0.0, 0.0, 4.0, 4.0], [0.0, 1.0, 4.0, 3.0], [4.0, 0.0, 6.0, 4.0], [2.0, 2.0, 2.0, 5.0],
         [1.0, 0.0, 4.0, 4.0], [-1.0, -1.0, 5.0, 5.0]], dtype=torch.float64, device=DEV,
    ).t().reshape(4, 2, 3).contiguous().requires_grad_()
    queries = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 5.0]], dtype=torch.float64,
                           device=DEV).requires_grad_()
    w = torch.randn(2, 2, 3, generator=_gen(0), dtype=torch.float64).to(DEV)
    got = torch.autograd.grad((ops.iou_attention(dense, queries, score, **TRITON) * w).sum(), (dense, queries))
    want = torch.autograd.grad((reference.iou_attention(dense, queries, score) * w).sum(), (dense, queries))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_iou_attention_double_backward_raises_instead_of_being_wrong():
    dense = _dense(2, 2, 0, torch.float64).requires_grad_()
    queries = _boxes(1, 1, dtype=torch.float64)
    (g,) = torch.autograd.grad(ops.iou_attention(dense, queries, **TRITON).sum(), dense, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd"):
        torch.autograd.grad(g.sum(), dense)


# ----------------------------------------------------------------- mask_loss
def _mask_case(seed, dtype=torch.float64, b=3, h=7, w=9, q=6):
    g = _gen(seed)
    dense = torch.stack([_dense(h, w, seed * 10 + i, torch.float64, size=20, max_wh=12) for i in range(b)])
    queries = _boxes(q, seed + 100, size=20, max_wh=12, dtype=torch.float64)
    masks = (torch.rand(q, h, w, generator=g) > 0.5).to(DEV)
    if q > 1:
        masks[1] = False  # an empty ground truth contributes 0
    beta = torch.rand(q, generator=g, dtype=torch.float64).to(DEV)
    batch_index = torch.tensor([2, 0, 2, 1, 0, 2][:q], device=DEV)  # unsorted images
    return dense.to(dtype), queries.to(dtype), masks, beta.to(dtype), batch_index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mask_loss_matches_reference(dtype):
    args = _mask_case(0, dtype)
    out = ops.mask_loss(*args, **TRITON)
    ref = reference.mask_loss(*args)
    assert out.dtype == dtype
    tol = dict(rtol=5e-3, atol=5e-3) if dtype == torch.float16 else {}
    torch.testing.assert_close(out, ref, **tol)


@pytest.mark.parametrize("q", [1, 6])
def test_mask_loss_gradients_match_reference(q):
    dense, queries, masks, beta, bi = _mask_case(1, q=q)
    dense.requires_grad_()
    queries.requires_grad_()
    got = torch.autograd.grad(ops.mask_loss(dense, queries, masks, beta, bi, **TRITON), (dense, queries))
    want = torch.autograd.grad(reference.mask_loss(dense, queries, masks, beta, bi), (dense, queries))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_mask_loss_float32_gradients():
    dense, queries, masks, beta, bi = _mask_case(2, torch.float32)
    dense.requires_grad_()
    queries.requires_grad_()
    got = torch.autograd.grad(ops.mask_loss(dense, queries, masks, beta, bi, **TRITON) * 3, (dense, queries))
    want = torch.autograd.grad(reference.mask_loss(dense, queries, masks, beta, bi) * 3, (dense, queries))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------- panoptic_from_dense
def _scene(seed, h=13, w=37, c=7, q=15, dtype=torch.float32, score_ties=False):
    """A random scene whose P = 481 pixels is not a multiple of 32 (partial last word)."""
    g = _gen(seed)
    centres = torch.rand(q, 2, generator=g) * torch.tensor([w, h]) * 4
    sizes = 8 + torch.rand(q, 2, generator=g) * 40
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    owner = torch.randint(0, q, (h, w), generator=g)
    dense = boxes[owner].permute(2, 0, 1) + torch.randn(4, h, w, generator=g)
    dense[:, 0, :5] = boxes[0].view(4, 1)  # exact copies of a query box: IoU exactly 1
    sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
    sem[:, 1, :6] = 1.0 / c  # a tie across all classes: argmax is class 0
    is_thing = torch.tensor([False, True, False, True, True, False, True])[:c]
    classes = torch.tensor([1, 3, 4, 6])[torch.randint(0, 4, (q,), generator=g)]
    scores = torch.rand(q, generator=g)
    if score_ties:
        scores = (scores * 3).round() / 3  # few distinct scores: stable order decides
    cast = lambda t: t.to(dtype).to(DEV)
    return cast(dense), cast(sem), cast(boxes), classes.to(DEV), cast(scores), is_thing.to(DEV)


def _assert_identical(out, ref):
    names = ("segment_map", "classes", "queries", "scores", "areas")
    for name, a, b in zip(names, out, ref):
        assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("seed", [0, 1])
def test_panoptic_identical_to_reference(dtype, score, seed):
    dense, sem, boxes, classes, scores, is_thing = _scene(seed, dtype=dtype, score_ties=seed == 1)
    for sigma, score_thr, overlap, limit in [(0.2, 0.0, 0.5, 5), (0.1, 0.3, 0.0, 0), (0.05, 0.0, 1.0, 40)]:
        kw = dict(sigma=sigma, score=score, score_threshold=score_thr, overlap_threshold=overlap,
                  stuff_area_limit=limit)
        out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, **kw, **TRITON)
        ref = reference.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, sigma, score,
                                            score_thr, overlap, limit)
        _assert_identical(out, ref)
        assert len(out.classes) >= 2


def test_panoptic_streamed_scan_matches_register_scan(monkeypatch):
    """Large grids stream the taken-pixel bitmap through global memory: same result."""
    from rtpanoptic.kernels import panoptic_from_dense as kernel

    scene = _scene(5, h=17, w=40, q=12, score_ties=True)
    args = dict(sigma=0.1, overlap_threshold=0.3, stuff_area_limit=4)
    resident = ops.panoptic_from_dense(*scene, **args, **TRITON)
    monkeypatch.setattr(kernel, "RESIDENT_WORDS", 0)
    streamed = ops.panoptic_from_dense(*scene, **args, **TRITON)
    _assert_identical(streamed, resident)
    _assert_identical(streamed, reference.panoptic_from_dense(*scene, 0.1, "iou", 0.0, 0.3, 4))


def test_panoptic_threshold_is_strict_and_exact():
    # IoU exactly 1 and P_sem exactly sigma: loc * P_sem == sigma is not > sigma
    dense = torch.tensor([0.0, 0.0, 8.0, 8.0], device=DEV).view(4, 1, 1).expand(4, 3, 5).contiguous()
    sem = torch.full((2, 3, 5), 0.5, device=DEV)
    sem[1, :, :2] = 0.25  # == sigma: excluded
    sem[0, :, :2] = 0.75
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]], device=DEV)
    args = (dense, sem, box, torch.tensor([1], device=DEV), torch.tensor([0.9], device=DEV),
            torch.tensor([False, True], device=DEV))
    out = ops.panoptic_from_dense(*args, sigma=0.25, **TRITON)
    _assert_identical(out, reference.panoptic_from_dense(*args, 0.25, "iou", 0.0, 0.5, 0))
    assert out.areas.tolist() == [9, 6]  # the thing: 3 columns; stuff (class 0 on ties) the rest


def test_panoptic_no_queries_and_single_query():
    dense, sem, boxes, classes, scores, is_thing = _scene(3, h=5, w=7, q=4)
    for k in (0, 1):
        args = (dense, sem, boxes[:k], classes[:k], scores[:k], is_thing)
        out = ops.panoptic_from_dense(*args, sigma=0.1, **TRITON)
        _assert_identical(out, reference.panoptic_from_dense(*args, 0.1, "iou", 0.0, 0.5, 0))


def test_panoptic_custom_op_checks():
    dense, sem, boxes, classes, scores, is_thing = _scene(4, h=4, w=6, q=3)
    torch.library.opcheck(
        torch.ops.rtpanoptic_triton.panoptic_from_dense.default,
        (dense, sem, boxes, classes, scores, is_thing, 0.2, "iou", 0.0, 0.5, 0),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


# ----------------------------------------------------------------------- nms
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # zero-area pairs: 0/0
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nms_matches_reference_with_ties_and_duplicates(dtype):
    boxes = _boxes(150, 5, size=80, max_wh=40, dtype=dtype)
    boxes[10] = boxes[20]  # duplicates: IoU exactly 1
    boxes[30, 2:] = boxes[30, :2]  # zero area
    scores = (torch.rand(150, generator=_gen(6)) * 4).round().to(dtype).to(DEV)  # many equal scores
    for thr in (0.0, 0.5, 1.0):
        assert torch.equal(ops.nms(boxes, scores, thr, **TRITON), reference.nms(boxes, scores, thr))
    idxs = torch.randint(0, 3, (150,), generator=_gen(7)).to(DEV)
    got = ops.batched_nms(boxes, scores, idxs, 0.4, **TRITON)
    assert torch.equal(got, reference.batched_nms(boxes, scores, idxs, 0.4))


def test_nms_single_box_and_nan():
    one = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=DEV)
    assert ops.nms(one, torch.ones(1, device=DEV), 0.5, **TRITON).tolist() == [0]
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [float("nan"), 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1]], device=DEV)
    scores = torch.tensor([0.9, 0.95, 0.8], device=DEV)
    assert torch.equal(ops.nms(boxes, scores, 0.5, **TRITON), reference.nms(boxes, scores, 0.5))


def test_nms_custom_op_checks():
    boxes = _boxes(40, 8)
    scores = torch.rand(40, generator=_gen(8)).to(DEV)
    torch.library.opcheck(torch.ops.rtpanoptic_triton.nms.default, (boxes, scores, 0.5),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_non_contiguous_inputs():
    dense = _dense(9, 7, 0).transpose(1, 2)  # [4, 7, 9], strided
    queries = _boxes(10, 1)[::2]
    assert not dense.is_contiguous() and not queries.is_contiguous()
    assert torch.equal(ops.iou_attention(dense, queries, **TRITON), reference.iou_attention(dense, queries, "iou"))
    offsets = (torch.rand(2, 7, 4, 5, generator=_gen(1)) * 9).to(DEV).permute(0, 2, 1, 3)[:, :, :5]
    assert torch.equal(ops.decode_boxes(offsets, 4, **TRITON), reference.decode_boxes(offsets, 4))
    dense, sem, boxes, classes, scores, is_thing = _scene(2, h=8, w=11, q=6)
    args = (dense.transpose(1, 2), sem.transpose(1, 2), boxes.flip(0), classes.flip(0), scores.flip(0), is_thing)
    _assert_identical(ops.panoptic_from_dense(*args, sigma=0.1, **TRITON),
                      reference.panoptic_from_dense(*args, 0.1, "iou", 0.0, 0.5, 0))
    masks = (torch.rand(6, 11, 8, generator=_gen(3)) > 0.5).to(DEV).transpose(1, 2)
    d = dense[None].expand(2, -1, -1, -1)
    bi = torch.tensor([0, 1, 0, 1, 1, 0], device=DEV)
    beta = torch.ones(6, device=DEV)
    got = ops.mask_loss(d, boxes, masks, beta, bi, **TRITON)
    torch.testing.assert_close(got, reference.mask_loss(d, boxes, masks, beta, bi))


def test_data_dependent_ops_trace_under_torch_compile():
    """nms and panoptic_from_dense are custom ops with registered fakes (dynamic output sizes):
    they trace with fullgraph=True even where the Triton kernels themselves run interpreted."""
    import rtpanoptic.kernels  # noqa: F401  (registers torch.ops.rtpanoptic_triton)

    torch._dynamo.reset()

    def select(boxes, scores):
        return boxes[torch.ops.rtpanoptic_triton.nms(boxes, scores, 0.5)]

    def segments(dense, sem, boxes, classes, scores, is_thing):
        out = torch.ops.rtpanoptic_triton.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing,
                                                              0.2, "iou", 0.0, 0.5, 0)
        return out[0], out[4].sum()

    boxes = _boxes(60, 9)
    scores = torch.rand(60, generator=_gen(9)).to(DEV)
    compiled = torch.compile(select, fullgraph=True, backend="eager")
    assert torch.equal(compiled(boxes, scores), boxes[reference.nms(boxes, scores, 0.5)])
    scene = _scene(9, h=6, w=8, q=5)
    seg, area = torch.compile(segments, fullgraph=True, backend="eager")(*scene)
    ref = reference.panoptic_from_dense(*scene, 0.2, "iou", 0.0, 0.5, 0)
    assert torch.equal(seg, ref[0]) and area.item() == ref[4].sum().item()


# ------------------------------------------------------------ GPU-only checks
@gpu_only
def test_gpu_opcheck_triton_ops():
    dense = _dense(8, 12, 0)
    queries = _boxes(5, 1)
    torch.library.opcheck(torch.ops.rtpanoptic_triton.iou_attention.default, (dense, queries, "iou"))
    torch.library.opcheck(torch.ops.rtpanoptic_triton.decode_boxes.default, (torch.rand(2, 4, 5, 6, device="cuda"), 8))
    d, q, m, beta, bi = _mask_case(0, torch.float32)
    torch.library.opcheck(torch.ops.rtpanoptic_triton.mask_loss.default, (d, q, m, beta, bi))


@gpu_only
def test_gpu_bfloat16_close_to_float32_reference():
    dense = _dense(32, 48, 0, torch.bfloat16)
    queries = _boxes(20, 1, dtype=torch.bfloat16)
    out = ops.iou_attention(dense, queries, **TRITON)
    ref = reference.iou_attention(dense.float(), queries.float(), "iou")
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.03)
    offsets = torch.rand(2, 4, 16, 16, device="cuda", dtype=torch.bfloat16) * 40
    torch.testing.assert_close(ops.decode_boxes(offsets, 8, **TRITON), reference.decode_boxes(offsets, 8))
    args = _mask_case(3, torch.bfloat16)
    torch.testing.assert_close(ops.mask_loss(*args, **TRITON).float(),
                               reference.mask_loss(*[a.float() if a.is_floating_point() else a for a in args]),
                               rtol=0.05, atol=0.02)


@gpu_only
def test_gpu_large_panoptic_and_nms_identical():
    dense, sem, boxes, classes, scores, is_thing = _scene(0, h=200, w=336, q=100)
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, **TRITON)
    _assert_identical(out, reference.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing,
                                                         0.3, "iou", 0.0, 0.5, 0))
    b = _boxes(3000, 2, size=1000, max_wh=200)
    s = torch.rand(3000, device="cuda")
    assert torch.equal(ops.nms(b, s, 0.5, **TRITON), torchvision.ops.nms(b, s, 0.5))


@gpu_only
def test_gpu_torch_compile_fullgraph():
    torch._dynamo.reset()

    def head(offsets, queries, masks, beta, bi):
        boxes = ops.decode_boxes(offsets, 8, backend="triton")
        att = ops.iou_attention(boxes[0], queries, backend="triton")
        return att.sum() + ops.mask_loss(boxes, queries, masks, beta, bi, backend="triton")

    offsets = (torch.rand(1, 4, 16, 24, device="cuda") * 30).requires_grad_()
    queries = _boxes(7, 3, size=150, max_wh=60)
    masks = torch.rand(7, 16, 24, device="cuda") > 0.5
    beta = torch.rand(7, device="cuda")
    bi = torch.zeros(7, dtype=torch.long, device="cuda")
    compiled = torch.compile(head, fullgraph=True)
    out = compiled(offsets, queries, masks, beta, bi)
    ref = head(offsets, queries, masks, beta, bi)
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad(out, offsets)
    (g2,) = torch.autograd.grad(ref, offsets)
    torch.testing.assert_close(g1, g2)


# ------------------------------------- GPU block sizes through the interpreter
@pytest.mark.skipif(not INTERPRET, reason="checks the GPU block sizes under the interpreter")
def test_gpu_block_sizes_multi_program(monkeypatch):
    """Under the interpreter every op normally runs as one big program; here the GPU block
    sizes are forced, so every launch has several programs (tiles, partial sums, tails)."""
    from rtpanoptic.kernels import _common

    monkeypatch.setattr(_common, "GPU_BLOCKS_IN_INTERPRETER", True)
    dense = _dense(13, 50, 0)  # 650 pixels: 3 blocks of 256, 21 words
    queries = _boxes(20, 1)  # 2 query tiles of 16
    got = ops.iou_attention(dense, queries, "tri", **TRITON)
    torch.testing.assert_close(got, reference.iou_attention(dense, queries, "tri"))
    a, b = _boxes(40, 2), _boxes(70, 3)
    torch.testing.assert_close(ops.box_iou(a, b, **TRITON), reference.box_iou(a, b))
    offsets = torch.rand(2, 4, 13, 50, generator=_gen(1)).to(DEV) * 30
    assert torch.equal(ops.decode_boxes(offsets, 8, **TRITON), reference.decode_boxes(offsets, 8))
    lv_offsets, levelness = _levels(2, torch.float32, grid=(20, 30), sizes=((20, 30), (10, 15), (5, 8)))
    got = ops.gather_levelness(lv_offsets, levelness, 4, **TRITON)
    want = reference.gather_levelness(lv_offsets, levelness, 4)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])

    d, q, m, beta, bi = _mask_case(5, b=3, h=20, w=30, q=6)  # 600 pixels: 3 programs per image
    d.requires_grad_()
    q.requires_grad_()
    loss = ops.mask_loss(d, q, m, beta, bi, **TRITON)
    ref = reference.mask_loss(d, q, m, beta, bi)
    torch.testing.assert_close(loss, ref)
    for x, y in zip(torch.autograd.grad(loss, (d, q)), torch.autograd.grad(ref, (d, q))):
        torch.testing.assert_close(x, y)
    w = torch.randn(20, 13, 50, generator=_gen(2), dtype=torch.float64).to(DEV)
    d64, q64 = dense.double().requires_grad_(), queries.double().requires_grad_()
    got = torch.autograd.grad((ops.iou_attention(d64, q64, **TRITON) * w).sum(), (d64, q64))
    want = torch.autograd.grad((reference.iou_attention(d64, q64, "iou") * w).sum(), (d64, q64))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)

    scene = _scene(6, h=13, w=100, q=20)  # 41 words: 2 programs of 32 words; 3 query groups of 8
    out = ops.panoptic_from_dense(*scene, sigma=0.1, stuff_area_limit=3, **TRITON)
    _assert_identical(out, reference.panoptic_from_dense(*scene, 0.1, "iou", 0.0, 0.5, 3))
    boxes = _boxes(150, 7, size=80, max_wh=40)
    scores = torch.rand(150, generator=_gen(7)).to(DEV)
    assert torch.equal(ops.nms(boxes, scores, 0.5, **TRITON), reference.nms(boxes, scores, 0.5))
