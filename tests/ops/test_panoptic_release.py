"""ops.panoptic_from_dense_release: the release's masks (x stride bilinear, >= sigma) and fusion,
every backend against the reference (F.interpolate of every soft mask).

ATen's CPU bilinear kernel rounds differently for output planes of at most 4096 pixels (a grid of
at most 256 cells at stride 4); the kernels reproduce the larger planes' arithmetic, so the tests
that put values within rounding of sigma use larger grids."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.ops import reference as ref
from rtpanoptic.ops.panoptic_release import _fused_multiply_add

FAST = [b for b in ("cpp",) if b in ops.available_backends("cpu")["panoptic_from_dense_release"]]


def scene(seed: int, hg: int, wg: int, q: int, stride: int = 4, n_c: int = 5, dtype=torch.float32):
    """Dense boxes that jitter around q objects of 10-200 px (so masks have soft borders), queries near them."""
    g = torch.Generator().manual_seed(seed)
    hi, wi = hg * stride, wg * stride
    size = torch.randint(10, 201, (q, 2), generator=g).float()
    x0 = torch.rand(q, generator=g) * (wi - 10)
    y0 = torch.rand(q, generator=g) * (hi - 10)
    obj = torch.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], 1)
    ys = (torch.arange(hg) * stride + stride // 2).float()
    xs = (torch.arange(wg) * stride + stride // 2).float()
    owner = torch.full((hg, wg), -1)
    for j in range(q):  # the last object covering a cell owns it
        inside = (ys[:, None] >= obj[j, 1]) & (ys[:, None] < obj[j, 3]) & (xs >= obj[j, 0]) & (xs < obj[j, 2])
        owner[inside] = j
    dense = torch.rand(4, hg, wg, generator=g) * 30
    dense[2:] += dense[:2]
    has = owner >= 0
    jitter = torch.randn(4, hg, wg, generator=g) * 6
    dense[:, has] = obj[owner[has]].t() + jitter[:, has]
    logits = torch.randn(n_c, hg, wg, generator=g) * 2
    probs = logits.softmax(0)
    query_boxes = obj + torch.randn(q, 4, generator=g) * 3
    classes = torch.randint(0, 2, (q,), generator=g)  # classes 0, 1 are things
    scores = torch.rand(q, generator=g)
    is_thing = torch.tensor([True, True] + [False] * (n_c - 2))
    return (dense.to(dtype), probs.to(dtype), query_boxes.to(dtype), classes, scores.to(dtype), is_thing)


def run(args, backend, **kw):
    kw.setdefault("stride", 4)
    kw.setdefault("size", (args[0].shape[1] * kw["stride"], args[0].shape[2] * kw["stride"]))
    return ops.panoptic_from_dense_release(*args, backend=backend, **kw)


def assert_same(a, b):
    assert torch.equal(a.segment_map, b.segment_map)
    for f in ("classes", "queries", "scores", "areas"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=0, atol=0, equal_nan=True, msg=f)


def release_masks(args, stride, size, sigma, score):
    """The release's masks, written out: every soft mask upsampled, then thresholded."""
    dense, probs, qb, cls = args[:4]
    soft = ref._score_map(dense, qb, score) * ref._upcast(probs)[cls]
    up = F.interpolate(soft[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return up[:, : size[0], : size[1]] >= sigma


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed,hg,wg,q,size,score,sigma", [
    (0, 30, 41, 12, (118, 161), "tri", 0.4),
    (1, 25, 33, 20, (99, 130), "iou", 0.3),
    (2, 17, 50, 8, (68, 200), "tri", 0.4),
    (3, 40, 23, 30, (157, 91), "tri", 0.2),
])
def test_equals_reference_per_mask(backend, seed, hg, wg, q, size, score, sigma):
    args = scene(seed, hg, wg, q)
    # overlap 1 and threshold -inf: every non-empty mask is painted, so each segment is one whole mask
    kw = dict(size=size, sigma=sigma, score=score, overlap_threshold=1.0, score_threshold=float("-inf"))
    want, got = run(args, "reference", **kw), run(args, backend, **kw)
    assert_same(got, want)
    masks = release_masks(args, 4, size, sigma, score)
    assert masks.any(dim=(1, 2)).sum() >= 3  # the scene has non-trivial masks
    # first painted segment is its whole mask
    first = int(want.queries[0])
    assert torch.equal(got.segment_map == 1, masks[first])
    # every painted thing's pixels lie inside its own mask
    for k, j in enumerate(got.queries.tolist()):
        if j >= 0:
            assert bool(masks[j][got.segment_map == k + 1].all())


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed", range(4))
def test_default_fusion_equals_reference(backend, seed):
    args = scene(10 + seed, 21, 27, 15)
    kw = dict(size=(81, 105), stuff_area_limit=37, score_threshold=0.2)
    assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@pytest.mark.parametrize("backend", FAST)
