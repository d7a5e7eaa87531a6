"""mask_loss (eqs. 16-18): closed-form values, gradients, every (backend, device) pair against
the reference (every dtype; Q = 1 and Q = 100, empty masks, unsorted images), gradcheck, half
precision, NaN boxes, zero unions, strided and empty inputs."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference
from rtpanoptic.ops.reference import _upcast

OP = "mask_loss"
F64 = torch.float64
FLOATS = [torch.float16, torch.bfloat16, torch.float32, F64]
NAN = float("nan")
BOX = dict(size=20.0, max_wh=10.0, min_wh=2.0)  # corners in [0, 20)², sides 2 to 12


def _closed_form_case(dtype=F64, device="cpu"):
    q = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=dtype)
    dense = torch.empty(1, 4, 2, 2, dtype=dtype)
    dense[0, :, 0, 0] = q[0]  # inside M, IoU 1 -> no FN
    dense[0, :, 0, 1] = q[0]  # outside M, IoU 1 -> FP 1
    dense[0, :, 1, 0] = torch.tensor([1.0, 0.0, 3.0, 2.0])  # outside, IoU 2/6 -> FP 1/3
    dense[0, :, 1, 1] = torch.tensor([5.0, 5.0, 6.0, 6.0])  # outside, disjoint -> 0
    masks = torch.zeros(1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = True
    return dense.to(device), q.to(device), masks.to(device)


@pytest.mark.backends(OP)
def test_closed_form(backend, device):
    dense, q, masks = _closed_form_case(device=device)
    beta = torch.tensor([0.5], dtype=F64, device=device)
    loss = ops.mask_loss(dense, q, masks, beta, backend=backend)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 / 3))
    # a second query with an empty ground-truth mask adds 0 but counts in 1/|Q|
    q2 = torch.cat([q, q])
    masks2 = torch.cat([masks, torch.zeros_like(masks)])
    beta2 = torch.tensor([0.5, 1.0], dtype=F64, device=device)
    loss2 = ops.mask_loss(dense, q2, masks2, beta2, backend=backend)
    assert loss2.item() == pytest.approx(0.5 * (1 + 1 / 3) / 2)


@pytest.mark.backends(OP)
def test_false_negative_term(backend, device):
    q = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=F64, device=device)
    dense = torch.tensor([1.0, 0.0, 3.0, 2.0], dtype=F64, device=device).view(1, 4, 1, 1)  # IoU 1/3
    masks = torch.ones(1, 1, 1, dtype=torch.bool, device=device)
    loss = ops.mask_loss(dense, q, masks, torch.ones(1, dtype=F64, device=device), backend=backend)
    assert loss.item() == pytest.approx(2 / 3)


# (seed, B, H, W, Q): one pixel and one query; 100 queries; a 32 x 48 grid
RANDOM = [(0, 1, 1, 1, 1), (1, 2, 6, 7, 5), (2, 3, 17, 9, 30), (3, 1, 4, 4, 100), (4, 3, 7, 9, 6), (5, 2, 32, 48, 100)]


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", RANDOM, ids=lambda c: "x".join(map(str, c[1:])))
def test_random_matches_reference_with_grads(backend, device, dtype, case, make, assert_close_in, skip_interpreted):
    """The loss and its gradients against the reference's autograd (float16/bfloat16: of the
    float32 inputs, within the dtype's rounding); the first query's mask is empty."""
    seed, b, h, w, q = case
    if b * h * w * q > 100_000:
        skip_interpreted(backend, device, f"{q} queries over {b} x {h} x {w} pixels, forward and backward")
    dense, queries, masks, beta, bi = make.loss_case(seed, b, h, w, q, dtype=dtype, device=device,
                                                     empty=(0,) if q > 1 else (), **BOX)
    dense.requires_grad_()
    queries.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend=backend)
    rd, rq = _upcast(dense.detach()).requires_grad_(), _upcast(queries.detach()).requires_grad_()
    ref = reference.mask_loss(rd, rq, masks, _upcast(beta), bi)
    assert loss.dtype == dtype
    assert_close_in(loss, ref)
    for a, r in zip(torch.autograd.grad(loss, (dense, queries)), torch.autograd.grad(ref, (rd, rq))):
        assert a.dtype == dtype
        assert_close_in(a, r)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("boxes", ["small", "large"])
def test_half_is_computed_in_float32(backend, device, dtype, boxes):
    """Half inputs are computed in float32; the loss and the gradients are rounded once (to
    within one unit in the last place, subnormals included: the summation order differs).
    "small": 30-40 px boxes, 64x64 masks and 16 queries, so each query's gradient weight
    beta_j / (N_j * Q) (~1e-5) is subnormal in float16 while some query gradients (~5e-4) are
    not.  "large": boxes of 300-700 px, whose areas exceed float16's largest finite value."""
    # (one generator for every input: these tolerances hold for these exact inputs)
    g = torch.Generator().manual_seed(3)
    b, h, w, q = 1, 64, 64, 16
    lo, extra, size = (30, 10, 30) if boxes == "small" else (300, 400, 100)
    xy = torch.rand(b, 2, h, w, generator=g, dtype=F64) * size
    dense = torch.cat([xy, xy + lo + torch.rand(b, 2, h, w, generator=g, dtype=F64) * extra], 1)
    qxy = torch.rand(q, 2, generator=g, dtype=F64) * size
    queries = torch.cat([qxy, qxy + lo + torch.rand(q, 2, generator=g, dtype=F64) * extra], 1)
    masks = torch.rand(q, h, w, generator=g) > 0.05
    beta = 0.5 + torch.rand(q, generator=g, dtype=F64) / 2
    bi = torch.zeros(q, dtype=torch.int64)
    dense, queries, beta = dense.to(dtype), queries.to(dtype), beta.to(dtype)
    d, qq = dense.clone().to(device).requires_grad_(), queries.clone().to(device).requires_grad_()
    loss = ops.mask_loss(d, qq, masks.to(device), beta.to(device), bi.to(device), backend=backend)
    got = torch.autograd.grad(loss, (d, qq))
    d32, q32 = dense.float().requires_grad_(), queries.float().requires_grad_()
    ref = reference.mask_loss(d32, q32, masks, beta.float(), bi)
    want = torch.autograd.grad(ref, (d32, q32))
    info = torch.finfo(dtype)
    if boxes == "small":
        assert want[1].abs().max() > 5 * info.smallest_normal  # query gradients in the normal range
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.float().cpu(), ref.to(dtype).float(), rtol=info.eps, atol=0)
    for a, r in zip(got, want):
        assert a.dtype == dtype and torch.isfinite(a).all()
        torch.testing.assert_close(a.float().cpu(), r.to(dtype).float(), rtol=info.eps,
                                   atol=info.smallest_normal * info.eps)


