"""iou_attention: P_loc(x, y, j) = IoU(B(x, y), B_j) (eq. 6), and the TRI score, on every
(backend, device) pair that runs here (``@pytest.mark.backends``, tests/conftest.py)."""
import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference

OP = "iou_attention"
HALF = [torch.float16, torch.bfloat16]
NAN = float("nan")


def _dense(h, w, seed=0, dtype=torch.float32, size=60.0, max_wh=30.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, h, w, generator=g, dtype=torch.float64) * size
    wh = torch.rand(2, h, w, generator=g, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh]).to(dtype).to(device)


def _queries(q, seed=0, dtype=torch.float32, size=60.0, max_wh=30.0, device="cpu"):
    return _dense(1, q, seed, torch.float64, size, max_wh).reshape(4, q).t().to(dtype).to(device)


@pytest.mark.backends(OP)
@pytest.mark.parametrize("q", [1, 7, 64])
def test_iou_attention_is_box_iou(backend, device, q):
    dense = _dense(6, 9, seed=q, device=device)
    queries = _queries(q, seed=q, device=device)
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
    dense = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64, device=device).view(4, 1, 1)
    queries = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64, device=device)
    # I=1, U=7, C=9 (+1e-7): (2/8) - (2/9)
    c = 9 + reference.TRI_EPS
    expected = 2 / 8 - (c - 7) / c
    out = ops.iou_attention(dense, queries, score="tri", backend=backend)
    assert out.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.backends(OP)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_iou_attention_grad_matches_reference(backend, device, score):
    dense = _dense(4, 5, seed=3, dtype=torch.float64, device=device).requires_grad_()
    queries = _queries(3, seed=3, dtype=torch.float64, device=device).requires_grad_()
    out = ops.iou_attention(dense, queries, score=score, backend=backend)
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    grads = torch.autograd.grad((out * w).sum(), (dense, queries))
    ref = reference.iou_attention(dense, queries, score)
    ref_grads = torch.autograd.grad((ref * w).sum(), (dense, queries))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    torch.autograd.gradcheck(lambda d, q: ops.iou_attention(d, q, score=score, backend=backend), (dense, queries))


# ------------------------------------------------------------- exactness (float32)
def _hard_case(device, dtype=torch.float32):
    """Random boxes plus shared edges, identical boxes, touching boxes, a point and coordinates
    large enough that every product rounds (where a fused multiply-add would round differently)."""
    dense = _dense(9, 13, seed=11, dtype=torch.float64, size=3000.0, max_wh=900.0)
    queries = _queries(17, seed=12, dtype=torch.float64, size=3000.0, max_wh=900.0)
    dense[:, 0, :4] = queries[0].view(4, 1)  # identical
    dense[:, 1, :3] = torch.tensor([queries[1, 2], queries[1, 1], queries[1, 2] + 7.25, queries[1, 3]]).view(4, 1)
    dense[:, 2, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # a point
    third = torch.tensor([1 / 3, 1 / 7, 2 / 3, 5 / 7], dtype=torch.float64)
    dense[:, 3] += third.view(4, 1)  # inexact binary fractions
    return dense.to(dtype).to(device), queries.to(dtype).to(device)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_float32_is_bitwise_the_reference(backend, device, score, assert_bitwise):
    """Promised for every backend: the same operations in the same order, rounded after each
    one (no fused multiply-add), so float32 results equal the reference's bit for bit."""
    dense, queries = _hard_case(device)
    out = ops.iou_attention(dense, queries, score, backend=backend)
    assert_bitwise(out, reference.iou_attention(dense, queries, score), backend, device)


# ------------------------------------------------------------------ half precision
def _large_half_case(dtype, device):
    """Boxes of 300-700 px: areas above float16's largest finite value (65504)."""
    dense = _dense(5, 7, seed=2, dtype=torch.float64, size=400.0, max_wh=400.0) + 300 * torch.tensor(
        [0.0, 0.0, 1.0, 1.0], dtype=torch.float64).view(4, 1, 1)
    queries = _queries(6, seed=3, dtype=torch.float64, size=400.0, max_wh=400.0) + 300 * torch.tensor(
        [0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    return dense.to(dtype).to(device), queries.to(dtype).to(device)


@pytest.mark.backends(OP)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_half_is_float32_rounded_once(backend, device, dtype, score, assert_bitwise):
    """float16/bfloat16: computed in float32 and rounded once, as box_iou (torchvision) does;
    native half arithmetic would overflow on these areas (inf / NaN scores)."""
    dense, queries = _large_half_case(dtype, device)
    out = ops.iou_attention(dense, queries, score, backend=backend)
    assert out.dtype == dtype
    want = reference.iou_attention(dense.float(), queries.float(), score).to(dtype)
    assert torch.isfinite(want).all() and want.abs().max() > 0.1
    assert_bitwise(out, want, backend, device)


@pytest.mark.backends(OP)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_half_gradient_is_computed_in_float32(backend, device, dtype, score):
    """The backward of half inputs is the float32 gradient rounded once to the dtype: within one
    unit in the last place of the dtype (the summation order over queries/pixels may differ)."""
    dense, queries = _large_half_case(dtype, device)
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
@pytest.mark.backends(OP)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_gradients_of_non_contiguous_inputs(backend, device, score):
    """Strided inputs (a transposed grid, every other query): the same values and gradients as
    their contiguous copies."""
    dense = _dense(9, 7, seed=4, dtype=torch.float64, device=device).transpose(1, 2).requires_grad_()  # [4, 7, 9]
    queries = _queries(10, seed=5, dtype=torch.float64, device=device)[::2].requires_grad_()
    assert not dense.is_contiguous() and not queries.is_contiguous()
    w = torch.randn(5, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
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
def test_nan_boxes_give_the_reference_nan_gradients(backend, device, score, nan_in):
    """NaN coordinates propagate into every gradient that depends on them, also where the
    upstream gradient is 0 (autograd's 0 * NaN = NaN): the rule of rtpanoptic.ops.reference.
    A NaN pixel makes every query's gradient NaN and only its own; a NaN query the reverse."""
    dense = _dense(4, 5, seed=6, dtype=torch.float64)
    queries = _queries(4, seed=7, dtype=torch.float64)
    w = torch.randn(4, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
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
def test_empty_inputs_reach_the_kernel(backend, device):
    """Q = 0 and H*W = 0 straight into the backend (the public wrapper returns early)."""
    impl = _dispatch.select(OP, backend, torch.device(device))
    queries = _queries(3, seed=0, device=device)
    for score in ("iou", "tri"):
        assert impl(_dense(3, 4, device=device), queries[:0], score).shape == (0, 3, 4)
        assert impl(_dense(0, 4, device=device), queries, score).shape == (3, 0, 4)
    assert ops.iou_attention(_dense(3, 4, device=device), queries[:0], backend=backend).shape == (0, 3, 4)
