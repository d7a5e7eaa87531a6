"""ops.panoptic_from_dense_release: the release's masks (x stride bilinear, >= sigma) and fusion,
every backend against the reference (F.interpolate of every soft mask) on the same device.

The kernels reproduce the arithmetic of their device's F.interpolate (the fma flag), so a kernel
equals the reference on its own device: cpp and interpreted Triton the CPU reference, cuda and
compiled Triton the CUDA one.  ATen's CPU bilinear kernel rounds differently for output planes of
at most 4096 pixels (a grid of at most 256 cells at stride 4); the kernels reproduce the larger
planes' arithmetic, so the tests that put values within rounding of sigma use larger grids.
Triton's interpreter runs ~0.4 ms per program: its cases are scaled down (64 x 96 images, boxes of
10-60 px, few queries)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.ops import reference as ref
from rtpanoptic.ops import registry
from rtpanoptic.ops.panoptic_release import _fused_multiply_add

OP = "panoptic_from_dense_release"
BACKENDS = pytest.mark.backends(OP, reference=False)
HAS_CPP = "cpp" in ops.available_backends("cpu")[OP]
HAS_GPU = torch.cuda.is_available()
TRITON_CPU = "triton" in ops.available_backends("cpu")[OP]
GPU_BACKENDS = [b for b in (ops.available_backends("cuda")[OP] if HAS_GPU else []) if b != "reference"]


def scene(seed: int, hg: int, wg: int, q: int, stride: int = 4, n_c: int = 5, dtype=torch.float32,
          sizes=(10, 201)):
    """Dense boxes that jitter around q objects of ``sizes`` px (10-200: soft mask borders), queries near them."""
    g = torch.Generator().manual_seed(seed)
    hi, wi = hg * stride, wg * stride
    size = torch.randint(sizes[0], sizes[1], (q, 2), generator=g).float()
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
    return [dense.to(dtype), probs.to(dtype), query_boxes.to(dtype), classes, scores.to(dtype), is_thing]


def interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def on(args, device):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


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


SCENES = [  # seed, grid h, grid w, queries, output size, score, sigma
    (0, 30, 41, 12, (118, 161), "tri", 0.4),
    (1, 25, 33, 20, (99, 130), "iou", 0.3),
    (2, 17, 50, 8, (68, 200), "tri", 0.4),
    (3, 40, 23, 30, (157, 91), "tri", 0.2),
]
SMALL_SCENES = [  # for the interpreter: 64 x 96 outputs (6144 pixels > 4096), boxes of 10-60 px
    (0, 16, 24, 8, (64, 96), "tri", 0.4),
    (1, 16, 24, 8, (61, 90), "iou", 0.3),
    (3, 17, 25, 10, (67, 97), "tri", 0.2),
]


def _scene_for(backend, device, case):
    seed, hg, wg, q, size, score, sigma = case
    sizes = (10, 61) if interpreted(backend, device) else (10, 201)
    return on(scene(seed, hg, wg, q, sizes=sizes), device), size, score, sigma


@BACKENDS
@pytest.mark.parametrize("case", range(4))
def test_equals_reference_per_mask(backend, device, case):
    cases = SMALL_SCENES if interpreted(backend, device) else SCENES
    if case >= len(cases):
        pytest.skip("the interpreter runs fewer scenes")
    args, size, score, sigma = _scene_for(backend, device, cases[case])
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


@BACKENDS
@pytest.mark.parametrize("case", range(2))
def test_each_mask_alone_is_the_release_mask(backend, device, case):
    """Query by query (alone, so nothing overlaps it): its segment is exactly the release's mask."""
    cases = SMALL_SCENES if interpreted(backend, device) else SCENES
    args, size, score, sigma = _scene_for(backend, device, cases[case])
    masks = release_masks(args, 4, size, sigma, score)
    n_q = args[2].shape[0] if not interpreted(backend, device) else 5
    for j in range(n_q):
        one = [args[0], args[1], args[2][j:j + 1], args[3][j:j + 1], args[4][j:j + 1], args[5]]
        got = run(one, backend, size=size, sigma=sigma, score=score, score_threshold=float("-inf"))
        things = [k + 1 for k, q in enumerate(got.queries.tolist()) if q == 0]
        assert things == ([1] if bool(masks[j].any()) else [])
        if things:
            assert torch.equal(got.segment_map == 1, masks[j])


