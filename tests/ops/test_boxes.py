"""nms / batched_nms / box_iou on every (backend, device) pair that runs here: against the
reference (bit for bit) and torchvision, hand-computed cases, and inputs built to break the
kernels' fast paths (csrc/cpu/simd.h's 8-lane vectors, Triton's tiles): lengths around the vector
width, IoUs exactly at the threshold in every lane, float16/bfloat16 rounding, NaN / inf /
inverted / huge boxes, thresholds outside [0, 1].  tests/ops/test_cpp_simd.py runs the cpp cases
once more on the scalar path."""
import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference

F64 = torch.float64
HALF = [torch.float16, torch.bfloat16]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
NAN, INF = float("nan"), float("inf")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _next_down(x: float, dtype=torch.float32) -> float:
    return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(-INF, dtype=dtype)))


# --------------------------------------------------------------------------- box_iou
@pytest.mark.backends("box_iou")
def test_box_iou_hand_computed(backend, device):
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]], device=device)
    # overlap 1, union 4+4-1; touching corners; identical
    expected = torch.tensor([[1 / 7, 0.0, 1.0]], device=device)
    torch.testing.assert_close(ops.box_iou(a, b, backend=backend), expected)


@pytest.mark.backends("box_iou")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,n,m", [(0, 1, 1), (1, 17, 5), (0, 37, 23), (1, 37, 23), (2, 37, 23), (2, 300, 70)])
def test_box_iou_random_matches_reference_and_torchvision(backend, device, dtype, seed, n, m, make, assert_close_in):
    a = make.boxes(n, seed=seed, dtype=dtype, device=device)
    b = make.boxes(m, seed=seed + 10, dtype=dtype, device=device)
    out = ops.box_iou(a, b, backend=backend)
    assert out.dtype == dtype
    assert_close_in(out, reference.box_iou(a, b))
    assert_close_in(out, torchvision.ops.box_iou(a.cpu(), b.cpu()))


@pytest.mark.backends("box_iou")
def test_box_iou_empty_inputs_reach_the_kernel(backend, device):
    impl = _dispatch.select("box_iou", backend, torch.device(device))
    a = torch.zeros(0, 4, device=device)
    b = torch.rand(3, 4, device=device)
    assert impl(a, b).shape == (0, 3) and impl(b, a).shape == (3, 0)
    assert ops.box_iou(a, b, backend=backend).shape == (0, 3)


def _hard_boxes(device, dtype=torch.float32):
    """Random boxes with coordinates up to 4000 (products round), plus identical, touching,
    nested and zero-area boxes and inexact binary fractions."""
    boxes = torch.cat([
        torch.rand(40, 2, generator=_gen(1), dtype=F64) * 3000,
        torch.rand(40, 2, generator=_gen(2), dtype=F64) * 900,
    ], 1)
    boxes[:, 2:] += boxes[:, :2]
    boxes[1] = boxes[0]
    boxes[2] = torch.tensor([boxes[0, 2], boxes[0, 1], boxes[0, 2] + 10, boxes[0, 3]])
    boxes[3] = boxes[0] + torch.tensor([1 / 3, 1 / 7, -2 / 3, -5 / 7], dtype=F64)
    boxes[4, 2:] = boxes[4, :2]
    return boxes.to(dtype).to(device)


@pytest.mark.backends("box_iou", reference=False)
def test_box_iou_float32_is_bitwise_the_reference(backend, device, assert_bitwise):
    a = _hard_boxes(device)
    assert_bitwise(ops.box_iou(a, a[::3], backend=backend), reference.box_iou(a, a[::3]), backend, device)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.backends("box_iou", reference=False)
@pytest.mark.parametrize("dtype", HALF)
def test_box_iou_half_is_float32_rounded_once(backend, device, dtype, assert_bitwise):
    """float16/bfloat16 boxes of 300-4000 px: areas far above float16's 65504, so native half
    arithmetic would give inf / NaN; computed in float32 and rounded once, exactly."""
    a = _hard_boxes("cpu", F64).clamp(max=4000).to(dtype).to(device)
    out = ops.box_iou(a, a[::3], backend=backend)
    assert out.dtype == dtype
    want = reference.box_iou(a.float(), a[::3].float()).to(dtype)
    assert torch.isfinite(want[5:, 5:]).all()
    assert_bitwise(out, want, backend, device)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NaN boxes, 0/0 in the interpreter
