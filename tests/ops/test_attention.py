"""iou_attention: P_loc(x, y, j) = IoU(B(x, y), B_j) (eq. 6), and the TRI score."""
import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import reference

ATT = ops.available_backends("cpu")["iou_attention"]


def _dense(h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, h, w, generator=g, dtype=torch.float64) * 60
    wh = torch.rand(2, h, w, generator=g, dtype=torch.float64) * 30
    return torch.cat([xy, xy + wh]).to(dtype)


@pytest.mark.parametrize("backend", ATT)
@pytest.mark.parametrize("q", [1, 7, 64])
def test_iou_attention_is_box_iou(make_boxes, backend, q):
    dense = _dense(6, 9, seed=q)
    queries = make_boxes(q, size=60, seed=q)
    out = ops.iou_attention(dense, queries, backend=backend)
    expected = torchvision.ops.box_iou(queries, dense.reshape(4, -1).t()).reshape(q, 6, 9)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", ATT)
def test_iou_attention_degenerate_is_zero_not_nan(backend):
    dense = torch.tensor([5.0, 5.0, 5.0, 5.0]).view(4, 1, 1)
    queries = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    assert ops.iou_attention(dense, queries, backend=backend).flatten().tolist() == [0.0, 0.0]


@pytest.mark.parametrize("backend", ATT)
def test_tri_score_hand_computed(backend):
    dense = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64).view(4, 1, 1)
    queries = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    # I=1, U=7, C=9 (+1e-7): (2/8) - (2/9)
    c = 9 + reference.TRI_EPS
    expected = 2 / 8 - (c - 7) / c
    out = ops.iou_attention(dense, queries, score="tri", backend=backend)
    assert out.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("backend", ATT)
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_iou_attention_grad_matches_reference(make_boxes, backend, score):
    dense = _dense(4, 5, seed=3, dtype=torch.float64).requires_grad_()
    queries = make_boxes(3, size=60, seed=3, dtype=torch.float64).requires_grad_()
    out = ops.iou_attention(dense, queries, score=score, backend=backend)
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * w).sum(), (dense, queries))
    ref = reference.iou_attention(dense, queries, score)
    ref_grads = torch.autograd.grad((ref * w).sum(), (dense, queries))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    torch.autograd.gradcheck(lambda d, q: ops.iou_attention(d, q, score=score, backend=backend), (dense, queries))


def test_iou_attention_empty():
    for backend in ATT:
        assert ops.iou_attention(_dense(3, 4), torch.zeros(0, 4), backend=backend).shape == (0, 3, 4)
        assert ops.iou_attention(torch.zeros(4, 0, 4), torch.ones(2, 4), backend=backend).shape == (2, 0, 4)