def test_probabilities_exactly_at_sigma(backend):
    """Soft values exactly sigma (and one ulp either side): the >= decision at full resolution."""
    args = list(scene(5, 17, 20, 4, n_c=3))  # planes of 68 x 80 > 4096 output pixels (see the module)
    dense, probs, qb = args[0], args[1], args[2]
    dense[:] = qb[0][:, None, None]  # every cell's box is query 0's box: tri score exactly 1
    sigma = 0.4
    s = torch.tensor(sigma, dtype=torch.float32)
    vals = torch.stack([s, torch.nextafter(s, torch.tensor(0.0)), torch.nextafter(s, torch.tensor(1.0))])
    g = torch.Generator().manual_seed(0)
    probs[0] = vals[torch.randint(0, 3, (17, 20), generator=g)]
    args[3] = torch.zeros(4, dtype=torch.int64)
    kw = dict(sigma=sigma, score="tri", overlap_threshold=1.0, size=(67, 77))
    want = run(args, "reference", **kw)
    assert_same(run(args, backend, **kw), want)
    assert 0 < int((want.segment_map == 1).sum()) < 67 * 77  # both sides of sigma occur


@pytest.mark.parametrize("backend", FAST)
def test_nan_and_inf(backend):
    args = list(scene(6, 20, 22, 10))
    args[0][:, 3, 4] = float("nan")
    args[0][0, 10, 10:15] = float("inf")
    args[1][0, 7, 7] = float("nan")
    args[1][1, 12:14, 3] = float("nan")
    args[2][3, 1] = float("nan")
    args[4][2] = float("nan")
    for score in ("iou", "tri"):
        kw = dict(score=score, sigma=0.3, size=(77, 88))
        assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(backend, dtype):
    args = scene(7, 19, 23, 9, dtype=dtype)
    kw = dict(size=(73, 90), sigma=0.35)
    assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("stride,hg,wg,size", [(8, 9, 13, (70, 100)), (1, 15, 12, (15, 11)), (2, 1, 1, (2, 1)),
                                               (4, 10, 10, (0, 40)), (4, 10, 10, (40, 0))])
def test_strides_and_edge_sizes(backend, stride, hg, wg, size):
    args = scene(8, hg, wg, 5, stride=stride)
    kw = dict(stride=stride, size=size, sigma=0.3)
    assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@pytest.mark.parametrize("backend", FAST)
def test_no_queries(backend):
    args = scene(9, 10, 12, 0)
    assert_same(run(args, backend, size=(37, 45)), run(args, "reference", size=(37, 45)))