@pytest.mark.backends(OP)
@pytest.mark.parametrize("case", ["nan_pixel", "nan_query_with_zero_beta", "nan_query_with_empty_mask"])
def test_nan_boxes_give_the_reference_nan_gradients(backend, device, case, make):
    """As rtpanoptic.ops.reference defines it: a NaN coordinate makes the loss NaN and every
    gradient that depends on it NaN, also through a zero weight beta_j = 0 (0 * NaN = NaN); a
    query with an empty mask (N_j = 0) is left out entirely (no loss, no gradient)."""
    dense, queries, masks, beta, bi = make.loss_case(4, b=2, q=4, **BOX)
    if case == "nan_pixel":
        dense[bi[0], 1, 2, 3] = NAN
    elif case == "nan_query_with_zero_beta":
        queries[1, 0] = NAN
        beta[1] = 0.0
    else:
        queries[2, 2] = NAN
        masks[2] = False
    d, q = dense.clone().to(device).requires_grad_(), queries.clone().to(device).requires_grad_()
    loss = ops.mask_loss(d, q, masks.to(device), beta.to(device), bi.to(device), backend=backend)
    got = torch.autograd.grad(loss, (d, q))
    d, q = dense.clone().requires_grad_(), queries.clone().requires_grad_()
    ref = reference.mask_loss(d, q, masks, beta, bi)
    want = torch.autograd.grad(ref, (d, q))
    assert ref.isnan().item() == (case != "nan_query_with_empty_mask")
    torch.testing.assert_close(loss.cpu(), ref, equal_nan=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, equal_nan=True)
    if case == "nan_query_with_empty_mask":
        assert torch.isfinite(got[0]).all() and got[1][2].abs().sum().item() == 0


