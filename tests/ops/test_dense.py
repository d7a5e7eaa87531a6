"""decode_boxes and gather_levelness: hand-computed values, every (backend, device) pair against
the reference (in every dtype; non-finite offsets, tied and NaN logits), gradients and gradcheck,
strided inputs, empty inputs."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference
from rtpanoptic.ops.grid import cell_centres
from rtpanoptic.ops.reference import _upcast

F64 = torch.float64
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
NAN, INF = float("nan"), float("inf")
SIGN = (-1.0, -1.0, 1.0, 1.0)  # d(x - l)/dl, d(y - t)/dt, d(x + r)/dr, d(y + b)/db


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.backends("decode_boxes")
def test_decode_hand_computed(backend, device):
    offsets = torch.zeros(1, 4, 2, 3, device=device)
    offsets[0, :, 1, 2] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    boxes = ops.decode_boxes(offsets, 8, backend=backend)
    # cell (i=1, j=2) at stride 8 sits at (4 + 16, 4 + 8) = (20, 12)
    assert boxes[0, :, 1, 2].tolist() == [19.0, 10.0, 23.0, 16.0]
    assert boxes[0, :, 0, 0].tolist() == [4.0, 4.0, 4.0, 4.0]
    # odd stride: floor(stride / 2)
    one = ops.decode_boxes(torch.zeros(1, 4, 1, 1, device=device), 5, backend=backend)
    assert one[0, :, 0, 0].tolist() == [2.0] * 4


@pytest.mark.backends("decode_boxes")
@pytest.mark.parametrize("dtype", FLOATS)
def test_decode_matches_reference_and_grad(backend, device, dtype, assert_bitwise, skip_interpreted_bfloat16):
    skip_interpreted_bfloat16(backend, device, dtype)
    g = _gen(0)
    offsets = (torch.rand(2, 4, 5, 7, generator=g, dtype=F64) * 30).to(dtype).to(device).requires_grad_()
    out = ops.decode_boxes(offsets, 16, backend=backend)
    assert_bitwise(out, reference.decode_boxes(offsets, 16), backend, device)  # promised bit for bit
    weights = torch.randn(out.shape, generator=g, dtype=F64).to(dtype).to(device)
    (grad,) = torch.autograd.grad((out * weights).sum(), offsets)
    assert grad.dtype == dtype
    assert torch.equal(grad, weights * torch.tensor(SIGN, dtype=dtype, device=device).view(1, 4, 1, 1))


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf in the interpreter
@pytest.mark.backends("decode_boxes", reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("stride", [1, 5, 8, 128])
def test_decode_random_and_nonfinite(backend, device, dtype, stride, assert_bitwise, skip_interpreted_bfloat16):
    skip_interpreted_bfloat16(backend, device, dtype)
    off = torch.rand(2, 4, 6, 9, generator=_gen(stride), dtype=F64) * 50
    off[0, 1, 2, 3], off[1, 2, 0, 0], off[1, 3, 5, 8] = NAN, INF, -INF
    off = off.to(dtype).to(device)
    assert_bitwise(ops.decode_boxes(off, stride, backend=backend), reference.decode_boxes(off, stride), backend, device)


@pytest.mark.backends("decode_boxes", reference=False)
def test_decode_gradcheck(backend, device):
    off = torch.rand(1, 4, 3, 4, generator=_gen(0), dtype=F64).to(device).requires_grad_()
    torch.autograd.gradcheck(lambda o: ops.decode_boxes(o, 8, backend=backend), (off,))


@pytest.mark.backends("decode_boxes")
def test_decode_gradient_of_strided_offsets(backend, device):
    offsets = (torch.rand(2, 7, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 9)
    offsets = offsets.to(device).permute(0, 2, 1, 3)[:, :, :5].requires_grad_()  # [2, 4, 5, 5], strided
    assert not offsets.is_contiguous()
    out = ops.decode_boxes(offsets, 4, backend=backend)
    assert torch.equal(out, reference.decode_boxes(offsets.detach().contiguous(), 4))
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    (grad,) = torch.autograd.grad((out * w).sum(), offsets)
    assert torch.equal(grad, w * torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64, device=device).view(1, 4, 1, 1))


@pytest.mark.backends("decode_boxes")
def test_decode_empty_inputs_reach_the_kernel(backend, device):
    impl = _dispatch.select("decode_boxes", backend, torch.device(device))
    for shape in [(0, 4, 3, 3), (1, 4, 0, 3), (2, 4, 3, 0)]:
        assert impl(torch.zeros(shape, device=device), 8).shape == shape
        assert ops.decode_boxes(torch.zeros(shape, device=device), 8, backend=backend).shape == shape


def _levelness_for(levels: torch.Tensor, n_levels: int, background=None) -> torch.Tensor:
    """One-hot levelness logits [B, L+1, H, W] choosing level ``levels`` (1-based)."""
    logits = torch.nn.functional.one_hot(levels, n_levels + 1).permute(0, 3, 1, 2).float() * 5
    if background is not None:
        logits[:, 0][background] = 10
    return logits


@pytest.mark.backends("gather_levelness")
def test_gather_levelness_same_grid_picks_the_level(backend, device):
    h, w = 4, 6
    g = torch.Generator().manual_seed(0)
    per_level = [torch.rand(1, 4, h, w, generator=g) * 10 for _ in range(3)]
    level = torch.randint(1, 4, (1, h, w), generator=g)
    background = torch.zeros(1, h, w, dtype=torch.bool)
    background[0, 0, 0] = True
    levelness = _levelness_for(level, 3, background)
    boxes, fg = ops.gather_levelness([o.to(device) for o in per_level], levelness.to(device), out_stride=4,
                                     backend=backend)
    # same grid: bilinear resampling is the identity
    chosen = torch.stack(per_level, 0)[level[0] - 1, 0, :, torch.arange(h)[:, None], torch.arange(w)]
    chosen = chosen.permute(2, 0, 1)[None]
    torch.testing.assert_close(boxes.cpu(), ops.decode_boxes(chosen, 4, backend="reference"))
    assert fg.dtype == torch.bool and fg.sum() == h * w - 1 and not fg[0, 0, 0]
    # the background pixel still gets the box of its best non-background level
    assert torch.isfinite(boxes).all()


@pytest.mark.backends("gather_levelness")
def test_gather_levelness_upsamples_coarse_levels(backend, device):
    # a constant coarse map upsamples to the same constant
    coarse = torch.full((2, 4, 2, 3), 7.0, device=device)
    fine = torch.full((2, 4, 8, 12), 1.0, device=device)
    levelness = torch.zeros(2, 3, 8, 12, device=device)
    levelness[:, 2] = 1.0  # everything on level 2 (the coarse one)
    boxes, fg = ops.gather_levelness([fine, coarse], levelness, out_stride=4, backend=backend)
    expected = ops.decode_boxes(torch.full((2, 4, 8, 12), 7.0, device=device), 4, backend="reference")
    torch.testing.assert_close(boxes, expected)
    assert fg.all()


@pytest.mark.backends("gather_levelness")
def test_gather_levelness_bilinear_convention_hand_computed(backend, device):
    """align_corners=False with clamped edges, on non-constant maps.  A 2x2 level upsampled to
    4x4: source rows/columns 0, 1/4, 3/4, 1 (the outer ones clamped), so the linear map
    16 i + 8 j becomes [0, 4, 12, 16][y] + [0, 2, 6, 8][x].  A 3x3 level upsampled to 5x5: scale
    3/5, sources 0, 0.4, 1, 1.6, 2 (the first clamped from -0.2, the last from 2.2)."""
    base2 = torch.tensor([[0.0, 8.0], [16.0, 24.0]], dtype=torch.float64)
    want2 = torch.tensor([0.0, 4, 12, 16], dtype=torch.float64)[:, None] + torch.tensor([0.0, 2, 6, 8],
                                                                                      dtype=torch.float64)
    base3 = torch.tensor([[0.0, 10, 20], [30, 40, 50], [60, 70, 80]], dtype=torch.float64)
    src5 = torch.tensor([0.0, 0.4, 1.0, 1.6, 2.0], dtype=torch.float64)
    want3 = 30 * src5[:, None] + 10 * src5
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)  # one map per coordinate
    for base, want, n in ((base2, want2, 4), (base3, want3, 5)):
        fine = torch.zeros(1, 4, n, n, dtype=torch.float64)
        levelness = torch.zeros(1, 3, n, n, dtype=torch.float64)
        levelness[:, 2] = 1.0  # every location takes the coarse level
        boxes, _ = ops.gather_levelness([fine.to(device), (base * scale).to(device)], levelness.to(device),
                                        out_stride=4, backend=backend)
        centre = torch.arange(n, dtype=torch.float64) * 4 + 2
        expected = torch.stack([centre[None, :] - want, centre[:, None] - 2 * want, centre[None, :] + 3 * want,
                                centre[:, None] + 4 * want])[None]
        torch.testing.assert_close(boxes.cpu(), expected, rtol=1e-12, atol=1e-12)


# (level sizes, levelness grid, out_stride): one level; coarser levels at integer and non-integer
# scales; a level finer than the grid in one axis; the grid of the first level itself
LEVELS = [
    ([(8, 12)], (16, 24), 4),
    ([(8, 12), (4, 6), (2, 3)], (16, 24), 3),
    ([(7, 9), (4, 5), (2, 3), (1, 2), (1, 1)], (14, 18), 4),
    ([(3, 3), (5, 7)], (6, 6), 3),
    ([(16, 20), (5, 7), (3, 3)], (16, 20), 4),
    ([(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)], (32, 40), 4),
]


@pytest.mark.backends("gather_levelness", reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", range(len(LEVELS)))
@pytest.mark.parametrize("ties", [None, 2])
def test_gather_levelness_random_matches_reference(backend, device, dtype, case, ties, make, assert_close_in,
                                                   skip_interpreted_bfloat16):
    """Random offsets; normal or integer levelness logits (``ties=2``: exact ties between levels
    and with the background, where the first maximum wins).  float16/bfloat16 against the
    reference of the float32 inputs, within the dtype's rounding."""
    skip_interpreted_bfloat16(backend, device, dtype)
    sizes, grid, out_stride = LEVELS[case]
    offsets, levelness = make.levels(case, sizes, grid, dtype=dtype, device=device, scale=50.0, ties=ties)
    boxes, fg = ops.gather_levelness(offsets, levelness, out_stride, backend=backend)
    want, want_fg = reference.gather_levelness([_upcast(o) for o in offsets], _upcast(levelness), out_stride)
    assert boxes.dtype == dtype
    assert torch.equal(fg, want_fg)
    assert_close_in(boxes, want)