@pytest.mark.backends("box_iou", reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
def test_box_iou_special_boxes(backend, device, dtype, make, assert_bitwise):
    """Zero-area, inverted, outside, NaN and inf boxes, and boxes whose areas exceed float16's
    65504 (native half arithmetic would give inf / NaN): computed in float32 (float64) and
    rounded once, exactly."""
    s = make.special(dtype, device)
    up = s.double() if dtype == F64 else s.float()
    assert_bitwise(ops.box_iou(s, s, backend=backend), reference.box_iou(up, up).to(dtype), backend, device)
    big = torch.tensor([[0.0, 0.0, 300.0, 400.0], [100.0, 0.0, 500.0, 400.0]], device=device).to(dtype)  # areas 120000, 160000
    assert ops.box_iou(big, big, backend=backend)[0, 1].item() == pytest.approx(80000 / 200000, rel=2**-7)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the intended 0/0
@pytest.mark.backends("box_iou")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_box_iou_degenerate_boxes_match_torchvision(backend, device, dtype, make):
    a = make.boxes(37, size=60, seed=1, dtype=dtype, max_wh=30, min_wh=1, device=device)
    b = make.boxes(45, size=60, seed=2, dtype=dtype, max_wh=30, min_wh=1, device=device)
    a[0] = a[1]  # identical boxes: IoU exactly 1
    a[2, 2:] = a[2, :2]  # zero area
    b[3] = a[2]  # zero area against zero area: 0/0 = NaN, as torchvision
    out = ops.box_iou(a, b, backend=backend)
    assert out.dtype == dtype
    want = torchvision.ops.box_iou(a.float().cpu(), b.float().cpu()).to(dtype)
    torch.testing.assert_close(out.cpu(), want, equal_nan=True)
    assert torch.isnan(out[2, 3])


@pytest.mark.backends("box_iou", reference=False)
def test_box_iou_backward_raises_instead_of_a_silent_zero(backend, device, make):
    a = make.boxes(3, seed=0, dtype=F64, device=device).requires_grad_()
    which = "triton" if backend == "triton" else "cpp/cuda"
    with pytest.raises(RuntimeError, match=f"box_iou: the {which} kernels have no backward"):
        ops.box_iou(a, a.detach(), backend=backend).sum().backward()


def test_box_iou_default_backend_stays_differentiable(make, assert_close_in):
    """``backend=None`` takes the reference when an input requires grad."""
    a, b = make.boxes(3, seed=0, dtype=F64).requires_grad_(), make.boxes(4, seed=1, dtype=F64)
    (got,) = torch.autograd.grad(ops.box_iou(a, b).sum(), a)
    (want,) = torch.autograd.grad(reference.box_iou(a, b).sum(), a)
    assert_close_in(got, want)


# ------------------------------------------------------------------------------- nms
def _check_nms(backend, device, boxes, scores, threshold, idxs=None, torchvision_too=True):
    """The backend's kernel itself (no argument checks: any threshold) against the reference, bit
    for bit, and (float32/float64 nms) against torchvision's CPU kernel."""
    boxes, scores = boxes.to(device), scores.to(device)
    if idxs is None:
        keep = _dispatch.select("nms", backend, torch.device(device))(boxes, scores, threshold)
        expected = reference.nms(boxes, scores, threshold)
        if torchvision_too and boxes.dtype in (torch.float32, F64):
            assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), threshold))
    else:
        idxs = idxs.to(device)
        keep = _dispatch.select("batched_nms", backend, torch.device(device))(boxes, scores, idxs, threshold)
        expected = reference.batched_nms(boxes, scores, idxs, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, expected)
    return keep


