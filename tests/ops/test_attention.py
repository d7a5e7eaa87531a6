"""iou_attention: P_loc(x, y, j) = IoU(B(x, y), B_j) (eq. 6), and the TRI score, on every
(backend, device) pair that runs here (``@pytest.mark.backends``, tests/conftest.py): hand-computed
values, bit-for-bit parity with the reference in every dtype (random, hard, special, large and
NaN boxes), gradients at ties and NaN, gradcheck, strided and empty inputs."""
import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference
from rtpanoptic.ops.reference import _upcast

OP = "iou_attention"
F64 = torch.float64
HALF = [torch.float16, torch.bfloat16]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, F64]
NAN = float("nan")
BOX = dict(size=60.0, max_wh=30.0)  # boxes of the small cases: corners in [0, 60)², sides up to 30


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.backends(OP)
@pytest.mark.parametrize("q", [1, 7, 64])
def test_iou_attention_is_box_iou(backend, device, q, make):
    dense = make.dense(6, 9, q, **BOX, device=device)
    queries = make.boxes(q, seed=q, **BOX, device=device)
    out = ops.iou_attention(dense, queries, backend=backend)
    expected = torchvision.ops.box_iou(queries, dense.reshape(4, -1).t()).reshape(q, 6, 9)
    torch.testing.assert_close(out, expected)


@pytest.mark.backends(OP)
def test_iou_attention_degenerate_is_zero_not_nan(backend, device):
    dense = torch.tensor([5.0, 5.0, 5.0, 5.0], device=device).view(4, 1, 1)
    queries = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]], device=device)
    assert ops.iou_attention(dense, queries, backend=backend).flatten().tolist() == [0.0, 0.0]


@pytest.mark.backends(OP)
def test_tri_score_hand_computed(backend, device):
    dense = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=F64, device=device).view(4, 1, 1)
    queries = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=F64, device=device)
    # the released TRI code: (I + 1) / (U + 1) - (C - U) / C, C = enclosing area + 1e-7 (written out here,
    # not read from the code under test).  I=1, U=7, C=9 + 1e-7:
    c = 9 + 1e-7
    expected = 2 / 8 - (c - 7) / c
    out = ops.iou_attention(dense, queries, score="tri", backend=backend)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    # where the epsilon dominates: two identical 1e-4 x 1e-4 boxes, I = U = a = 1e-8 and C = a + 1e-7,
    # so the score is 1 - 1e-7 / (a + 1e-7) = a / (a + 1e-7) = 1/11
    tiny = torch.tensor([0.0, 0.0, 1e-4, 1e-4], dtype=F64, device=device)
    out = ops.iou_attention(tiny.view(4, 1, 1), tiny[None], score="tri", backend=backend)
    a = 1e-4 * 1e-4
    assert out.item() == pytest.approx(a / (a + 1e-7), rel=1e-9) and out.item() == pytest.approx(1 / 11, rel=1e-6)


# d score / d (dense x0, y0, x1, y1, query x0, y0, x1, y1) of dense (0, 0, 2, 2), query (1, 1, 3, 3): I = 1,
# U = 7, enclosing C = 9.  IoU = I / U: dI = (0, 0, 1, 1, -1, -1, 0, 0), dU = (-2, -2, 1, 1, -1, -1, 2, 2)
# (each area's derivative minus dI), d IoU = (dI U - I dU) / U^2.  TRI = (I + 1) / (U + 1) - 1 + U / C with
# dC = (-3, -3, 0, 0, 0, 0, 3, 3): d TRI = (dI (U + 1) - (I + 1) dU) / (U + 1)^2 + (dU C - U dC) / C^2.
HAND_GRADIENTS = {
    "iou": [2 / 49, 2 / 49, 6 / 49, 6 / 49, -6 / 49, -6 / 49, -2 / 49, -2 / 49],
    "tri": [1 / 16 + 1 / 27] * 2 + [6 / 64 + 1 / 9] * 2 + [-6 / 64 - 1 / 9] * 2 + [-1 / 16 - 1 / 27] * 2,
}