@BACKENDS
@pytest.mark.parametrize("seed", range(4))
def test_default_fusion_equals_reference(backend, device, seed):
    if interpreted(backend, device):
        if seed >= 2:
            pytest.skip("the interpreter runs fewer seeds")
        args, kw = scene(10 + seed, 16, 24, 10, sizes=(10, 61)), dict(size=(63, 95))
    else:
        args, kw = scene(10 + seed, 21, 27, 15), dict(size=(81, 105))
    args = on(args, device)
    kw.update(stuff_area_limit=37, score_threshold=0.2)
    assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@BACKENDS
def test_probabilities_exactly_at_sigma(backend, device):
    """Soft values exactly sigma (and one ulp either side): the >= decision at full resolution."""
    args = scene(5, 17, 20, 4, n_c=3)  # planes of 68 x 80 > 4096 output pixels (see the module)
    dense, probs, qb = args[0], args[1], args[2]
    dense[:] = qb[0][:, None, None]  # every cell's box is query 0's box: tri score exactly 1
    sigma = 0.4
    s = torch.tensor(sigma, dtype=torch.float32)
    vals = torch.stack([s, torch.nextafter(s, torch.tensor(0.0)), torch.nextafter(s, torch.tensor(1.0))])
    g = torch.Generator().manual_seed(0)
    probs[0] = vals[torch.randint(0, 3, (17, 20), generator=g)]
    args[3] = torch.zeros(4, dtype=torch.int64)
    args = on(args, device)
    kw = dict(sigma=sigma, score="tri", overlap_threshold=1.0, size=(67, 77))
    want = run(args, "reference", **kw)
    assert_same(run(args, backend, **kw), want)
    assert 0 < int((want.segment_map == 1).sum()) < 67 * 77  # both sides of sigma occur


@BACKENDS
def test_ties_between_queries(backend, device):
    """Equal scores keep input order (stable), NaN scores come first, as the reference's sort."""
    args = scene(15, 16, 24, 8, sizes=(10, 61))
    args[4] = torch.tensor([0.5, 0.9, 0.5, float("nan"), 0.9, 0.5, float("nan"), 0.1])
    args[2][5] = args[2][2]  # two queries with the same box and score: the first one wins
    args = on(args, device)
    for thr in (0.0, 0.3, 1.0):
        kw = dict(size=(64, 96), sigma=0.3, overlap_threshold=thr, score_threshold=0.2)
        assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@BACKENDS
def test_nan_and_inf(backend, device):
    args = scene(6, 20, 22, 10, sizes=(10, 61) if interpreted(backend, device) else (10, 201))
    args[0][:, 3, 4] = float("nan")
    args[0][0, 10, 10:15] = float("inf")
    args[1][0, 7, 7] = float("nan")
    args[1][1, 12:14, 3] = float("nan")
    args[1][0, 15, 15] = float("inf")
    args[2][3, 1] = float("nan")
    args[4][2] = float("nan")
    args = on(args, device)
    for score in ("iou", "tri"):
        kw = dict(score=score, sigma=0.3, size=(77, 88))
        assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@BACKENDS
def test_nan_logits(backend, device):
    """NaN logits (softmax: NaN probabilities of every class at those cells) mask and fuse as the
    reference: a NaN cell is in no mask, and NaN wins the semantic argmax (class 0)."""
    args = scene(16, 16, 24, 8, sizes=(10, 61))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 16, 24, generator=g) * 2
    logits[:, 4:7, 5:9] = float("nan")
    logits[2, 10, 10:20] = float("nan")
    args[1] = logits.softmax(0)
    args = on(args, device)
    for score in ("iou", "tri"):
        kw = dict(score=score, sigma=0.3, size=(64, 96), stuff_area_limit=5)
        assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(backend, device, dtype):
    args = on(scene(7, 19, 23, 9, dtype=dtype, sizes=(10, 81)), device)
    kw = dict(size=(73, 90), sigma=0.35)
    if backend == "triton" and dtype == torch.float64:
        with pytest.raises(TypeError, match="the triton kernel takes float16, bfloat16 and float32, not torch.float64"):
            run(args, backend, **kw)
        return
    assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@BACKENDS