@pytest.mark.backends("nms")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,n", [(0, 1), (1, 50), (2, 400), (3, 700)])
def test_nms_random_matches_reference_and_torchvision(backend, device, dtype, seed, n, make, skip_interpreted):
    if n > 400:
        skip_interpreted(backend, device, f"nms of {n} boxes at five thresholds")
    boxes = make.boxes(n, size=200, seed=seed, dtype=dtype, device=device)
    scores = torch.rand(n, generator=_gen(seed + 100), dtype=F64).to(dtype).to(device)
    idxs = torch.randint(0, 4, (n,), generator=_gen(seed)).to(device)
    for threshold in (0.0, 0.3, 0.5, 0.7, 1.0):
        keep = ops.nms(boxes, scores, threshold, backend=backend)
        assert keep.dtype == torch.int64
        assert torch.equal(keep, reference.nms(boxes, scores, threshold))
        assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), threshold))
        keep = ops.batched_nms(boxes, scores, idxs, threshold, backend=backend)
        assert torch.equal(keep, reference.batched_nms(boxes, scores, idxs, threshold))


@pytest.mark.backends("nms")
def test_nms_hand_computed(backend, device):
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], device=device)
    # box 3 (0.95) suppresses 0 (IoU 1) and 1 (IoU 9/11); 2 is disjoint.
    assert ops.nms(boxes, scores, 0.5, backend=backend).tolist() == [3, 2]
    # IoU(0,1) = 90/110 = 0.818...: at a threshold above it nothing overlapping that much.
    assert ops.nms(boxes, scores, 0.85, backend=backend).tolist() == [3, 1, 2]
    one = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device)
    assert ops.nms(one, torch.ones(1, device=device), 0.5, backend=backend).tolist() == [0]


@pytest.mark.backends("nms")
def test_nms_ties_keep_input_order(backend, device):
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 3 + [[50, 50, 60, 60.0]], device=device)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5], device=device)
    assert ops.nms(boxes, scores, 0.5, backend=backend).tolist() == [0, 3]
    boxes = torch.tensor([[1.0, 2.0, 11.0, 12.0]], device=device).repeat(6, 1)
    scores = torch.tensor([0.5, 0.7, 0.7, 0.1, 0.7, 0.5], device=device)
    assert ops.nms(boxes, scores, 0.5, backend=backend).tolist() == [1]  # first of the tied best
    assert ops.nms(boxes, scores, 1.0, backend=backend).tolist() == [1, 2, 4, 0, 5, 3]  # stable order
    idxs = torch.tensor([0, 1, 0, 1, 0, 1], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [1, 2]


@pytest.mark.backends("nms")
def test_nms_iou_exactly_at_threshold_is_kept(backend, device):
    boxes = torch.tensor([[0, 0, 2, 1.0], [1, 0, 3, 1.0]], device=device)  # inter 1, union 3
    scores = torch.tensor([1.0, 0.5], device=device)
    iou = float(reference.box_iou(boxes, boxes)[0, 1])
    assert ops.nms(boxes, scores, iou, backend=backend).tolist() == [0, 1]  # not strictly greater
    assert ops.nms(boxes, scores, _next_down(iou), backend=backend).tolist() == [0]
    # IoU([0, 0, 4, 1], [0, 0, 2, 1]) = IoU([0, 0, 4, 1], [2, 0, 4, 1]) = 1/2 exactly
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0], [2.0, 0.0, 4.0, 1.0]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.8], device=device)
    for thr, expected in [(0.5, [0, 1, 2]), (0.4999, [0])]:
        assert ops.nms(boxes, scores, thr, backend=backend).tolist() == expected


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # 0/0 in the interpreter's unused lanes
@pytest.mark.backends("nms")
@pytest.mark.parametrize("dtype", HALF)
def test_nms_half_hand_computed(backend, device, dtype):
    """float16/bfloat16 boxes whose IoUs (1/2 and 3/4) and thresholds are exact in the dtype, so no
    rounding decides (Triton's interpreter truncates where a GPU rounds: the random half cases run on a
    GPU only).  Box 0 (0, 0, 4, 4) has IoU 1/2 with box 1 (0, 0, 4, 2) and 3/4 with box 2 (0, 0, 4, 3)."""
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 4.0, 3.0]], dtype=dtype, device=device)
    scores = torch.tensor([0.75, 0.25, 0.5], dtype=dtype, device=device)
    for thr, expected in [(0.5, [0, 1]), (0.4375, [0]), (0.75, [0, 2, 1]), (0.0, [0])]:
        assert ops.nms(boxes, scores, thr, backend=backend).tolist() == expected, thr
        idxs = torch.tensor([0, 1, 0], device=device)  # box 1 in a class of its own: never suppressed
        assert ops.batched_nms(boxes, scores, idxs, thr, backend=backend).tolist() == sorted(
            set(expected) | {1}, key=[0, 2, 1].index), thr