@pytest.mark.backends(OP)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_gradient_hand_computed(backend, device, score):
    dense = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=F64, device=device).view(4, 1, 1).requires_grad_()
    queries = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=F64, device=device).requires_grad_()
    gd, gq = torch.autograd.grad(ops.iou_attention(dense, queries, score=score, backend=backend).sum(), (dense, queries))
    got = torch.cat([gd.flatten(), gq.flatten()]).cpu()
    torch.testing.assert_close(got, torch.tensor(HAND_GRADIENTS[score], dtype=F64), rtol=1e-6, atol=0)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_iou_attention_grad_matches_reference(backend, device, score, make):
    dense = make.dense(4, 5, 3, **BOX, dtype=F64, device=device).requires_grad_()
    queries = make.boxes(3, seed=3, **BOX, dtype=F64, device=device).requires_grad_()
    out = ops.iou_attention(dense, queries, score=score, backend=backend)
    w = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(1)).to(device)
    grads = torch.autograd.grad((out * w).sum(), (dense, queries))
    ref = reference.iou_attention(dense, queries, score)
    ref_grads = torch.autograd.grad((ref * w).sum(), (dense, queries))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q,h,w", [(1, 2, 3), (3, 4, 5)])
def test_gradcheck(backend, device, score, q, h, w, make):
    dense = make.dense(h, w, q, size=20.0, dtype=F64, device=device).requires_grad_()
    queries = make.boxes(q, size=20.0, seed=q + 3, dtype=F64, device=device).requires_grad_()
    torch.autograd.gradcheck(lambda d, qq: ops.iou_attention(d, qq, score=score, backend=backend), (dense, queries))


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("case", ["identical", "touching", "zero_union", "shared_edges"])
def test_gradient_at_ties_matches_reference(backend, device, score, case, make, assert_close_in):
    """Where PyTorch's min/max tie (autograd splits the gradient in half) and its clamp sits at
    exactly 0 (no gradient passes), the kernels' backward does what the reference's autograd does."""
    dense, queries = make.dense(3, 4, 7, dtype=F64), make.boxes(5, seed=8, dtype=F64)
    if case == "identical":  # min/max ties everywhere
        dense = queries[1].view(4, 1, 1).expand(4, 3, 4).clone()
    elif case == "touching":  # zero-width intersections
        dense[0] = queries[0, 2]
    elif case == "zero_union":  # where(union != 0): zero gradient
        queries[2] = torch.tensor([5.0, 5.0, 5.0, 5.0], dtype=F64)
        dense[:, 0, 0] = queries[2]
    else:  # shared edges, identical, touching and nested boxes
        dense = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 1.0, 4.0, 3.0], [4.0, 0.0, 6.0, 4.0], [2.0, 2.0, 2.0, 5.0],
                              [1.0, 0.0, 4.0, 4.0], [-1.0, -1.0, 5.0, 5.0]], dtype=F64).t().reshape(4, 2, 3)
        queries = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 5.0]], dtype=F64)
    dense = dense.contiguous().to(device).requires_grad_()
    queries = queries.to(device).requires_grad_()
    out = ops.iou_attention(dense, queries, score, backend=backend)
    w = torch.randn(out.shape, dtype=F64, generator=_gen(2)).to(device)
    grads = torch.autograd.grad((out * w).sum(), (dense, queries))
    ref_grads = torch.autograd.grad((reference.iou_attention(dense, queries, score) * w).sum(), (dense, queries))
    for a, b in zip(grads, ref_grads):
        assert_close_in(a, b)
    if case == "zero_union" and score == "iou":
        assert grads[1][2].abs().sum().item() == 0.0



