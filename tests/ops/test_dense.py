"""decode_boxes and gather_levelness: hand-computed values, every backend vs reference, grads."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference

DECODE = ops.available_backends("cpu")["decode_boxes"]
GATHER = ops.available_backends("cpu")["gather_levelness"]


@pytest.mark.parametrize("backend", DECODE)
def test_decode_hand_computed(backend):
    offsets = torch.zeros(1, 4, 2, 3)
    offsets[0, :, 1, 2] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    boxes = ops.decode_boxes(offsets, 8, backend=backend)
    # cell (i=1, j=2) at stride 8 sits at (4 + 16, 4 + 8) = (20, 12)
    assert boxes[0, :, 1, 2].tolist() == [19.0, 10.0, 23.0, 16.0]
    assert boxes[0, :, 0, 0].tolist() == [4.0, 4.0, 4.0, 4.0]
    # odd stride: floor(stride / 2)
    assert ops.decode_boxes(torch.zeros(1, 4, 1, 1), 5, backend=backend)[0, :, 0, 0].tolist() == [2.0] * 4


@pytest.mark.parametrize("backend", DECODE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_matches_reference_and_grad(backend, dtype):
    g = torch.Generator().manual_seed(0)
    offsets = (torch.rand(2, 4, 5, 7, generator=g, dtype=dtype) * 30).requires_grad_()
    out = ops.decode_boxes(offsets, 16, backend=backend)
    torch.testing.assert_close(out, reference.decode_boxes(offsets, 16))
    weights = torch.randn(out.shape, generator=g, dtype=dtype)
    (grad,) = torch.autograd.grad((out * weights).sum(), offsets)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=dtype).view(1, 4, 1, 1)
    torch.testing.assert_close(grad, weights * sign)


def test_decode_empty():
    for backend in DECODE:
        assert ops.decode_boxes(torch.zeros(0, 4, 3, 3), 8, backend=backend).shape == (0, 4, 3, 3)
        assert ops.decode_boxes(torch.zeros(1, 4, 0, 3), 8, backend=backend).shape == (1, 4, 0, 3)


def _levelness_for(levels: torch.Tensor, n_levels: int, background=None) -> torch.Tensor:
    """One-hot levelness logits [B, L+1, H, W] choosing level ``levels`` (1-based)."""
    logits = torch.nn.functional.one_hot(levels, n_levels + 1).permute(0, 3, 1, 2).float() * 5
    if background is not None:
        logits[:, 0][background] = 10
    return logits


@pytest.mark.parametrize("backend", GATHER)
def test_gather_levelness_same_grid_picks_the_level(backend):
    h, w = 4, 6
    g = torch.Generator().manual_seed(0)
    per_level = [torch.rand(1, 4, h, w, generator=g) * 10 for _ in range(3)]
    level = torch.randint(1, 4, (1, h, w), generator=g)
    background = torch.zeros(1, h, w, dtype=torch.bool)
    background[0, 0, 0] = True
    levelness = _levelness_for(level, 3, background)
    boxes, fg = ops.gather_levelness(per_level, levelness, out_stride=4, backend=backend)
    # same grid: bilinear resampling is the identity
    chosen = torch.stack(per_level, 0)[level[0] - 1, 0, :, torch.arange(h)[:, None], torch.arange(w)]
    chosen = chosen.permute(2, 0, 1)[None]
    torch.testing.assert_close(boxes, ops.decode_boxes(chosen, 4, backend="reference"))
    assert fg.dtype == torch.bool and fg.sum() == h * w - 1 and not fg[0, 0, 0]
    # the background pixel still gets the box of its best non-background level
    assert torch.isfinite(boxes).all()


@pytest.mark.parametrize("backend", GATHER)
def test_gather_levelness_upsamples_coarse_levels(backend):
    # a constant coarse map upsamples to the same constant
    coarse = torch.full((2, 4, 2, 3), 7.0)
    fine = torch.full((2, 4, 8, 12), 1.0)
    levelness = torch.zeros(2, 3, 8, 12)
    levelness[:, 2] = 1.0  # everything on level 2 (the coarse one)
    boxes, fg = ops.gather_levelness([fine, coarse], levelness, out_stride=4, backend=backend)
    expected = ops.decode_boxes(torch.full((2, 4, 8, 12), 7.0), 4, backend="reference")
    torch.testing.assert_close(boxes, expected)
    assert fg.all()


@pytest.mark.parametrize("backend", GATHER)
@pytest.mark.parametrize("seed", [0, 1])
def test_gather_levelness_random_matches_reference(backend, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    offsets = [torch.rand(2, 4, h, w, generator=g, dtype=torch.float64) * 50 for h, w in sizes]
    levelness = torch.randn(2, 6, 32, 40, generator=g, dtype=torch.float64)
    boxes, fg = ops.gather_levelness(offsets, levelness, 4, backend=backend)
    rb, rfg = reference.gather_levelness(offsets, levelness, 4)
    torch.testing.assert_close(boxes, rb)
    assert torch.equal(fg, rfg)


def test_gather_levelness_gradcheck_reference():
    g = torch.Generator().manual_seed(0)
    offsets = [torch.rand(1, 4, 3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    levelness = torch.randn(1, 3, 6, 8, generator=g, dtype=torch.float64)
    torch.autograd.gradcheck(lambda a, b: reference.gather_levelness([a, b], levelness, 4)[0], offsets)