def test_fused_kernel_arithmetic_matches_interpolate():
    """The fma flag describes this machine's F.interpolate: the fused value formula equals it bit for bit
    (for outputs of more than 4096 elements; ATen takes another path below, see panoptic_release.py)."""
    g = torch.Generator().manual_seed(0)
    fma = _fused_multiply_add(torch.device("cpu"))
    for shape, dtype in (((1, 17, 16), torch.float32), ((30, 37, 53), torch.float32)):
        s = torch.rand(shape, generator=g, dtype=dtype)
        up = F.interpolate(s[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
        assert torch.equal(up, _emulate(s, 4, fma))


def _emulate(s, stride, fma):
    """F.interpolate's value as the kernels compute it (upsample_math.h), in torch, float64-exact fma."""
    def taps(n_out, n_in):
        d = torch.arange(n_out, dtype=s.dtype)
        src = ((d + 0.5) * (1.0 / stride) - 0.5).clamp(min=0)
        i0 = src.floor().long()
        lam = src - i0.to(s.dtype)
        return i0, torch.where(i0 < n_in - 1, i0 + 1, i0), 1 - lam, lam

    def pair(a, b, c, d):  # a * b + c * d, rounded like the kernel
        if not fma:
            return a * b + c * d
        # float32 inputs: the product is exact in float64, then one rounding (no double rounding here)
        return (a.double() * b.double() + (c * d).double()).float()

    _, h, w = s.shape
    y0, y1, wy0, wy1 = taps(h * stride, h)
    x0, x1, wx0, wx1 = taps(w * stride, w)
    r0, r1 = s[:, y0], s[:, y1]
    t0 = pair(r0[:, :, x0], wx0, r0[:, :, x1], wx1)
    t1 = pair(r1[:, :, x0], wx0, r1[:, :, x1], wx1)
    return pair(t0, wy0[:, None], t1, wy1[:, None])


@pytest.mark.parametrize("kw,message", [
    (dict(stride=3), "panoptic_from_dense_release: stride must be a power of two (1, 2, 4, ...), got 3"),
    (dict(stride=0), "panoptic_from_dense_release: stride must be a power of two (1, 2, 4, ...), got 0"),
    (dict(size=(41, 40)), "panoptic_from_dense_release: size must lie in [0, 40] x [0, 48] (the grid 10x12 "
                          "times stride 4), got (41, 40)"),
    (dict(size=(10,)), "panoptic_from_dense_release: size must be a (height, width) pair of ints, got (10,)"),
    (dict(size=(10, 2.0)), "panoptic_from_dense_release: size must be a (height, width) pair of ints, got (10, 2.0)"),
    (dict(score="giou"), "panoptic_from_dense_release: score must be one of ('iou', 'tri'), got 'giou'"),
])
def test_validation(kw, message):
    args = scene(11, 10, 12, 3)
    kw = {"stride": 4, "size": (40, 48), **kw}
    with pytest.raises(ValueError) as err:
        ops.panoptic_from_dense_release(*args, **kw)
    assert str(err.value) == message


def test_validation_shares_panoptic_from_dense_checks():
    dense, probs, qb, cls, scores, is_thing = scene(12, 10, 12, 3)
    with pytest.raises(ValueError, match=r"^panoptic_from_dense_release: query_classes must lie in \[0, 5\)"):
        ops.panoptic_from_dense_release(dense, probs, qb, cls + 5, scores, is_thing, stride=4, size=(40, 48))


@pytest.mark.skipif(not FAST, reason="no C++ kernel built")
def test_cpp_kernel_checks_its_arguments():
    args = scene(13, 10, 12, 3)
    with pytest.raises(RuntimeError, match="panoptic_from_dense_release: stride must be a power of two, got 3"):
        torch.ops.rtpanoptic.panoptic_from_dense_release(*args, 3, 30, 36, 0.4, "tri", 0.0, 0.5, 0, True)
    with pytest.raises(RuntimeError, match=r"panoptic_from_dense_release: size must lie in \[0, 40\] x \[0, 48\]"):
        torch.ops.rtpanoptic.panoptic_from_dense_release(*args, 4, 41, 36, 0.4, "tri", 0.0, 0.5, 0, True)


@pytest.mark.skipif(not FAST, reason="no C++ kernel built")
def test_opcheck_and_fake():
    args = scene(14, 9, 11, 4)
    call = (*args, 4, 33, 42, 0.4, "tri", 0.0, 0.5, 0, _fused_multiply_add(torch.device("cpu")))
    torch.library.opcheck(torch.ops.rtpanoptic.panoptic_from_dense_release, call,
                          test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in call]
        seg = torch.ops.rtpanoptic.panoptic_from_dense_release(*fake)
    assert tuple(seg[0].shape) == (33, 42) and seg[0].dtype == torch.int32