def test_positive_part_gradient_is_written_out():
    """max(x, 0)'s convention, hand-computed: the gradient passes only where x > 0 — 0 at exactly
    0 (clamp(min=0) gives 1 there on torch 2.11 and 0 on 2.14: the reference must not inherit
    either), 0 at NaN and below; NaN stays NaN, inf stays inf."""
    x = torch.tensor([-1.0, 0.0, -0.0, 0.5, float("nan"), float("inf"), float("-inf")], dtype=F64,
                     requires_grad=True)
    y = reference.positive_part(x)
    assert y[:4].tolist() == [0.0, 0.0, 0.0, 0.5] and y[4].isnan() and y[5].item() == float("inf")
    assert y[6].item() == 0.0
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert g.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_touching_boxes_pass_no_gradient_through_the_intersection():
    """Two boxes touching at x = 4 (intersection width exactly 0): the IoU is 0 and its gradient
    with respect to the shared edge is 0, hand-computed (the width's max(., 0) passes nothing at 0;
    the union's gradient is multiplied by inter = 0)."""
    d = torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=F64).t().reshape(4, 1, 1).requires_grad_()
    q = torch.tensor([[4.0, 0.0, 8.0, 4.0]], dtype=F64, requires_grad=True)
    for fn in (lambda a, b: reference.iou_attention(a, b, "iou"), lambda a, b: ops.iou_attention(a, b, "iou")):
        out = fn(d, q)
        assert out.item() == 0.0
        gd, gq = torch.autograd.grad(out.sum(), (d, q))
        assert gd.abs().sum().item() == 0.0 and gq.abs().sum().item() == 0.0