@pytest.mark.backends("nms", reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_iou_exactly_at_the_threshold_in_every_lane(backend, device, dtype):
    # The head box [0, 0, 2, 1] has IoU exactly 1/2 with [0, 0, 1, 1] and 1/2 + (a little) with
    # [0, 0, 1 + e, 1]; 40 such candidates, alternating, cover every lane and the tail.
    head = [[0.0, 0.0, 2.0, 1.0]]
    eps = 1e-5 if dtype == torch.float32 else 1e-12
    cands = [[0.0, 0.0, 1.0 + (eps if k % 2 else 0.0), 1.0] for k in range(40)]
    boxes = torch.tensor(head + cands, dtype=dtype)
    scores = torch.linspace(1, 0, len(boxes), dtype=dtype)
    iou = reference.box_iou(boxes[:1], boxes[1:])[0]
    assert (iou[0::2] == 0.5).all() and (iou[1::2] > 0.5).all()
    # exactly at the threshold: kept, (and then the candidates suppress one another: IoU 1 or ~1)
    assert _check_nms(backend, device, boxes, scores, 0.5).tolist() == [0, 1]
    assert _check_nms(backend, device, boxes, scores, _next_down(0.5, dtype)).tolist() == [0]


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NaN boxes, 0/0 in the interpreter
@pytest.mark.backends("nms")
def test_nms_degenerate_and_nan(backend, device, make):
    boxes = torch.tensor(
        [[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [NAN, 0, 10, 10], [0, 0, 10, 10]], device=device
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], device=device)
    # zero-area boxes have IoU 0/0 = NaN with each other: never suppress; the NaN box
    # neither suppresses nor is suppressed; box 4 is suppressed by box 2.
    keep = ops.nms(boxes, scores, 0.5, backend=backend)
    assert keep.tolist() == [0, 1, 2, 3]
    assert keep.tolist() == torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.5).tolist()
    boxes = make.special(torch.float32, device)
    scores = torch.linspace(1, 0.1, len(boxes), device=device)
    for thr in (0.0, 0.5):
        keep = ops.nms(boxes, scores, thr, backend=backend)
        assert torch.equal(keep, reference.nms(boxes, scores, thr))
        assert 7 in keep.tolist()  # the NaN box is never suppressed
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [NAN, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1]], device=device)
    scores = torch.tensor([0.9, 0.95, 0.8], device=device)  # the best box is the NaN one
    assert torch.equal(ops.nms(boxes, scores, 0.5, backend=backend), reference.nms(boxes, scores, 0.5))


# NaN, infinite, zero-area, inverted, identical and huge boxes beyond make.special's: repeated
# (three times 18 boxes), every kind lands in a vector body and in a tail.
MORE_SPECIAL = [
    [12, 11, 31, 29],
    [10, 10, 30, NAN],
    [INF, 0, INF, 20],  # inf - inf: NaN width
    [30, 10, 10, 30],  # inverted in x only: negative area
    [-1e30, -1e30, 1e30, 1e30],  # area overflows to inf in float32
    [1e30, 1e30, 3e30, 3e30],
    [-5, -5, 15, 15],
    [11, 9, 29, 31],
]


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
@pytest.mark.backends("nms", reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [-1.0, -0.0, 0.0, 0.2, 0.5, 0.9, 1.0, 1.5, NAN])
def test_nms_nonfinite_degenerate_boxes_and_any_threshold(backend, device, dtype, threshold, make):
    boxes = torch.cat([make.special(F64), torch.tensor(MORE_SPECIAL, dtype=F64)]).repeat(3, 1).to(dtype)
    n = len(boxes)
    g = _gen(0)
    for scores in ((torch.rand(n, generator=g) * 4).floor().to(dtype), torch.full((n,), 0.5, dtype=dtype)):
        _check_nms(backend, device, boxes, scores, threshold)
        _check_nms(backend, device, boxes, scores, threshold, torch.randint(0, 2, (n,), generator=g))