@pytest.mark.backends(OP, reference=False)
def test_gradients_of_non_contiguous_inputs(backend, device, make):
    dense, queries, masks, beta, bi = make.loss_case(5, b=2, h=7, w=6, q=6, device=device, **BOX)
    dense = dense.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()  # [2, 4, 7, 6] strided
    queries = torch.cat([queries, queries]).view(2, 6, 4)[1].t().contiguous().t().requires_grad_()  # strided [6, 4]
    masks = masks.transpose(1, 2).contiguous().transpose(1, 2)
    assert not dense.is_contiguous() and not queries.is_contiguous() and not masks.is_contiguous()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend=backend)
    got = torch.autograd.grad(loss, (dense, queries))
    dc, qc = dense.detach().contiguous().requires_grad_(), queries.detach().contiguous().requires_grad_()
    ref = reference.mask_loss(dc, qc, masks.contiguous(), beta, bi)
    want = torch.autograd.grad(ref, (dc, qc))
    torch.testing.assert_close(loss, ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.backends(OP)
def test_empty_inputs_reach_the_kernel(backend, device):
    """Q = 0 and H*W = 0 straight into the backend (the public wrapper returns early for Q = 0)."""
    impl = _dispatch.select(OP, backend, torch.device(device))
    dense = torch.rand(1, 4, 3, 3, device=device)
    none = (torch.zeros(0, 4, device=device), torch.zeros(0, 3, 3, dtype=torch.bool, device=device),
            torch.zeros(0, device=device), torch.zeros(0, dtype=torch.int64, device=device))
    assert impl(dense, *none).item() == 0.0
    q = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device)
    flat = (torch.zeros(1, 4, 0, 3, device=device), q, torch.zeros(1, 0, 3, dtype=torch.bool, device=device),
            torch.ones(1, device=device), torch.zeros(1, dtype=torch.int64, device=device))
    assert impl(*flat).item() == 0.0
    none = (torch.zeros(0, 4, device=device), torch.zeros(0, 2, 2, dtype=torch.bool, device=device),
            torch.zeros(0, device=device), torch.zeros(0, dtype=torch.int64, device=device))
    assert impl(torch.zeros(1, 4, 2, 2, device=device), *none).item() == 0.0


@pytest.mark.backends(OP, reference=False)
def test_empty_inputs_reach_the_backward_kernel(backend, device, make, kernels):
    q3 = make.boxes(3, seed=0, device=device)
    args = (torch.zeros(1, 4, 0, 5, device=device), q3, torch.zeros(3, 0, 5, dtype=torch.bool, device=device),
            torch.ones(3, device=device), torch.zeros(3, dtype=torch.long, device=device))
    gd, gq = kernels(backend)._mask_loss_backward(torch.ones((), device=device), *args)
    assert gd.shape == (1, 4, 0, 5) and torch.equal(gq, torch.zeros(3, 4, device=device))


@pytest.mark.backends(OP, reference=False)
def test_all_masks_empty_and_zero_unions(backend, device, make, assert_close_in):
    dense, queries, masks, beta, bi = make.loss_case(4, device=device, empty=range(5), **BOX)
    dense.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend=backend)
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, dense)[0].abs().sum().item() == 0.0
    # zero-union pixels (point boxes equal to a point query) give IoU 0 and no gradient
    dense, queries, masks, beta, bi = make.loss_case(5, b=1, q=2, device=device, **BOX)
    queries[0] = torch.tensor([3.0, 3.0, 3.0, 3.0], dtype=F64)
    dense[0, :, 0, :] = 3.0
    dense.requires_grad_()
    queries.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend=backend)
    ref = reference.mask_loss(dense, queries, masks, beta, bi)
    assert_close_in(loss, ref)
    for a, r in zip(torch.autograd.grad(loss, (dense, queries)), torch.autograd.grad(ref, (dense, queries))):
        assert_close_in(a, r)


def test_empty_queries_is_zero_and_attached():
    dense = torch.rand(1, 4, 3, 3, requires_grad=True)
    loss = ops.mask_loss(dense, torch.zeros(0, 4), torch.zeros(0, 3, 3, dtype=torch.bool), torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(dense.grad, torch.zeros_like(dense))


def test_beta_gets_no_gradient(make):
    dense, queries, masks, beta, bi = make.loss_case(3, **BOX)
    beta.requires_grad_()
    dense.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi)
    assert torch.autograd.grad(loss, beta, allow_unused=True)[0] is None