@pytest.mark.parametrize("stride,hg,wg,size", [(8, 9, 13, (70, 100)), (1, 15, 12, (15, 11)), (2, 1, 1, (2, 1)),
                                               (4, 10, 10, (0, 40)), (4, 10, 10, (40, 0)), (2, 33, 47, (66, 93))])
def test_strides_and_edge_sizes(backend, device, stride, hg, wg, size):
    args = on(scene(8, hg, wg, 5, stride=stride, sizes=(4, 41)), device)
    kw = dict(stride=stride, size=size, sigma=0.3)
    assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@BACKENDS
@pytest.mark.parametrize("seed", range(2))
def test_stride_one_with_nan_and_inf(backend, device, seed):
    """At stride 1 F.interpolate does not interpolate: the CPU kernel takes both taps on the pixel
    itself (a +-inf cell gives NaN, a NaN neighbour does not spread), the CUDA one copies."""
    args = scene(30 + seed, 15, 12, 5, stride=1, sizes=(2, 12))
    args[1][0, 3:6, 4:7] = float("nan")
    args[1][1, 3:6, 4:7] = float("nan")
    args[1][0, 8, 8] = float("inf")
    args[1][1, 8, 8] = float("inf")
    args[1][0, 2, 2] = float("-inf")
    args = on(args, device)
    kw = dict(stride=1, size=(15, 12), sigma=0.3, overlap_threshold=1.0, score_threshold=float("-inf"))
    assert_same(run(args, backend, **kw), run(args, "reference", **kw))


@BACKENDS
def test_no_queries(backend, device):
    args = on(scene(9, 10, 12, 0), device)
    assert_same(run(args, backend, size=(37, 45)), run(args, "reference", size=(37, 45)))


@BACKENDS
@pytest.mark.parametrize("seed", range(2))
def test_rectangles_of_more_words_than_the_fusion_block(backend, device, seed):
    """Objects of 150-400 px on a 400 x 240 output (8 words per row): rectangles of up to 3200 words,
    more than the CUDA fusion block's 1024 threads, each thread walking several rows of its rectangle."""
    if interpreted(backend, device):
        pytest.skip("a 400 x 240 output with 150-400 px objects: too slow in Triton's interpreter")
    args = on(scene(40 + seed, 100, 60, 6, sizes=(150, 401)), device)
    kw = dict(size=(400, 237), sigma=0.3, overlap_threshold=0.7, stuff_area_limit=20)
    out = run(args, backend, **kw)
    assert_same(out, run(args, "reference", **kw))
    assert (out.queries >= 0).sum() >= 2


@BACKENDS
def test_rectangle_wider_than_the_fusion_block(backend, device):
    """An 8 x 33,200 output (1038 words per row, more than the CUDA fusion block's 1024 threads): query
    0's rectangle spans every word column, query 1's the right half."""
    if interpreted(backend, device):
        pytest.skip("a 33,200 px wide output: too slow in Triton's interpreter")
    g = torch.Generator().manual_seed(50)
    wide = torch.tensor([0.0, 0.0, 33200.0, 8.0])
    dense = wide.view(4, 1, 1) + torch.rand(4, 2, 8300, generator=g)
    logits = torch.randn(3, 2, 8300, generator=g)
    logits[0] += 3
    boxes = torch.stack([wide, torch.tensor([16600.0, 0.0, 33200.0, 8.0])])
    args = on([dense, logits.softmax(0), boxes, torch.tensor([0, 0]), torch.tensor([0.9, 0.95]),
               torch.tensor([True, False, False])], device)
    kw = dict(size=(8, 33200), sigma=0.3, overlap_threshold=0.9)
    out = run(args, backend, **kw)
    assert_same(out, run(args, "reference", **kw))
    assert out.queries.tolist()[:2] == [1, 0]