@pytest.mark.backends("nms", reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 130, 600])
def test_nms_lengths_around_the_vector_width(backend, device, dtype, n, make, skip_interpreted):
    if n > 130:
        skip_interpreted(backend, device, f"nms of {n} boxes at three thresholds")
    boxes, scores = make.clustered(n, seed=n, dtype=dtype)
    for threshold in (0.3, 0.5, 0.7):
        _check_nms(backend, device, boxes, scores, threshold)
        _check_nms(backend, device, boxes, scores, threshold, torch.randint(0, 3, (n,), generator=_gen(n)))


@pytest.mark.backends("nms", reference=False)
@pytest.mark.parametrize("n", [5000, 20000])
def test_nms_benchmark_sizes_match_torchvision(backend, device, n, make, skip_interpreted):
    skip_interpreted(backend, device, f"nms of {n} boxes")
    boxes, _ = make.clustered(n, seed=n, objects=n // 20, image=1024.0)
    scores = torch.rand(n, generator=_gen(n))
    keep = ops.nms(boxes.to(device), scores.to(device), 0.5, backend=backend)
    assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes, scores, 0.5))
    assert 0 < len(keep) < n


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # zero-area pairs: 0/0
@pytest.mark.backends("nms", reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n,size", [(1, 80), (63, 80), (64, 80), (65, 80), (150, 80), (3000, 400)])
def test_nms_duplicates_nan_zero_area_and_score_ties(backend, device, dtype, n, size, make, skip_interpreted,
                                                      skip_interpreted_bfloat16):
    """Around the 64-box words of the GPU suppression mask: duplicates (IoU exactly 1), a NaN
    coordinate, a zero-area box and few distinct scores, in every dtype."""
    if n > 1000:
        skip_interpreted(backend, device, f"nms of {n} boxes")
    skip_interpreted_bfloat16(backend, device, dtype)
    boxes = make.boxes(n, size=size, seed=n, dtype=dtype, max_wh=40, min_wh=1, device=device)
    if n > 40:
        boxes[10] = boxes[20]
        boxes[7, 1] = NAN
        boxes[30, 2:] = boxes[30, :2]
    scores = (torch.rand(n, generator=_gen(n + 1)) * 4).round().to(dtype).to(device)  # many equal scores
    idxs = torch.randint(0, 5, (n,), generator=_gen(n + 2)).to(device)
    for thr in (0.0, 0.5, 1.0):
        assert torch.equal(ops.nms(boxes, scores, thr, backend=backend), reference.nms(boxes, scores, thr))
        assert torch.equal(ops.batched_nms(boxes, scores, idxs, thr, backend=backend),
                           reference.batched_nms(boxes, scores, idxs, thr))


def _rounding_pairs(low_dtype, threshold):
    """A head box and candidates nested in it, all exact in ``low_dtype``, whose float32 IoU with
    the head is above ``threshold`` while that IoU rounded to ``low_dtype`` is not above the
    threshold rounded to ``low_dtype`` (what the reference compares)."""
    head = torch.tensor([0.0, 0.0, 30.0, 30.0])
    side = torch.arange(1, 241, dtype=torch.float32) / 8  # exact in float16 and bfloat16 below 30
    side = side[side.to(low_dtype).float() == side]
    w, h = torch.meshgrid(side, side, indexing="ij")
    cands = torch.stack([torch.zeros_like(w), torch.zeros_like(w), w, h], -1).reshape(-1, 4)
    iou = reference.box_iou(head[None], cands)[0]  # float32
    rounded_thr = torch.tensor(threshold).to(low_dtype)
    crossing = (iou > threshold) & ~(iou.to(low_dtype) > rounded_thr)
    return head, cands[crossing]


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NaN boxes, 0/0 in the interpreter
@pytest.mark.backends("nms", reference=False)
@pytest.mark.parametrize("low_dtype", HALF)
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.3])
def test_nms_low_precision_rounds_the_iou_before_comparing(backend, device, low_dtype, threshold):
    head, cands = _rounding_pairs(low_dtype, threshold)
    assert len(cands) > 0, "the construction must yield IoUs that cross the threshold only in float32"
    impl = _dispatch.select("nms", backend, torch.device(device))
    for cand in cands[:: max(1, len(cands) // 8)]:
        pair = torch.stack([head, cand])
        scores = torch.tensor([1.0, 0.5])
        # in float32 the candidate is suppressed; rounded to low_dtype its IoU is not above the threshold
        assert impl(pair.to(device), scores.to(device), threshold).tolist() == [0]
        keep = _check_nms(backend, device, pair.to(low_dtype), scores.to(low_dtype), threshold)
        assert keep.tolist() == [0, 1]
        keep = _check_nms(backend, device, pair.to(low_dtype), scores.to(low_dtype), threshold,
                          torch.zeros(2, dtype=torch.long))
        assert keep.tolist() == [0, 1]
    boxes = torch.cat([head[None], cands]).to(low_dtype)
    scores = torch.linspace(1, 0, len(boxes)).to(low_dtype)
    _check_nms(backend, device, boxes, scores, threshold)


@pytest.mark.backends("nms", reference=False)
@pytest.mark.parametrize("low_dtype", HALF)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.65, 0.7, 0.95, 1.0, 70000.0, -70000.0])
def test_nms_low_precision_random_against_the_reference(backend, device, low_dtype, threshold, make,
                                                       skip_interpreted_bfloat16):
    skip_interpreted_bfloat16(backend, device, low_dtype)
    boxes, scores = make.clustered(400, seed=3, dtype=low_dtype)
    _check_nms(backend, device, boxes, scores, threshold)
    _check_nms(backend, device, boxes, scores, threshold, torch.randint(0, 2, (400,), generator=_gen(1)))