@pytest.mark.backends(OP, reference=False)
def test_double_backward_raises_instead_of_being_wrong(backend, device, make):
    """The kernels' backward op has no derivative of its own: a second derivative raises (on cpp it
    used to fall through autograd with a warning and silently lose the attention term)."""
    dense = make.dense(2, 2, 0, dtype=F64).to(device).requires_grad_()
    queries = make.boxes(1, seed=1, dtype=F64).to(device)
    (g,) = torch.autograd.grad(ops.iou_attention(dense, queries, backend=backend).sum(), dense, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(g.sum(), dense)

# ------------------------------------------------------------------- random, special
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q,h,w", [(1, 1, 1), (1, 7, 5), (13, 16, 33), (19, 9, 13), (256, 5, 6)])
def test_random_is_bitwise_the_reference(backend, device, dtype, score, q, h, w, make, assert_bitwise):
    """Q = 1 and Q = 256, grids of one pixel and of 528, in every dtype (float16/bfloat16:
    computed in float32 and rounded once, as the reference)."""
    dense, queries = make.dense(h, w, q, dtype=dtype, device=device), make.boxes(q, seed=q + 1, dtype=dtype, device=device)
    out = ops.iou_attention(dense, queries, score, backend=backend)
    assert out.shape == (q, h, w)
    assert_bitwise(out, reference.iou_attention(dense, queries, score), backend, device)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the NaN pixel
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q", [1, 20, 256])
def test_large_boxes_nan_and_zero_union_with_grads(backend, device, dtype, score, q, make, assert_bitwise,
                                                   assert_close_in, skip_interpreted):
    """Boxes of up to 1100 px (areas above float16's 65504), a zero-union pixel and a NaN pixel:
    values bit for bit; gradients (NaN at the NaN pixel although its upstream gradient is 0)
    within the dtype's rounding."""
    if q > 20:
        skip_interpreted(backend, device, f"{q} queries over 960 pixels, forward and backward")
    dense = make.dense(24, 40, q, size=600.0, max_wh=500.0, dtype=dtype)
    queries = make.boxes(q, size=600.0, seed=q + 1, max_wh=500.0, dtype=dtype)
    dense[:, 0, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # zero union with the query below
    queries[0] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    dense[:, 0, 1] = NAN
    dense, queries = dense.to(device).requires_grad_(), queries.to(device).requires_grad_()
    out = ops.iou_attention(dense, queries, score, backend=backend)
    rd, rq = dense.detach().clone().requires_grad_(), queries.detach().clone().requires_grad_()
    ref = reference.iou_attention(rd, rq, score)
    assert_bitwise(out, ref.detach(), backend, device)
    w = torch.randn(out.shape, generator=_gen(0)).to(device)
    w[:, 0, 1] = 0  # no upstream gradient at the NaN pixel: its gradients are NaN all the same
    grads = torch.autograd.grad((_upcast(out) * w.to(_upcast(out).dtype)).nan_to_num().sum(), (dense, queries))
    ref_grads = torch.autograd.grad((_upcast(ref) * w.to(_upcast(ref).dtype)).nan_to_num().sum(), (rd, rq))
    for a, b in zip(grads, ref_grads):
        assert a.dtype == dtype
        assert_close_in(a, b)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf in the interpreter
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_special_boxes(backend, device, score, make, assert_close_in):
    s = make.special(device=device)
    dense = s.t().reshape(4, 2, 5)
    assert_close_in(ops.iou_attention(dense, s, score, backend=backend), reference.iou_attention(dense, s, score))
    # union == 0 (two identical points) gives 0, not NaN
    assert ops.iou_attention(dense, s, "iou", backend=backend)[0, 0, 0].item() == 0.0


# ------------------------------------------------------------- exactness (float32)
def _hard_case(make, device, dtype=torch.float32):
    """Random boxes plus shared edges, identical boxes, touching boxes, a point and coordinates
    large enough that every product rounds (where a fused multiply-add would round differently)."""
    dense = make.dense(9, 13, 11, size=3000.0, max_wh=900.0, dtype=F64)
    queries = make.boxes(17, size=3000.0, seed=12, max_wh=900.0, dtype=F64)
    dense[:, 0, :4] = queries[0].view(4, 1)  # identical
    dense[:, 1, :3] = torch.tensor([queries[1, 2], queries[1, 1], queries[1, 2] + 7.25, queries[1, 3]]).view(4, 1)
    dense[:, 2, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # a point
    third = torch.tensor([1 / 3, 1 / 7, 2 / 3, 5 / 7], dtype=F64)
    dense[:, 3] += third.view(4, 1)  # inexact binary fractions
    return dense.to(dtype).to(device), queries.to(dtype).to(device)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_float32_is_bitwise_the_reference(backend, device, score, assert_bitwise, make):
    """Promised for every backend: the same operations in the same order, rounded after each
    one (no fused multiply-add), so float32 results equal the reference's bit for bit."""
    dense, queries = _hard_case(make, device)
    out = ops.iou_attention(dense, queries, score, backend=backend)
    assert_bitwise(out, reference.iou_attention(dense, queries, score), backend, device)


# ------------------------------------------------------------------ half precision
def _large_half_case(make, dtype, device):
    """Boxes of 300-700 px: areas above float16's largest finite value (65504)."""
    dense = make.dense(5, 7, 2, size=400.0, max_wh=400.0, dtype=F64) + 300 * torch.tensor(
        [0.0, 0.0, 1.0, 1.0], dtype=F64).view(4, 1, 1)
    queries = make.boxes(6, size=400.0, seed=3, max_wh=400.0, dtype=F64) + 300 * torch.tensor(
        [0.0, 0.0, 1.0, 1.0], dtype=F64)
    return dense.to(dtype).to(device), queries.to(dtype).to(device)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_half_is_float32_rounded_once(backend, device, dtype, score, assert_bitwise, make):
    """float16/bfloat16: computed in float32 and rounded once, as box_iou (torchvision) does;
    native half arithmetic would overflow on these areas (inf / NaN scores)."""
    dense, queries = _large_half_case(make, dtype, device)
    out = ops.iou_attention(dense, queries, score, backend=backend)
    assert out.dtype == dtype
    want = reference.iou_attention(dense.float(), queries.float(), score).to(dtype)
    assert torch.isfinite(want).all() and want.abs().max() > 0.1
    assert_bitwise(out, want, backend, device)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_half_gradient_is_computed_in_float32(backend, device, dtype, score, make):
    """The backward of half inputs is the float32 gradient rounded once to the dtype: within one
    unit in the last place of the dtype (the summation order over queries/pixels may differ)."""
    dense, queries = _large_half_case(make, dtype, device)
    w = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(0)).to(device)
    d, q = dense.clone().requires_grad_(), queries.clone().requires_grad_()
    got = torch.autograd.grad((ops.iou_attention(d, q, score, backend=backend).float() * w).sum(), (d, q))
    d32, q32 = dense.float().requires_grad_(), queries.float().requires_grad_()
    want = torch.autograd.grad((reference.iou_attention(d32, q32, score) * w).sum(), (d32, q32))
    eps = torch.finfo(dtype).eps
    for a, b in zip(got, want):
        assert a.dtype == dtype and torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, rtol=eps, atol=eps * b.abs().max().item())


# ------------------------------------------------------------------- layouts, NaN
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_gradients_of_non_contiguous_inputs(backend, device, score, make):
    """Strided inputs (a transposed grid, every other query): the same values and gradients as
    their contiguous copies."""
    dense = make.dense(9, 7, 4, **BOX, dtype=F64, device=device).transpose(1, 2).requires_grad_()  # [4, 7, 9]
    queries = make.boxes(10, seed=5, **BOX, dtype=F64, device=device)[::2].requires_grad_()
    assert not dense.is_contiguous() and not queries.is_contiguous()
    w = torch.randn(5, 7, 9, dtype=F64, generator=torch.Generator().manual_seed(1)).to(device)
    out = ops.iou_attention(dense, queries, score, backend=backend)
    got = torch.autograd.grad((out * w).sum(), (dense, queries))
    dc, qc = dense.detach().contiguous().requires_grad_(), queries.detach().contiguous().requires_grad_()
    ref = reference.iou_attention(dc, qc, score)
    want = torch.autograd.grad((ref * w).sum(), (dc, qc))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.backends(OP)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("nan_in", ["dense", "query"])
def test_nan_boxes_give_the_reference_nan_gradients(backend, device, score, nan_in, make):
    """NaN coordinates propagate into every gradient that depends on them, also where the
    upstream gradient is 0 (autograd's 0 * NaN = NaN): the rule of rtpanoptic.ops.reference.
    A NaN pixel makes every query's gradient NaN and only its own; a NaN query the reverse."""
    dense = make.dense(4, 5, 6, **BOX, dtype=F64)
    queries = make.boxes(4, seed=7, **BOX, dtype=F64)
    w = torch.randn(4, 4, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    w[0, 0, :] = 0
    if nan_in == "dense":
        dense[0, 1, 2] = NAN
        w[:, 1, 2] = 0  # the NaN pixel gets no upstream gradient
    else:
        queries[2, 3] = NAN
        w[2] = 0  # the NaN query gets no upstream gradient
    dense, queries, w = dense.to(device), queries.to(device), w.to(device)
    d, q = dense.clone().requires_grad_(), queries.clone().requires_grad_()
    got = torch.autograd.grad((ops.iou_attention(d, q, score, backend=backend) * w).sum(), (d, q))
    d, q = dense.clone().requires_grad_(), queries.clone().requires_grad_()
    want = torch.autograd.grad((reference.iou_attention(d, q, score) * w).sum(), (d, q))
    own = want[0] if nan_in == "dense" else want[1]
    assert own.isnan().any() and not own.isnan().all()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.backends(OP)
def test_empty_inputs_reach_the_kernel(backend, device, make):
    """Q = 0 and H*W = 0 straight into the backend (the public wrapper returns early)."""
    impl = _dispatch.select(OP, backend, torch.device(device))
    queries = make.boxes(3, seed=0, **BOX, device=device)
    for score in ("iou", "tri"):
        assert impl(make.dense(3, 4, **BOX, device=device), queries[:0], score).shape == (0, 3, 4)
        assert impl(make.dense(0, 4, **BOX, device=device), queries, score).shape == (3, 0, 4)
    assert ops.iou_attention(make.dense(3, 4, **BOX, device=device), queries[:0], backend=backend).shape == (0, 3, 4)


@pytest.mark.backends(OP, reference=False)
def test_empty_inputs_reach_the_backward_kernel(backend, device, make, kernels):
    queries = make.boxes(3, seed=0, device=device)
    gd, gq = kernels(backend)._iou_attention_backward(torch.zeros(3, 0, 5, device=device), torch.zeros(4, 0, 5, device=device), queries,
                                   "iou")
    assert gd.shape == (4, 0, 5) and torch.equal(gq, torch.zeros(3, 4, device=device))
    gd, gq = kernels(backend)._iou_attention_backward(torch.zeros(0, 2, 5, device=device), make.dense(2, 5, device=device), queries[:0],
                                   "tri")
    assert torch.equal(gd, torch.zeros(4, 2, 5, device=device)) and gq.shape == (0, 4)
