"""mask_loss (eqs. 16-18): closed-form values, gradients, every backend vs reference."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference

ML = ops.available_backends("cpu")["mask_loss"]


def _closed_form_case(dtype=torch.float64):
    q = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=dtype)
    dense = torch.empty(1, 4, 2, 2, dtype=dtype)
    dense[0, :, 0, 0] = q[0]  # inside M, IoU 1 -> no FN
    dense[0, :, 0, 1] = q[0]  # outside M, IoU 1 -> FP 1
    dense[0, :, 1, 0] = torch.tensor([1.0, 0.0, 3.0, 2.0])  # outside, IoU 2/6 -> FP 1/3
    dense[0, :, 1, 1] = torch.tensor([5.0, 5.0, 6.0, 6.0])  # outside, disjoint -> 0
    masks = torch.zeros(1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = True
    return dense, q, masks


@pytest.mark.parametrize("backend", ML)
def test_closed_form(backend):
    dense, q, masks = _closed_form_case()
    loss = ops.mask_loss(dense, q, masks, torch.tensor([0.5], dtype=torch.float64), backend=backend)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 / 3))
    # a second query with an empty ground-truth mask adds 0 but counts in 1/|Q|
    q2 = torch.cat([q, q])
    masks2 = torch.cat([masks, torch.zeros_like(masks)])
    loss2 = ops.mask_loss(dense, q2, masks2, torch.tensor([0.5, 1.0], dtype=torch.float64), backend=backend)
    assert loss2.item() == pytest.approx(0.5 * (1 + 1 / 3) / 2)


@pytest.mark.parametrize("backend", ML)
def test_false_negative_term(backend):
    q = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    dense = torch.tensor([1.0, 0.0, 3.0, 2.0], dtype=torch.float64).view(1, 4, 1, 1)  # IoU 1/3
    masks = torch.ones(1, 1, 1, dtype=torch.bool)
    loss = ops.mask_loss(dense, q, masks, torch.ones(1, dtype=torch.float64), backend=backend)
    assert loss.item() == pytest.approx(2 / 3)


def _random_case(seed, b=2, h=6, w=7, q=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, 2, h, w, generator=g, dtype=dtype) * 20
    dense = torch.cat([xy, xy + 2 + torch.rand(b, 2, h, w, generator=g, dtype=dtype) * 10], 1)
    qxy = torch.rand(q, 2, generator=g, dtype=dtype) * 20
    queries = torch.cat([qxy, qxy + 2 + torch.rand(q, 2, generator=g, dtype=dtype) * 10], 1)
    masks = torch.rand(q, h, w, generator=g) > 0.6
    beta = torch.rand(q, generator=g, dtype=dtype)
    batch_index = torch.randint(0, b, (q,), generator=g)
    return dense, queries, masks, beta, batch_index


@pytest.mark.parametrize("backend", ML)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_matches_reference_with_grads(backend, seed):
    dense, queries, masks, beta, bi = _random_case(seed)
    dense.requires_grad_()
    queries.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi, backend=backend)
    ref = reference.mask_loss(dense, queries, masks, beta, bi)
    torch.testing.assert_close(loss, ref)
    g = torch.autograd.grad(loss, (dense, queries))
    gr = torch.autograd.grad(ref, (dense, queries))
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ML)
def test_gradcheck(backend):
    dense, queries, masks, beta, bi = _random_case(7, b=1, h=3, w=4, q=3)
    dense.requires_grad_()
    queries.requires_grad_()
    torch.autograd.gradcheck(lambda d, q: ops.mask_loss(d, q, masks, beta, bi, backend=backend), (dense, queries))


@pytest.mark.parametrize("backend", ML)
def test_empty_queries_is_zero_and_attached(backend):
    dense = torch.rand(1, 4, 3, 3, requires_grad=True)
    loss = ops.mask_loss(dense, torch.zeros(0, 4), torch.zeros(0, 3, 3, dtype=torch.bool), torch.zeros(0), backend=backend)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(dense.grad, torch.zeros_like(dense))


def test_beta_gets_no_gradient():
    dense, queries, masks, beta, bi = _random_case(3)
    beta.requires_grad_()
    dense.requires_grad_()
    loss = ops.mask_loss(dense, queries, masks, beta, bi)
    assert torch.autograd.grad(loss, beta, allow_unused=True)[0] is None