@pytest.mark.backends("nms")
@pytest.mark.parametrize("dtype", FLOATS)
def test_nms_empty_inputs_reach_the_kernel(backend, device, dtype):
    empty = torch.zeros(0, 4, dtype=dtype, device=device), torch.zeros(0, dtype=dtype, device=device)
    keep = _dispatch.select("nms", backend, torch.device(device))(*empty, 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    impl = _dispatch.select("batched_nms", backend, torch.device(device))
    keep = impl(*empty, torch.zeros(0, dtype=torch.int64, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


@pytest.mark.backends("nms", reference=False)
def test_nms_half_upcasts(backend, device, make):
    boxes = make.boxes(200, seed=5, device=device).half()
    scores = torch.rand(200, generator=_gen(5)).half().to(device)
    expected = reference.nms(boxes.float(), scores.float(), 0.5)
    assert ops.nms(boxes, scores, 0.5, backend=backend).tolist() == expected.tolist()


# ----------------------------------------------------------------------- batched_nms
@pytest.mark.backends("batched_nms")
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_nms_matches_torchvision(backend, device, seed, make):
    n = 300
    g = _gen(seed)
    boxes = make.boxes(n, seed=seed)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, 5, (n,), generator=g)
    keep = ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5, backend=backend)
    assert torch.equal(keep.cpu(), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.backends("batched_nms")
def test_batched_nms_classes_do_not_interact(backend, device):
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 3, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    idxs = torch.tensor([0, 1, 0], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [0, 1]
    assert ops.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5, backend=backend).shape == (0,)


@pytest.mark.backends("batched_nms")
def test_batched_nms_categories_beyond_int32(backend, device):
    """Category ids are int64: 0 and 2**32 (equal after truncation to int32) stay different."""
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 4, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 2**32, -(2**32), 2**32 + 1], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [0, 1, 2, 3]
    idxs = torch.tensor([5, 2**40 + 5, 5, 2**40 + 5], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [0, 1]