# Edge cases of the word-level kernels: grid rows of 63-65 cells (label bitmaps ending at, or one
# spare bit past, a word), outputs whose width is not a multiple of 64 or of the stride, masks
# covering whole rows (runs across words), Q = 1 and 150, overlapping and empty masks, infinite scores.
@BACKENDS
@pytest.mark.parametrize("wg", [63, 64, 65])
def test_full_and_empty_masks_across_words(backend, device, wg):
    """Query 0 covers every pixel (soft 0.9 everywhere), query 1 nothing (probability 0), query 2
    the same box as 0 (fully overlapped: dropped), all at exactly the same score."""
    if interpreted(backend, device) and wg != 65:
        pytest.skip("the interpreter runs one width")
    hg = 6
    args = _columns_scene([0.9] * wg, hg=hg)
    args[1] = torch.stack([args[1][0], torch.zeros(hg, wg), 1 - args[1][0]])
    box = args[2][0]
    args[2] = torch.stack([box, box, box])
    args[3] = torch.tensor([0, 1, 0])
    args[4] = torch.tensor([0.5, 0.5, 0.5])
    args[5] = torch.tensor([True, True, False])
    args = on(args, device)
    for size in ((hg * 4, wg * 4), (hg * 4 - 3, wg * 4 - 1), (1, 1)):
        out = run(args, backend, size=size, sigma=0.4, score="iou")
        assert_same(out, run(args, "reference", size=size, sigma=0.4, score="iou"))
        assert bool((out.segment_map == 1).all()) and out.queries.tolist() == [0]


@BACKENDS
@pytest.mark.parametrize("wg", [63, 64, 65])
def test_soft_values_at_sigma_across_words(backend, device, wg):
    """Soft values exactly sigma and one ulp either side, on grid rows of 63-65 cells (every 8-cell
    block and the scalar tail of the label bitmaps), at several output widths."""
    if interpreted(backend, device) and wg != 65:
        pytest.skip("the interpreter runs one width")
    g = torch.Generator().manual_seed(wg)
    sigma = 0.4
    s = torch.tensor(sigma, dtype=torch.float32)
    vals = torch.stack([s, torch.nextafter(s, torch.tensor(0.0)), torch.nextafter(s, torch.tensor(1.0)),
                        torch.tensor(0.9), torch.tensor(0.1)])
    args = _columns_scene([0.5] * wg, hg=9)
    args[1][0] = vals[torch.randint(0, 5, (9, wg), generator=g)]
    args[1][1] = 1 - args[1][0]
    args = on(args, device)
    for size in ((36, 4 * wg), (35, 4 * wg - 5)):
        kw = dict(sigma=sigma, score="iou", overlap_threshold=1.0, size=size)
        want = run(args, "reference", **kw)
        assert_same(run(args, backend, **kw), want)
        assert 0 < int((want.segment_map == 1).sum()) < size[0] * size[1]


@BACKENDS
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_rows_of_probabilities_just_below_sigma(backend, device, score):
    """Whole grid rows whose probabilities are at most sigma: the cpp kernel skips rows it can prove
    below sigma without computing them (regular boxes: |score| <= 1 + a few ulps).  Rows exactly at
    sigma with score 1 are in the mask; rows one ulp below are not.  Rows of inverted dense boxes
    (tri: score 1 + 1/201 at probability 0.399, soft > sigma) and of huge coordinates must not be
    skipped."""
    hg, wg = 12, 70
    sigma = 0.4
    s = torch.tensor(sigma, dtype=torch.float32)
    below = torch.nextafter(s, torch.tensor(0.0))
    args = _columns_scene([0.5] * wg, hg=hg)
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    args[2] = box[None]
    args[0] = box.view(4, 1, 1).expand(4, hg, wg).contiguous()
    row_prob = torch.tensor([sigma, below, 0.399, 0.399, sigma, 0.2, below, 0.399, 0.399, 0.1, sigma, 0.3])
    args[1][0] = row_prob[:, None].expand(hg, wg)
    args[1][1] = 1 - args[1][0]
    args[0][:, 2:4, 10:30] = torch.tensor([10.0, 10.0, 0.0, 0.0])[:, None, None]  # inverted in x and y
    args[0][:, 7, 40] = torch.tensor([-2.0**41, 0.0, 2.0**41, 10.0])  # beyond 2^40
    args = on(args, device)
    kw = dict(sigma=sigma, score=score, overlap_threshold=1.0, size=(4 * hg, 4 * wg))
    want = run(args, "reference", **kw)
    assert_same(run(args, backend, **kw), want)
    thing = want.segment_map == 1
    assert bool(thing[:2].all())  # output rows 0, 1 sample grid row 0 alone (weights 1, 0): exactly sigma
    assert not bool(thing[20:24].any())  # grid row 5 (0.2) alone
    if score == "tri":
        assert bool(thing[8:16, 44:116].any())  # the inverted boxes' cells (grid rows 2, 3) are in the mask