@pytest.mark.backends("gather_levelness", reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("ties", [None, 2])
def test_gather_levelness_grad_matches_reference(backend, device, dtype, ties, make, assert_close_in):
    """The gradient w.r.t. the offsets goes to the level each pixel chose, bilinearly; half
    offsets get the float32 gradient rounded once."""
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    offsets, levelness = make.levels(3, sizes, dtype=dtype, device=device, ties=ties)
    offsets = [o.requires_grad_() for o in offsets]
    up = [_upcast(o.detach()).requires_grad_() for o in offsets]
    w = torch.randn(2, 4, 16, 24, generator=_gen(4), dtype=F64).to(_upcast(levelness).dtype).to(device)
    got = torch.autograd.grad((_upcast(ops.gather_levelness(offsets, levelness, 4, backend=backend)[0]) * w).sum(),
                              offsets)
    want = torch.autograd.grad((reference.gather_levelness(up, _upcast(levelness), 4)[0] * w).sum(), up)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        assert_close_in(a, b)


@pytest.mark.backends("gather_levelness", reference=False)
@pytest.mark.parametrize("ties", [None, 2])
def test_gather_levelness_gradcheck(backend, device, ties, make, skip_interpreted):
    skip_interpreted(backend, device, "gradcheck's 350 evaluations")
    offsets, levelness = make.levels(5, [(3, 3), (5, 7)], b=1, device=device, ties=ties)
    offsets = [o.requires_grad_() for o in offsets]
    torch.autograd.gradcheck(lambda *o: ops.gather_levelness(list(o), levelness, 4, backend=backend)[0],
                             tuple(offsets))


@pytest.mark.backends("gather_levelness")
def test_gather_levelness_levelness_gets_no_gradient(backend, device, make):
    offsets, levelness = make.levels(6, [(8, 12)], device=device)
    levelness.requires_grad_()
    boxes, _ = ops.gather_levelness([o.requires_grad_() for o in offsets], levelness, 4, backend=backend)
    assert torch.autograd.grad(boxes.sum(), levelness, allow_unused=True)[0] is None


@pytest.mark.backends("gather_levelness")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_levelness_nan_logits_follow_torch_argmax(backend, device, dtype):
    """torch.argmax: the first maximum, and a NaN counts as the maximum (the first NaN wins);
    foreground = argmax over all channels != 0, so a NaN background logit is background."""
    g = torch.Generator().manual_seed(3)
    sizes = [(8, 10), (4, 5), (2, 3)]
    offsets = [(torch.rand(2, 4, h, w, generator=g, dtype=torch.float64) * 50).to(dtype).to(device) for h, w in sizes]
    levelness = torch.randn(2, 4, 8, 10, generator=g, dtype=torch.float64).to(dtype)
    levelness[0, 2, 0, :] = NAN  # a NaN level-2 logit: level 2 wins, foreground
    levelness[0, 3, 1, :] = NAN  # a NaN on the last level
    levelness[0, 0, 2, :] = NAN  # a NaN background logit: background
    levelness[1, :, 3, :] = NAN  # every logit NaN: level 1, background
    levelness[1, 2:, 4, :] = NAN  # two NaN levels: the first wins
    levelness = levelness.to(device)
    boxes, fg = ops.gather_levelness(offsets, levelness, 4, backend=backend)
    rb, rfg = reference.gather_levelness(offsets, levelness, 4)
    assert torch.equal(fg, rfg)
    torch.testing.assert_close(boxes, rb)
    # the backward routes the gradient to the level the forward chose
    offsets = [o.requires_grad_() for o in offsets]
    w = torch.randn(rb.shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    got = torch.autograd.grad((ops.gather_levelness(offsets, levelness, 4, backend=backend)[0] * w).sum(), offsets)
    want = torch.autograd.grad((reference.gather_levelness(offsets, levelness, 4)[0] * w).sum(), offsets)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.backends("gather_levelness", reference=False)
def test_gather_levelness_gradient_of_strided_offsets(backend, device):
    g = torch.Generator().manual_seed(4)
    offsets = [(torch.rand(1, h, 4, w, generator=g, dtype=torch.float64) * 30).to(device).transpose(1, 2)
               for h, w in [(6, 8), (3, 4)]]  # [1, 4, h, w] views of [1, h, 4, w]
    offsets = [o.requires_grad_() for o in offsets]
    assert not any(o.is_contiguous() for o in offsets)
    levelness = torch.randn(1, 3, 6, 8, generator=g, dtype=torch.float64).to(device)
    w = torch.randn(1, 4, 6, 8, generator=g, dtype=torch.float64).to(device)
    got = torch.autograd.grad((ops.gather_levelness(offsets, levelness, 4, backend=backend)[0] * w).sum(), offsets)
    contiguous = [o.detach().contiguous().requires_grad_() for o in offsets]
    want = torch.autograd.grad((reference.gather_levelness(contiguous, levelness, 4)[0] * w).sum(), contiguous)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.backends("gather_levelness")
def test_gather_levelness_empty_inputs_reach_the_kernel(backend, device):
    impl = _dispatch.select("gather_levelness", backend, torch.device(device))
    boxes, fg = impl([torch.zeros(2, 4, 1, 1, device=device)], torch.zeros(2, 2, 0, 3, device=device), 4)
    assert boxes.shape == (2, 4, 0, 3) and fg.shape == (2, 0, 3) and fg.dtype == torch.bool
    boxes, fg = impl([torch.zeros(0, 4, 2, 2, device=device)], torch.zeros(0, 2, 4, 4, device=device), 4)
    assert boxes.shape == (0, 4, 4, 4) and fg.shape == (0, 4, 4)


def _taps(out_size, in_size, dtype):
    """box_math.h's bilinear_coeffs of every output index, in ``dtype`` one rounding per operation:
    ``(i0, i1, w0, w1)``."""
    scale = torch.tensor(in_size, dtype=dtype) / torch.tensor(out_size, dtype=dtype)
    src = (scale * (torch.arange(out_size, dtype=dtype) + 0.5) - 0.5).clamp(min=0)
    lo = src.long().clamp(max=in_size - 1)
    l1 = src - lo.to(dtype)
    return lo, lo + (lo < in_size - 1).long(), 1 - l1, l1


def _gather_levelness_formula(offsets, levelness, out_stride):
    """gather_levelness written out as the cpp kernel's arithmetic (box_math.h: bilinear_coeffs'
    taps, bilinear()'s order wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11), then the
    decoding around cell_centres): a torch op per IEEE operation, so the kernel must match it bit
    for bit (the reference's F.interpolate associates differently: equal within rounding only)."""
    dtype = levelness.dtype
    _, _, h, w = levelness.shape
    level = levelness[:, 1:].argmax(dim=1)  # [B, H, W]
    out = torch.zeros(levelness.shape[0], 4, h, w, dtype=dtype)
    for i, o in enumerate(offsets):
        y0, y1, wy0, wy1 = _taps(h, o.shape[2], dtype)
        x0, x1, wx0, wx1 = _taps(w, o.shape[3], dtype)
        wy0, wy1, wx0, wx1 = wy0[:, None], wy1[:, None], wx0[None, :], wx1[None, :]

        def tap(ys, xs, o=o):
            return o[:, :, ys][:, :, :, xs]

        v = wy0 * (wx0 * tap(y0, x0) + wx1 * tap(y0, x1)) + wy1 * (wx0 * tap(y1, x0) + wx1 * tap(y1, x1))
        out = torch.where((level == i)[:, None], v, out)
    cx = cell_centres(w, out_stride, dtype)
    cy = cell_centres(h, out_stride, dtype)[:, None]
    boxes = torch.stack([cx - out[:, 0], cy - out[:, 1], cx + out[:, 2], cy + out[:, 3]], dim=1)
    return boxes, levelness.argmax(dim=1) != 0


# (level sizes, levelness grid): widths around the cpp kernel's vector blocks (8 locations for the
# level pick, 4 for the boxes) and their tails, a one-column grid, levels finer than the grid
BITWISE_LEVELS = [
    ([(2, 1), (1, 1)], (3, 1)),
    ([(4, 2), (2, 1), (1, 1)], (5, 3)),
    ([(3, 4), (2, 2)], (6, 8)),
    ([(6, 5), (3, 3), (2, 2), (1, 1), (1, 1)], (11, 9)),
    ([(9, 13), (5, 7), (3, 4), (2, 2), (1, 1)], (17, 27)),
    ([(20, 33), (4, 6)], (10, 17)),
]


@pytest.mark.skipif("cpp" not in ops.available_backends("cpu")["gather_levelness"], reason="no C++ extension")
@pytest.mark.parametrize("backend,device", [pytest.param("cpp", "cpu", id="cpp-cpu")])  # the promise of the cpp kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(BITWISE_LEVELS)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_gather_levelness_cpp_bit_for_bit(backend, device, dtype, case, layout, make, assert_bitwise, assert_close_in):
    """The cpp forward equals its arithmetic written out (:func:`_gather_levelness_formula`) bit for
    bit, and the reference within rounding (float32, float64): random offsets with NaN
    and +-inf entries, levelness logits with exact ties, NaN and inf, batches of 3, offsets and
    levelness contiguous, channels-last or strided views."""
    sizes, grid = BITWISE_LEVELS[case]
    g = _gen(case)
    offsets, levelness = make.levels(case, sizes, grid, b=3, dtype=dtype, scale=80.0, ties=3)
    levelness = levelness + torch.randn(levelness.shape, generator=g, dtype=F64).to(dtype) * (case % 2)
    for o in offsets:
        flat = o.view(-1)
        pick = torch.randint(0, flat.numel(), (3 * len(flat) // 10 + 1,), generator=g)
        flat[pick] = torch.tensor([NAN, INF, -INF, 1e30], dtype=dtype)[torch.arange(pick.numel()) % 4]
    lv = levelness.view(-1)
    pick = torch.randint(0, lv.numel(), (lv.numel() // 10 + 1,), generator=g)
    lv[pick] = torch.tensor([NAN, INF, -INF], dtype=dtype)[torch.arange(pick.numel()) % 3]
    if layout == "channels_last":
        offsets = [o.contiguous(memory_format=torch.channels_last) for o in offsets]
        levelness = levelness.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        offsets = [torch.cat([o, o], dim=3)[..., ::2] for o in offsets]
        levelness = torch.cat([levelness, levelness], dim=2)[:, :, ::2]
    boxes, fg = ops.gather_levelness(offsets, levelness, 4, backend=backend)
    want, want_fg = _gather_levelness_formula(offsets, levelness, 4)
    assert torch.equal(fg, want_fg)
    assert_bitwise(boxes, want, backend, device)
    # F.interpolate associates differently: the special values (inf * 0, 1e30 cancelling) left out
    finite = [torch.where(o.abs() < 1e6, o, 3.0).contiguous() for o in offsets]
    ref, ref_fg = reference.gather_levelness(finite, levelness.contiguous(), 4)
    assert torch.equal(fg, ref_fg)
    assert_close_in(ops.gather_levelness(finite, levelness, 4, backend=backend)[0], ref)