@BACKENDS
@pytest.mark.parametrize("q", [1, 150])
def test_one_and_many_queries_with_infinite_scores(backend, device, q):
    """Q = 1 and Q = 150 heavily overlapping masks on a 70-cell-wide grid (output 277 px wide: not a
    multiple of 64 or 4), with +-inf and NaN scores, empty masks (queries far outside the image and
    inverted boxes) and a few NaN / inf soft values; several overlap thresholds."""
    if interpreted(backend, device) and q > 1:
        pytest.skip("the interpreter runs Q = 1")
    args = scene(40 + q, 19, 70, q, sizes=(10, 120))
    args[1][args[3][0]] = 0.8  # query 0's class: a non-empty mask
    if q > 1:
        args[4][:3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
        args[2][3] = torch.tensor([-500.0, -500.0, -400.0, -400.0])  # far outside: an empty mask
        args[2][4] = args[2][4, [2, 3, 0, 1]]  # inverted
        args[2][10:20] = args[2][20:30] + 2  # near duplicates: overlaps
        args[0][:, 5, 60:66] = float("nan")
        args[0][2, 7, 33] = float("inf")
    args = on(args, device)
    for thr in (0.0, 0.5, 1.0):
        kw = dict(size=(75, 277), sigma=0.4, overlap_threshold=thr, score_threshold=-1.0, stuff_area_limit=30)
        want = run(args, "reference", **kw)
        assert_same(run(args, backend, **kw), want)
        assert int((want.queries >= 0).sum()) >= min(q, 3)


@pytest.mark.skipif(not TRITON_CPU, reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
def test_triton_gpu_block_sizes_in_the_interpreter(monkeypatch):
    """The GPU launch sizes (many programs per pass: per-program maxima and rectangles reduced
    across programs, several 8-query and 32-word blocks) give the same result."""
    from rtpanoptic.kernels import _common

    monkeypatch.setattr(_common, "GPU_BLOCKS_IN_INTERPRETER", True)
    args = scene(17, 18, 27, 10, sizes=(10, 61))
    kw = dict(size=(71, 105), sigma=0.3, stuff_area_limit=20)
    assert_same(run(args, "triton", **kw), run(args, "reference", **kw))


if TRITON_CPU:
    import triton
    import triton.language as tl

    from rtpanoptic.kernels.panoptic_from_dense_release import _fma

    @triton.jit
    def _fma_kernel(a_ptr, b_ptr, c_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(out_ptr + i, _fma(tl.load(a_ptr + i), tl.load(b_ptr + i), tl.load(c_ptr + i), True))


@pytest.mark.skipif(not TRITON_CPU, reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
def test_interpreter_fma_rounds_once():
    """The interpreter's stand-in for tl.fma rounds a * b + c once, also where a float64 sum
    rounded to nearest would land on a float32 tie (double rounding)."""
    from rtpanoptic.kernels._common import launch

    g = torch.Generator().manual_seed(0)
    n = 256
    a, b = torch.rand(n, generator=g) * 2 - 0.5, torch.rand(n, generator=g)
    c = (torch.rand(n, generator=g) - 0.5) * torch.exp2(-torch.randint(0, 60, (n,), generator=g).float())
    # ties: a * b = 1 + 2^-11 + 2^-24 lies halfway between two float32; c = +-2^-60 breaks the tie
    a[:4], b[:4] = 1 + 2.0**-12, 1 + 2.0**-12
    c[:4] = torch.tensor([2.0**-60, -(2.0**-60), 2.0**-70, -(2.0**-40)])
    out = torch.empty(n)
    launch(_fma_kernel, (1,), a, b, c, out, N=n)

    def exact(x, y, z):  # the exact a * b + c, rounded to the nearest float32 (ties to even)
        v = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        f = np.float32(float(v))
        cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
        return min(cands, key=lambda t: (abs(Fraction(float(t)) - v), int(np.array(t).view(np.int32)) & 1))

    want = torch.tensor([float(exact(x, y, z)) for x, y, z in zip(a.tolist(), b.tolist(), c.tolist())])
    assert torch.equal(out, want)
    assert float(out[0]) == float(np.float32(1 + 2.0**-11 + 2.0**-23))  # rounded up: the naive way rounds down


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_GPU,
                                                                                          reason="needs a GPU"))])
def test_fused_kernel_arithmetic_matches_interpolate(device):
    """The fma flag describes this device's F.interpolate: the fused value formula equals it bit for bit
    (on the CPU for outputs of more than 4096 elements; ATen takes another path below, see panoptic_release.py)."""
    g = torch.Generator().manual_seed(0)
    fma = _fused_multiply_add(torch.device(device))
    for shape, dtype in (((1, 17, 16), torch.float32), ((30, 37, 53), torch.float32), ((2, 17, 18), torch.float64)):
        s = torch.rand(shape, generator=g, dtype=dtype).to(device)
        up = F.interpolate(s[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
        assert torch.equal(up, _emulate(s, 4, fma))


def _emulate(s, stride, fma):
    """F.interpolate's value as the kernels compute it (upsample_math.h), in torch, float64-exact fma."""
    def taps(n_out, n_in):
        d = torch.arange(n_out, dtype=s.dtype, device=s.device)
        src = ((d + 0.5) * (1.0 / stride) - 0.5).clamp(min=0)
        i0 = src.floor().long()
        lam = src - i0.to(s.dtype)
        return i0, torch.where(i0 < n_in - 1, i0 + 1, i0), 1 - lam, lam

    def pair(a, b, c, d):  # a * b + c * d, rounded like the kernel
        if not fma:
            return a * b + c * d
        if a.dtype == torch.float64:  # exact in fractions, rounded once by float()
            x, y, z = (t.cpu().flatten().tolist() for t in torch.broadcast_tensors(a, b, c * d))
            out = [float(Fraction(p) * Fraction(q) + Fraction(r)) for p, q, r in zip(x, y, z)]
            return torch.tensor(out, dtype=a.dtype).reshape(torch.broadcast_shapes(a.shape, b.shape)).to(a.device)
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


@BACKENDS
@pytest.mark.parametrize("change,error,message", [
    (lambda a: a.__setitem__(0, a[0].int()), TypeError, "dense_boxes must be a floating-point tensor"),
    (lambda a: a.__setitem__(1, a[1].double()), TypeError, "tensors must share one dtype"),
    (lambda a: a.__setitem__(3, a[3].float()), TypeError, "query_classes must be an integer tensor"),
    (lambda a: a.__setitem__(5, a[5].int()), TypeError, "is_thing must be a bool tensor"),
    (lambda a: a.__setitem__(1, a[1][:, :5]), ValueError, r"sem_probs must have shape \[\*, 10, 12\], got \[5, 5, 12\]"),
    (lambda a: a.__setitem__(4, a[4][:2]), ValueError, "query_scores has 2 entries but query_boxes has 3"),
])
def test_bad_inputs_raise_the_same_errors_on_every_backend(backend, device, change, error, message):
    args = on(scene(13, 10, 12, 3), device)
    change(args)
    with pytest.raises(error, match=message):
        run(args, backend, size=(40, 48))


@pytest.mark.skipif(not HAS_CPP, reason="no C++ kernel built")
def test_cpp_kernel_checks_its_arguments():
    args = scene(13, 10, 12, 3)
    with pytest.raises(ValueError, match=r"panoptic_from_dense_release: stride must be a power of two \(1, 2, 4, ...\), got 3"):
        torch.ops.rtpanoptic.panoptic_from_dense_release(*args, 3, 30, 36, 0.4, "tri", 0.0, 0.5, 0, True)
    with pytest.raises(ValueError, match=r"panoptic_from_dense_release: size must lie in \[0, 40\] x \[0, 48\]"):
        torch.ops.rtpanoptic.panoptic_from_dense_release(*args, 4, 41, 36, 0.4, "tri", 0.0, 0.5, 0, True)


@pytest.mark.skipif(not (HAS_GPU and "cuda" in GPU_BACKENDS), reason="needs a GPU and the CUDA kernel")
def test_cuda_kernel_checks_its_arguments():
    args = on(scene(13, 10, 12, 3), "cuda")
    with pytest.raises(ValueError, match=r"panoptic_from_dense_release: stride must be a power of two \(1, 2, 4, ...\), got 3"):
        torch.ops.rtpanoptic.panoptic_from_dense_release(*args, 3, 30, 36, 0.4, "tri", 0.0, 0.5, 0, True)
    with pytest.raises(ValueError, match=r"panoptic_from_dense_release: size must lie in \[0, 40\] x \[0, 48\]"):
        torch.ops.rtpanoptic.panoptic_from_dense_release(*args, 4, 41, 36, 0.4, "tri", 0.0, 0.5, 0, True)
    with pytest.raises(ValueError, match="panoptic_from_dense_release: sem_probs must be on"):
        torch.ops.rtpanoptic.panoptic_from_dense_release(args[0], args[1].cpu(), *args[2:], 4, 40, 48, 0.4, "tri",
                                                         0.0, 0.5, 0, True)


def _namespaces():
    out = [registry.CPP_NAMESPACE] if HAS_CPP else []
    return out + ([registry.TRITON_NAMESPACE] if TRITON_CPU else [])


@pytest.mark.parametrize("namespace", _namespaces())
def test_opcheck_and_fake(namespace):
    args = scene(14, 9, 11, 4)
    call = (*args, 4, 33, 42, 0.4, "tri", 0.0, 0.5, 0, _fused_multiply_add(torch.device("cpu")))
    fn = getattr(getattr(torch.ops, namespace), OP)
    torch.library.opcheck(fn, call, test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in call]
        seg = fn(*fake)
    assert tuple(seg[0].shape) == (33, 42) and seg[0].dtype == torch.int32


# ------------------------------------------------------------------------ on a GPU
@pytest.mark.skipif(not GPU_BACKENDS, reason="needs a GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_runs_twice_bitwise_and_matches_the_cpu_kernel(backend):
    """Deterministic (no float atomics), and, both kernels fusing the multiply-adds as their
    F.interpolate does (AVX2/AVX-512 CPUs), equal to the C++ kernel on the same scene."""
    args = scene(20, 40, 56, 30)
    kw = dict(size=(157, 221), sigma=0.4, stuff_area_limit=10)
    first, second = run(on(args, "cuda"), backend, **kw), run(on(args, "cuda"), backend, **kw)
    assert_same(first, second)
    assert_same(first, run(on(args, "cuda"), "reference", **kw))
    if HAS_CPP and _fused_multiply_add(torch.device("cpu")):
        cpu = run(args, "cpp", **kw)
        assert torch.equal(first.segment_map.cpu(), cpu.segment_map)


# ----------------------------------------------- hand-computed expectations (no reference involved)
def _columns_scene(values, hg: int = 4):
    """A ``hg x len(values)`` grid whose every cell predicts query 0's box (IoU exactly 1), class 0 (a
    thing) with probability ``values[x]`` in column x, class 1 (stuff) the rest: the soft mask of query
    0 is ``values`` in every row."""
    wg = len(values)
    box = torch.tensor([0.0, 0.0, 4.0 * wg, 4.0 * hg])
    probs = torch.empty(2, hg, wg)
    probs[0] = torch.tensor(values)
    probs[1] = 1 - probs[0]
    return [box.view(4, 1, 1).expand(4, hg, wg).contiguous(), probs, box[None], torch.tensor([0]),
            torch.tensor([0.9]), torch.tensor([True, False])]


@pytest.mark.backends(OP)
def test_mask_at_exactly_sigma_hand_computed(backend, device):
    """Soft mask columns 0.5 0.5 0.5 0.25 0.25 0.25 (dyadic: every bilinear product and sum below is
    exact), sigma 0.5, stride 4 -> a 16 x 24 output.  Output column x reads grid columns i0 = floor(s),
    i0 + 1 at s = max((x + 0.5) / 4 - 0.5, 0): the value is exactly 0.5 (in, ``>=``) while both taps
    are 0.5-columns (s < 2: x <= 9) and 0.5 * (1 - l) + 0.25 * l < 0.5 from x = 10 (s = 2.125) on.
    So the thing is columns 0-9 (160 pixels), the stuff (class 1 wins the argmax in grid columns 3-5,
    nearest-upsampled: x >= 12) 12 x 16 = 192 pixels, columns 10-11 void; a stuff limit of 192 keeps
    the stuff (>= at equality), 193 drops it."""
    args = on(_columns_scene([0.5, 0.5, 0.5, 0.25, 0.25, 0.25]), device)
    kw = dict(sigma=0.5, score="iou", stuff_area_limit=192)
    out = run(args, backend, **kw)
    want = torch.zeros(16, 24, dtype=torch.int32)
    want[:, :10] = 1
    want[:, 12:] = 2
    assert torch.equal(out.segment_map.cpu(), want)
    assert out.classes.tolist() == [0, 1] and out.queries.tolist() == [0, -1] and out.areas.tolist() == [160, 192]
    kw["stuff_area_limit"] = 193
    assert run(args, backend, **kw).areas.tolist() == [160]
    kw.update(sigma=float(np.nextafter(np.float32(0.5), np.float32(1))), stuff_area_limit=0)  # one ulp above
    out = run(args, backend, **kw)
    assert out.queries.tolist() == [-1] and out.areas.tolist() == [192]  # no thing pixel


def _bilinear_count(value: float, hg: int, stride: int, separable: bool) -> int:
    """Pixels ``>= value`` of a constant ``hg x hg`` plane of float32 ``value`` upsampled by ``stride``
    in numpy float32, in one of ATen's two CPU orders: ``separable`` (the large planes', the kernels'
    upsample_math.h: ``h0 * (w0 * v + w1 * v) + h1 * (...)``) or the four products of the weights
    ``h_i * w_j`` summed left to right (ATen's planes of at most 4096 pixels)."""
    f = np.float32
    src = np.maximum((np.arange(hg * stride) + 0.5) / stride - 0.5, 0)
    lam = (src - np.floor(src)).astype(f)
    w0, w1 = f(1) - lam, lam
    h0, h1, w0, w1, v = w0[:, None], w1[:, None], w0[None, :], w1[None, :], f(value)
    if separable:
        row = w0 * v + w1 * v
        out = h0 * row + h1 * row
    else:
        out = (h0 * w0) * v + (h0 * w1) * v + (h1 * w0) * v + (h1 * w1) * v
    return int((out >= v).sum())


@pytest.mark.backends(OP)
def test_small_plane_rounding_difference_at_sigma(backend, device):
    """The documented exception, with numbers: an 8 x 8 grid (a 32 x 32 plane, at most 4096 pixels)
    of soft values exactly sigma = 0.4 (not dyadic).  The CPU reference (ATen's small-plane order)
    keeps 904 of the 1024 pixels, the kernels (the large planes' order) all 1024; on a 17 x 17 grid
    (4624 pixels) both orders are ATen's one and every pixel is in."""
    if device != "cpu":
        pytest.skip("the small-plane order is ATen's CPU kernel's")
    small = _bilinear_count(0.4, 8, 4, separable=backend != "reference")
    assert small == (904 if backend == "reference" else 1024)
    assert _bilinear_count(0.4, 17, 4, separable=True) == 17 * 17 * 16
    for hg, want in ((8, small), (17, 17 * 17 * 16)):
        args = _columns_scene([0.4] * hg, hg=hg)
        out = run(args, backend, sigma=0.4, score="iou")
        assert int((out.segment_map == 1).sum()) == want
