"""panoptic_from_dense: mask construction (eqs. 5-7) + fusion on hand-built scenes, and every
(backend, device) pair against the reference, bit for bit: random scenes in every dtype, every
parameter at its edges, score ties, NaN / inf / inverted inputs, and scenes built to break the
kernels' fast paths (csrc/cpu/simd.h's 64-pixel words and 8-lane chunks, Triton's 32-pixel words):
grids around the word size, products exactly at sigma, sigma at its signs, query boxes touching a
word's bounds, every query rejected.  tests/ops/test_cpp_simd.py runs the cpp cases once more on
the scalar path."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference

OP = "panoptic_from_dense"
F64 = torch.float64
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
NAN, INF = float("nan"), float("inf")
BOX_A = [0.0, 0.0, 4.0, 8.0]
BOX_B = [4.0, 0.0, 8.0, 8.0]


def _scene(dtype=torch.float32, device="cpu"):
    """8x8 grid: left half predicts box A, right half box B.  Classes: 0 stuff, 1 and 2 things.
    Row 0 is stuff (P_sem[0] = 0.8), the rest is class 1 on the left, class 2 on the right."""
    dense = torch.empty(4, 8, 8, dtype=dtype)
    dense[:, :, :4] = torch.tensor(BOX_A, dtype=dtype).view(4, 1, 1)
    dense[:, :, 4:] = torch.tensor(BOX_B, dtype=dtype).view(4, 1, 1)
    sem = torch.full((3, 8, 8), 0.05, dtype=dtype)
    sem[1, 1:, :4] = 0.9
    sem[2, 1:, 4:] = 0.9
    sem[0, 0] = 0.8
    sem[0, 1:] = 0.05
    sem[1:, 0] = 0.1
    return dense.to(device), sem.to(device), torch.tensor([False, True, True], device=device)


@pytest.mark.backends(OP)
def test_two_things_and_stuff(backend, device):
    dense, sem, is_thing = _scene(device=device)
    boxes = torch.tensor([BOX_A, BOX_B], device=device)
    out = ops.panoptic_from_dense(dense, sem, boxes, torch.tensor([1, 2], device=device),
                                  torch.tensor([0.9, 0.8], device=device), is_thing, backend=backend)
    out = ops.PanopticSegments(*(t.cpu() for t in out))
    assert out.segment_map.dtype == torch.int32
    expected = torch.zeros(8, 8, dtype=torch.int32)
    expected[1:, :4] = 1
    expected[1:, 4:] = 2
    expected[0] = 3
    assert torch.equal(out.segment_map, expected)
    assert out.classes.tolist() == [1, 2, 0]
    assert out.queries.tolist() == [0, 1, -1]
    assert out.scores.tolist() == pytest.approx([0.9, 0.8, 1.0])
    assert out.areas.tolist() == [28, 28, 8]
    info = out.segments_info()
    assert [s["isthing"] for s in info] == [True, True, False] and info[2]["category_id"] == 0


@pytest.mark.backends(OP)
def test_order_overlap_threshold_and_limits(backend, device):
    dense, sem, is_thing = _scene(device=device)
    boxes = torch.tensor([BOX_A, BOX_B, BOX_A], device=device)
    classes = torch.tensor([1, 2, 1], device=device)
    # the duplicate of A (query 2) has the best score: it paints first, query 0 fully overlaps
    scores = torch.tensor([0.5, 0.8, 0.95], device=device)
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend=backend)
    assert out.queries.tolist() == [2, 1, -1]
    # score threshold drops query 1; stuff limit larger than row 0 drops the stuff segment
    out = ops.panoptic_from_dense(
        dense, sem, boxes, classes, scores, is_thing, score_threshold=0.85, stuff_area_limit=9, backend=backend
    )
    assert out.queries.tolist() == [2]
    assert (out.segment_map[1:, 4:] == 0).all() and (out.segment_map[0] == 0).all()
    # overlap threshold 1.0 lets the full duplicate in? no: it has no free pixel left
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, overlap_threshold=1.0, backend=backend)
    assert out.queries.tolist() == [2, 1, -1]


@pytest.mark.backends(OP)
def test_stuff_area_limit_at_equality(backend, device):
    """Row 0 is one 8-pixel stuff region (class 0): kept at limit 8 (area >= limit), dropped at 9."""
    dense, sem, is_thing = _scene(device=device)
    boxes = torch.tensor([BOX_A, BOX_B], device=device)
    args = (dense, sem, boxes, torch.tensor([1, 2], device=device), torch.tensor([0.9, 0.8], device=device), is_thing)
    out = ops.panoptic_from_dense(*args, stuff_area_limit=8, backend=backend)
    assert out.classes.tolist() == [1, 2, 0] and out.areas.tolist() == [28, 28, 8]
    assert (out.segment_map[0].cpu() == 3).all()
    out = ops.panoptic_from_dense(*args, stuff_area_limit=9, backend=backend)
    assert out.classes.tolist() == [1, 2] and (out.segment_map[0].cpu() == 0).all()


@pytest.mark.backends(OP)
def test_overlap_and_score_thresholds_at_equality(backend, device):
    """A 2 x 8 grid where every box is the queries' box (IoU exactly 1), so each mask is P_sem > 0.3:
    query 0 (class 1, score 0.75) columns 0-3, query 1 (class 2, score 0.5) columns 2-5.  Query 1's
    mask is half taken: kept at overlap threshold 0.5 (dropped only above it) with its 4 free pixels,
    dropped at 0.4375; kept at score threshold 0.5 (dropped only below it), dropped at 0.5625.  Stuff
    (class 0) columns 6-7."""
    box = [0.0, 0.0, 32.0, 8.0]
    dense = torch.tensor(box, device=device).view(4, 1, 1).expand(4, 2, 8).contiguous()
    sem = torch.zeros(3, 2, 8)
    sem[0, :, 6:] = 0.9
    sem[1, :, :4] = 0.5
    sem[2, :, 2:6] = 0.5
    args = (dense, sem.to(device), torch.tensor([box, box], device=device), torch.tensor([1, 2], device=device),
            torch.tensor([0.75, 0.5], device=device), torch.tensor([False, True, True], device=device))
    kw = dict(sigma=0.3, overlap_threshold=0.5, score_threshold=0.5)
    out = ops.panoptic_from_dense(*args, **kw, backend=backend)
    want = torch.tensor([1, 1, 1, 1, 2, 2, 3, 3], dtype=torch.int32).expand(2, 8)
    assert torch.equal(out.segment_map.cpu(), want)
    assert out.queries.tolist() == [0, 1, -1] and out.areas.tolist() == [8, 4, 4]
    for change in (dict(overlap_threshold=0.4375), dict(score_threshold=0.5625)):
        out = ops.panoptic_from_dense(*args, **{**kw, **change}, backend=backend)
        assert out.queries.tolist() == [0, -1] and out.areas.tolist() == [8, 4], change


@pytest.mark.backends(OP)
def test_sigma_controls_the_mask(backend, device):
    dense, sem, is_thing = _scene(device=device)
    boxes = torch.tensor([BOX_A], device=device)
    args = (dense, sem, boxes, torch.tensor([1], device=device), torch.tensor([0.9], device=device), is_thing)
    # IoU 1 * P_sem 0.9 = 0.9 on the left: kept at sigma 0.3, dropped at 0.95; the
    # right half has IoU 0 with A.
    assert ops.panoptic_from_dense(*args, sigma=0.3, backend=backend).areas.tolist()[0] == 28
    out = ops.panoptic_from_dense(*args, sigma=0.95, backend=backend)
    assert out.queries.tolist() == [-1]  # only stuff left


def _assert_identical(out, ref):
    """The outputs equal, bit for bit (a NaN query score where the reference has one): ``ref`` is the
    reference's fixed-size form, trimmed to its count when ``out`` is the trimmed form (5 fields)."""
    names = ("segment_map", "classes", "queries", "scores", "areas", "count")
    if len(out) == 5 and len(ref) == 6:
        ref = ops.PaddedPanopticSegments(*ref).trimmed()
    assert len(out) == len(ref)
    for name, a, b in zip(names, out, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0, equal_nan=True, msg=name)


SETTINGS = dict(sigma=0.2, score="iou", score_threshold=0.0, overlap_threshold=0.5, stuff_area_limit=5)


def _check(backend, device, args, **kw):
    """The backend's kernel itself (no argument checks: any sigma) against the reference on
    ``args`` (moved to ``device``), with :data:`SETTINGS` updated by ``kw``."""
    kw = {**SETTINGS, **kw}
    args = [t.to(device) for t in args]
    values = (kw["sigma"], kw["score"], kw["score_threshold"], kw["overlap_threshold"], kw["stuff_area_limit"])
    out = _dispatch.select(OP, backend, torch.device(device))(*args, *values)
    assert len(out) == 6  # the fixed-size form: Q + C padded slots and the count, compared too
    _assert_identical(out, reference.panoptic_from_dense(*args, *values))
    return ops.PaddedPanopticSegments(*(t.cpu() for t in out)).trimmed()


# (seed, h, w, q, c): one query; Q beyond a word of queries; 256 queries; a 40 x 56 grid of 8 classes
RANDOM = [(0, 9, 13, 1, 6), (1, 24, 32, 12, 6), (2, 24, 32, 12, 6), (3, 20, 20, 40, 6), (4, 30, 17, 256, 6),
          (5, 40, 56, 100, 8)]


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("case", RANDOM, ids=lambda c: "x".join(map(str, c[1:])))
@pytest.mark.parametrize("score_levels", [None, 4])
def test_random_is_bitwise_the_reference(backend, device, dtype, score, case, score_levels, make, skip_interpreted):
    """float32/float64: the masks are computed operation by operation like the reference's (no
    fused multiply-add), so segment maps and segment lists are identical; ``score_levels=4``:
    many tied scores, where the stable order decides."""
    seed, h, w, q, c = case
    if q > 100:
        skip_interpreted(backend, device, f"{q} queries")
    scene = make.scene(seed, h, w, q, c, dtype=dtype, device=device, score_levels=score_levels)
    kw = dict(sigma=0.2, score=score, stuff_area_limit=5)
    out = ops.panoptic_from_dense(*scene, backend=backend, **kw)
    _assert_identical(out, reference.panoptic_from_dense(*scene, 0.2, score, 0.0, 0.5, 5))
    assert len(out.classes) > (2 if q > 1 else 1)  # the scene is non-trivial


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("q", [1, 12, 100])
def test_half_is_computed_in_float32(backend, device, dtype, score, q, make):
    """float16/bfloat16 inputs: scores, products and the sigma threshold in float32 (as the
    float32 reference on the same rounded inputs), so boxes of hundreds of pixels (areas above
    float16's 65504) still give masks."""
    dense, sem, boxes, classes, scores, is_thing = make.scene(4, q=q, dtype=dtype, device=device, box_scale=12.0,
                                                              score_levels=4)
    kw = dict(sigma=0.2, score=score, stuff_area_limit=5)
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend=backend, **kw)
    up = [t.float() for t in (dense, sem, boxes)]
    ref = reference.panoptic_from_dense(*up, classes, scores.float(), is_thing, 0.2, score, 0.0, 0.5, 5)
    _assert_identical(out, ref)
    assert (out.queries >= 0).sum() >= min(q, 3)  # things were found


@pytest.mark.backends(OP)
def test_nan_semantic_probabilities_follow_torch_argmax(backend, device, make):
    """A NaN probability is the maximum of its pixel's argmax (torch.argmax: first NaN wins) and
    never passes the mask threshold; a NaN box never passes it either."""
    dense, sem, boxes, classes, scores, is_thing = make.scene(5)
    sem[0, 0, :] = NAN  # stuff class 0 wins these pixels
    sem[3, 1, :] = NAN  # thing class 3 wins: no stuff there, and no query of class 3 takes them
    sem[1, 2, :5] = NAN
    sem[4, 2, :5] = NAN  # two NaNs: the first (stuff class 1) wins
    dense[:, 3, :4] = NAN
    args = [t.to(device) for t in (dense, sem, boxes, classes, scores, is_thing)]
    out = ops.panoptic_from_dense(*args, sigma=0.1, stuff_area_limit=1, backend=backend)
    ref = reference.panoptic_from_dense(*args, 0.1, "iou", 0.0, 0.5, 1)
    _assert_identical(out, ref)
    seg = out.segment_map.cpu()
    stuff = {i + 1: c for i, c in enumerate(out.classes.tolist()) if out.queries[i] < 0}
    assert {stuff.get(int(v)) for v in seg[0]} == {0, None}  # class 0 where no thing painted first
    assert {stuff.get(int(v)) for v in seg[1]} == {None}  # a thing class wins: never stuff
    assert {stuff.get(int(v)) for v in seg[2, :5]} <= {1, None}


@pytest.mark.backends(OP, reference=False)
def test_coco_133_classes(backend, device, make):
    """COCO panoptic's 133 classes (80 things, 53 stuff), on a grid whose pixel count is not a
    multiple of 32 or 64."""
    g = torch.Generator().manual_seed(6)
    c, h, w, q = 133, 37, 45, 40
    dense, _, boxes, _, scores, _ = make.scene(6, h=h, w=w, q=q)
    sem = torch.softmax(torch.randn(c, h, w, generator=g) * 4, 0)
    is_thing = torch.arange(c) < 80
    classes = torch.randint(0, 80, (q,), generator=g)
    args = [t.to(device) for t in (dense, sem, boxes, classes, scores, is_thing)]
    out = ops.panoptic_from_dense(*args, sigma=0.02, stuff_area_limit=2, backend=backend)
    ref = reference.panoptic_from_dense(*args, 0.02, "iou", 0.0, 0.5, 2)
    _assert_identical(out, ref)
    assert (out.queries >= 0).sum() >= 5 and (out.queries < 0).sum() >= 5


@pytest.mark.backends(OP)
def test_no_queries_is_stuff_only(backend, device):
    dense, sem, is_thing = _scene(device=device)
    out = ops.panoptic_from_dense(dense, sem, torch.zeros(0, 4, device=device),
                                  torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, device=device),
                                  is_thing, backend=backend)
    assert out.queries.tolist() == [-1] and out.classes.tolist() == [0]
    assert out.scores.dtype == torch.float32 and out.areas.dtype == torch.int64


@pytest.mark.backends(OP)
def test_empty_grid_reaches_the_kernel(backend, device):
    impl = _dispatch.select(OP, backend, torch.device(device))
    q = torch.tensor([[0.0, 0.0, 4.0, 4.0]], device=device)
    out = impl(torch.zeros(4, 0, 5, device=device), torch.zeros(2, 0, 5, device=device), q,
               torch.ones(1, dtype=torch.int64, device=device), torch.ones(1, device=device),
               torch.tensor([False, True], device=device), 0.3, "iou", 0.0, 0.5, 0)
    assert out[0].shape == (0, 5) and out[0].dtype == torch.int32 and out[5].shape == () and out[5].item() == 0
    assert [len(t) for t in out[1:5]] == [3, 3, 3, 3] and out[1].tolist() == [-1, -1, -1]  # Q + C slots, padded


@pytest.mark.backends(OP)
def test_empty_grid_through_the_public_op(backend, device, make):
    dense, sem, boxes, classes, scores, is_thing = make.scene(6, 0, 7, 3, device=device)
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend=backend)
    assert out.segment_map.shape == (0, 7) and len(out.classes) == 0


@pytest.mark.backends(OP, reference=False)
def test_no_queries_and_one_query_match_the_reference(backend, device, make):
    dense, sem, boxes, classes, scores, is_thing = make.scene(3, h=5, w=7, q=4, c=7, things=[1, 3, 4, 6])
    for k in (0, 1):
        _check(backend, device, (dense, sem, boxes[:k], classes[:k], scores[:k], is_thing), sigma=0.1,
               stuff_area_limit=0)


@pytest.mark.backends(OP)
def test_threshold_is_strict_and_exact(backend, device):
    # IoU exactly 1 and P_sem exactly sigma: loc * P_sem == sigma is not > sigma
    dense = torch.tensor([0.0, 0.0, 8.0, 8.0], device=device).view(4, 1, 1).expand(4, 3, 5).contiguous()
    sem = torch.full((2, 3, 5), 0.5, device=device)
    sem[1, :, :2] = 0.25  # == sigma: excluded
    sem[0, :, :2] = 0.75
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]], device=device)
    args = (dense, sem, box, torch.tensor([1], device=device), torch.tensor([0.9], device=device),
            torch.tensor([False, True], device=device))
    out = ops.panoptic_from_dense(*args, sigma=0.25, backend=backend)
    _assert_identical(out, reference.panoptic_from_dense(*args, 0.25, "iou", 0.0, 0.5, 0))
    assert out.areas.tolist() == [9, 6]  # the thing: 3 columns; stuff (class 0 on ties) the rest


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("kw", [dict(score_threshold=0.5), dict(overlap_threshold=0.0), dict(overlap_threshold=1.0),
                                dict(stuff_area_limit=0), dict(stuff_area_limit=10**6), dict(sigma=-1.0),
                                dict(sigma=2.0)], ids=lambda kw: "{}={}".format(*next(iter(kw.items()))))
def test_parameters_at_their_edges(backend, device, kw, make):
    _check(backend, device, make.scene(4, 16, 20, 10, dtype=F64), **kw)


def _interleaved_scene(make, seed, h=13, w=37, q=15, dtype=torch.float32, score_levels=None):
    """Thing and stuff classes interleaved (1, 3, 4, 6 of 7 are things) on P = 481 pixels (not a
    multiple of 32: a partial last word); a row of exact copies of a query box (IoU exactly 1) and
    a row where every class ties (the argmax is class 0)."""
    dense, sem, boxes, classes, scores, is_thing = make.scene(seed, h, w, q, c=7, things=[1, 3, 4, 6], dtype=F64,
                                                              score_levels=score_levels)
    dense[:, 0, :5] = boxes[0].view(4, 1)
    sem[:, 1, :6] = 1.0 / 7
    return [t.to(dtype) if t.is_floating_point() else t for t in (dense, sem, boxes, classes, scores, is_thing)]


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("score_levels", [None, 3])
def test_interleaved_classes_ties_and_settings(backend, device, dtype, score, score_levels, make):
    scene = _interleaved_scene(make, 0 if score_levels is None else 1, dtype=dtype, score_levels=score_levels)
    for sigma, score_thr, overlap, limit in [(0.2, 0.0, 0.5, 5), (0.1, 0.3, 0.0, 0), (0.05, 0.0, 1.0, 40)]:
        out = _check(backend, device, scene, sigma=sigma, score=score, score_threshold=score_thr,
                     overlap_threshold=overlap, stuff_area_limit=limit)
        assert len(out.classes) >= 2


@pytest.mark.backends(OP, reference=False)
def test_score_ties_identical_boxes_and_nonfinite(backend, device, make):
    dense, sem, boxes, classes, scores, is_thing = make.scene(5, 16, 16, 8, dtype=F64, score_levels=3)
    _check(backend, device, (dense, sem, boxes, classes, scores, is_thing))
    same = boxes[:1].repeat(8, 1)  # all query boxes identical, equal scores: input order decides
    _check(backend, device, (dense, sem, same, classes, torch.full_like(scores, 0.5), is_thing), overlap_threshold=1.0)
    dense = dense.clone()
    dense[:, 0, :5] = NAN
    dense[:, 1, :3] = torch.tensor([-INF, -INF, INF, INF], dtype=dense.dtype).view(4, 1)
    _check(backend, device, (dense, sem, boxes, classes, scores, is_thing))
    sem = sem.clone()
    sem[:, 2, 2] = NAN
    scores = scores.clone()
    scores[3] = NAN
    _check(backend, device, (dense, sem, boxes, classes, scores, is_thing))


@pytest.mark.backends(OP, reference=False)
def test_non_contiguous_inputs(backend, device, make):
    dense, sem, boxes, classes, scores, is_thing = make.scene(2, h=8, w=11, q=6, c=7, things=[1, 3, 4, 6])
    args = (dense.transpose(1, 2), sem.transpose(1, 2), boxes.flip(0), classes.flip(0), scores.flip(0), is_thing)
    assert not args[0].is_contiguous() and not args[1].is_contiguous()
    args = [t.to(device) for t in args]
    _assert_identical(ops.panoptic_from_dense(*args, sigma=0.1, backend=backend),
                      reference.panoptic_from_dense(*args, 0.1, "iou", 0.0, 0.5, 0))


@pytest.mark.backends(OP, reference=False)
def test_float16_sigma_is_compared_in_float32(backend, device, make):
    """The masks compare the float32 product with float32 sigma, as the reference: a product
    between half(sigma) and sigma decides the same everywhere."""
    args = make.scene(7, 40, 56, 30, c=8, things=range(3, 8), dtype=torch.float16, device=device)
    sigma = 0.2 + 2e-5  # half(sigma) = 0.20007: a threshold rounded to half would move the boundary
    want = ops.panoptic_from_dense(*args, sigma=sigma, backend="reference")
    _assert_identical(ops.panoptic_from_dense(*args, sigma=sigma, backend=backend), want)


@pytest.mark.backends(OP, reference=False)
def test_large_scene(backend, device, make):
    if device == "cpu":
        pytest.skip("a GPU-sized scene (200 x 336 pixels, 100 queries): the reference takes seconds on the CPU")
    args = make.scene(0, h=200, w=336, q=100, device=device)
    out = ops.panoptic_from_dense(*args, backend=backend)
    _assert_identical(out, reference.panoptic_from_dense(*args, 0.3, "iou", 0.0, 0.5, 0))


@pytest.mark.backends(OP, reference=False)
def test_backward_raises_instead_of_a_silent_zero(backend, device, make):
    dense, sem, boxes, classes, scores, is_thing = make.scene(0, 6, 7, 3, dtype=F64, device=device)
    out = ops.panoptic_from_dense(dense.requires_grad_(), sem, boxes, classes, scores, is_thing, backend=backend)
    which = "triton" if backend == "triton" else "cpp/cuda"
    if out.scores.requires_grad:
        with pytest.raises(RuntimeError, match=f"panoptic_from_dense: the {which} kernels have no backward"):
            out.scores.sum().backward()


# ------------------------------------------------------------- the kernels' fast paths
def _next_up(x: float, dtype=torch.float32) -> float:
    return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(INF, dtype=dtype)))


def _next_down(x: float, dtype=torch.float32) -> float:
    return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(-INF, dtype=dtype)))


def _word_scene(make, seed, h, w, q, c=5, dtype=torch.float32, spread=1.0):
    """Dense boxes repeating the query boxes with noise, softmax probabilities, score ties."""
    return make.scene(seed, h, w, q, c, dtype=dtype, min_size=4.0, spread=spread, score_levels=4)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("score,sigma", [("iou", 0.2), ("iou", 0.0), ("iou", -0.1), ("tri", 0.3), ("tri", -0.5)])
@pytest.mark.parametrize("h,w,q", [(1, 1, 1), (1, 63, 7), (1, 64, 8), (1, 65, 9), (3, 37, 17), (5, 100, 33),
                                   (16, 64, 100)])
def test_shapes_around_words_and_chunks(backend, device, h, w, q, score, sigma, dtype, make):
    _check(backend, device, _word_scene(make, h * 1000 + w + q, h, w, q, dtype=dtype), sigma=sigma, score=score,
           stuff_area_limit=3)


def _one_query_scene(probs, dense_box, query_box, dtype=torch.float32):
    """One row of len(probs) pixels, every dense box = dense_box, one thing query of class 1,
    class-1 probabilities `probs` (class 0, stuff, gets 1 - probs)."""
    w = len(probs)
    prob = torch.tensor(probs, dtype=F64)
    sem = torch.stack([1 - prob, prob]).view(2, 1, w).to(dtype)
    dense = torch.tensor(dense_box, dtype=F64).view(4, 1, 1).expand(4, 1, w).contiguous().to(dtype)
    boxes = torch.tensor([query_box], dtype=dtype)
    return dense, sem, boxes, torch.tensor([1]), torch.tensor([0.9], dtype=dtype), torch.tensor([False, True])


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("sigma", [0.0, -0.0, 0.25, 0.5, 1e-45, 1e-300, -1e-300])
def test_product_exactly_at_sigma(backend, device, sigma, dtype):
    # dense box == query box: IoU exactly 1, so the product is the probability.  Probabilities
    # exactly sigma (not > sigma), one ulp above, one ulp below, at every lane of two words and a tail.
    s = float(torch.tensor(sigma, dtype=dtype))
    pattern = [s, _next_up(s, dtype), _next_down(s, dtype), 0.0]
    probs = [pattern[k % 4] for k in range(64 * 2 + 5)]
    box = [2.0, 2.0, 10.0, 10.0]
    out = _check(backend, device, _one_query_scene(probs, box, box, dtype), sigma=sigma, stuff_area_limit=10**9)
    assert torch.equal(out.segment_map[0], (torch.tensor(probs, dtype=dtype) > s).to(torch.int32))


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("sigma", [0.0, -0.0, -1e-50, 1e-50, -1e-30])
def test_zero_scores_at_the_sign_of_sigma(backend, device, sigma):
    # Dense boxes far from the query: IoU +0, product +0, and "+0 > sigma" holds only for sigma < 0
    # (as float32: -1e-50 rounds to -0.0, -1e-30 does not).  The rejections must not fire for sigma < 0.
    args = _one_query_scene([0.5] * 70, [100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 10.0, 10.0])
    out = _check(backend, device, args, sigma=sigma, stuff_area_limit=10**9)
    expected_all = float(torch.tensor(sigma, dtype=torch.float32)) < 0
    assert bool((out.segment_map == 1).all()) == expected_all
    assert bool((out.segment_map == 0).all()) != expected_all


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score,sigma", [("iou", 0.1), ("iou", 0.0), ("iou", -0.2), ("tri", 0.1), ("tri", -0.2)])
def test_query_box_touching_the_word_bounds(backend, device, score, sigma):
    # Every dense box lies in x in [0, 10]; queries start exactly at 10 (touching: inter 0),
    # one ulp left of 10 (overlapping by an ulp), or end exactly at 0.
    w = 64 + 7
    x0 = torch.rand(w, generator=torch.Generator().manual_seed(0), dtype=F64) * 5
    dense = torch.stack([x0, torch.zeros(w, dtype=F64), x0 + 5, torch.full((w,), 10.0, dtype=F64)])
    dense = dense.view(4, 1, w).float()
    dense[2, 0, 3] = 10.0  # the word's max x2 is exactly 10
    dense[0, 0, 5] = 0.0  # its min x1 exactly 0
    queries = torch.tensor([[10.0, 0.0, 20.0, 10.0], [_next_down(10.0), 0.0, 20.0, 10.0], [-10.0, 0.0, 0.0, 10.0],
                            [-10.0, 0.0, _next_up(0.0), 10.0], [0.0, 10.0, 10.0, 20.0], [0.0, -5.0, 10.0, 0.0]])
    q = len(queries)
    args = (dense, torch.full((2, 1, w), 0.5), queries, torch.ones(q, dtype=torch.long), torch.linspace(1, 0.5, q),
            torch.tensor([False, True]))
    _check(backend, device, args, sigma=sigma, score=score, overlap_threshold=1.0, stuff_area_limit=3)


def _nonfinite_scene(make, dtype):
    dense, sem, boxes, classes, scores, is_thing = _word_scene(make, 11, 6, 80, 12, dtype=dtype)
    dense[:, 0, :64] = NAN  # a whole word of NaN boxes
    dense[0, 1, 3:9] = NAN
    dense[3, 1, 20] = NAN
    dense[:, 2, :5] = torch.tensor([-INF, -INF, INF, INF], dtype=dtype).view(4, 1)
    dense[:, 2, 5:9] = torch.tensor([0, 0, INF, 30], dtype=dtype).view(4, 1)
    dense[:, 2, 9:12] = torch.tensor([INF, 0, INF, 30], dtype=dtype).view(4, 1)
    dense[:, 3, :30] = dense[[2, 3, 0, 1], 3, :30]  # inverted boxes
    dense[:, 3, 30:40] = dense[[2, 1, 0, 3], 3, 30:40]  # inverted in x only (negative area)
    dense[:, 4, 40:50] = torch.tensor([-1e30, -1e30, 1e30, 1e30], dtype=dtype).view(4, 1)
    sem[:, 5, 0:4] = NAN
    sem[2:, 5, 10:14] = INF
    sem[2:, 5, 20:24] = -INF
    sem[2:, 4, :] = -0.5  # negative "probabilities"
    boxes[0] = torch.tensor([NAN, 0, 10, 10], dtype=dtype)
    boxes[1] = boxes[1, [2, 3, 0, 1]]  # an inverted query
    boxes[2] = torch.tensor([-INF, -INF, INF, INF], dtype=dtype)
    boxes[3, 2] = boxes[3, 0]  # zero width
    scores[4] = NAN
    return dense, sem, boxes, classes, scores, is_thing


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("score,sigma", [("iou", 0.2), ("iou", 0.0), ("iou", -0.3), ("tri", 0.2), ("tri", -0.3)])
def test_nonfinite_inverted_and_negative_inputs(backend, device, score, sigma, dtype, make):
    _check(backend, device, _nonfinite_scene(make, dtype), sigma=sigma, score=score, stuff_area_limit=3)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_every_query_rejected(backend, device, dtype, make):
    dense, sem, boxes, classes, scores, is_thing = _word_scene(make, 5, 4, 70, 9, dtype=dtype)
    far = boxes + 10_000  # no query meets any dense box
    out = _check(backend, device, (dense, sem, far, classes, scores, is_thing), sigma=0.1, stuff_area_limit=3)
    assert (out.queries == -1).all() and len(out.classes) > 0
    low = sem.clone()
    low[2:] = low[2:].clamp(max=0.1)  # no thing probability above sigma
    out = _check(backend, device, (dense, low, boxes, classes, scores, is_thing), sigma=0.1, stuff_area_limit=3)
    assert (out.queries == -1).all()
    out = _check(backend, device, (dense, low, boxes, classes, scores, is_thing), sigma=0.05, stuff_area_limit=3)
    assert (out.queries >= 0).any()  # control: masks appear


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("c,w", [(1, 13), (3, 64), (19, 71)])
def test_stuff_argmax_ties_and_nan(backend, device, c, w, dtype):
    g = torch.Generator().manual_seed(c + w)
    sem = (torch.rand(c, 3, w, generator=g) * 3).floor().to(dtype) / 3  # many exact ties
    sem[:, 1, 5] = NAN
    if c > 1:
        sem[c - 1, 1, 8] = NAN
        sem[1, 2, 0:9] = NAN
        sem[0, 2, 0:3] = NAN  # the first NaN wins
    args = (torch.zeros(4, 3, w, dtype=dtype), sem, torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=dtype), torch.zeros(c, dtype=torch.bool))
    _check(backend, device, args, sigma=0.2, stuff_area_limit=0)


@pytest.mark.backends(OP, reference=False)
def test_benchmark_like_scene(backend, device, make):
    # the benchmark's construction (dense boxes of random owners: no spatial coherence), smaller
    out = _check(backend, device, _word_scene(make, 7, 32, 96, 100, c=19, spread=4.0), sigma=0.05, stuff_area_limit=3)
    assert (out.queries >= 0).sum() > 5


# ------------------------------------------------------------------ the fixed-size form
def _padded_reference(segments, slots):
    """A trimmed reference result laid out as the fixed-size form with ``slots`` segment slots."""
    seg_map, *fields = segments
    count = fields[0].shape[0]
    padded = [torch.cat([t, t.new_full((slots - count,), fill)]) for t, fill in zip(fields, reference.SEGMENT_PADDING)]
    return (seg_map, *padded, torch.tensor(count))


def _absent_garbage(n, boxes, classes, scores, n_classes):
    """Queries ``n..`` overwritten with what the padded tail of a query list may hold, and that would
    change the result if it were read: boxes covering the grid, scores that paint first or NaN,
    classes outside [0, C)."""
    boxes, classes, scores = boxes.clone(), classes.clone(), scores.clone()
    boxes[n:] = torch.tensor([-1e4, -1e4, 1e4, 1e4], dtype=boxes.dtype)
    scores[n:] = 2.0
    scores[n::3] = NAN
    classes[n::2] = n_classes + 7
    return boxes, classes, scores


@pytest.mark.backends(OP)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_padded_form_with_absent_queries_is_the_reference_on_the_present_ones(backend, device, seed, score, make):
    """Random scenes, num_queries = Q, 0 < num_queries < Q and 0: the fixed-size form (Q + C slots, the
    count on the device) holds exactly the reference's segments of the present queries, then the
    padding; the absent queries' boxes, classes and scores are never read."""
    dense, sem, boxes, classes, scores, is_thing = make.scene(seed)
    q, c = boxes.shape[0], sem.shape[0]
    kw = dict(sigma=0.2, score=score, stuff_area_limit=5)
    for n in (q, 5 + seed, 0):
        want = reference.panoptic_from_dense(dense, sem, boxes[:n], classes[:n], scores[:n], is_thing, 0.2, score,
                                             0.0, 0.5, 5)
        want = ops.PaddedPanopticSegments(*want).trimmed()
        args = [t.to(device) for t in (dense, sem, *_absent_garbage(n, boxes, classes, scores, c), is_thing)]
        num = torch.tensor(n, device=device)
        out = ops.panoptic_from_dense(*args, num_queries=num, padded=True, backend=backend, **kw)
        assert isinstance(out, ops.PaddedPanopticSegments) and out.count.device == dense.to(device).device
        _assert_identical(out, _padded_reference(want, q + c))
        _assert_identical(ops.panoptic_from_dense(*args, num_queries=num, backend=backend, **kw), want)
        assert (n == 0) or (want.queries >= 0).sum() >= 2  # the scenes have things to paint


@pytest.mark.backends(OP)
def test_padded_without_queries_and_with_no_segment(backend, device):
    """Q = 0: C slots, the stuff segments first; no stuff class and no present query: count 0,
    every slot padding, the map void."""
    dense, sem, is_thing = _scene(device=device)
    none = (torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.int64, device=device),
            torch.zeros(0, device=device))
    out = ops.panoptic_from_dense(dense, sem, *none, is_thing, padded=True, backend=backend)
    assert out.count.item() == 1 and out.classes.tolist() == [0, -1, -1] and out.queries.tolist() == [-1] * 3
    assert out.scores.tolist() == [1.0, 0.0, 0.0] and out.areas.tolist() == [8, 0, 0]
    boxes = torch.tensor([BOX_A, BOX_B], device=device)
    things = torch.ones(3, dtype=torch.bool, device=device)
    out = ops.panoptic_from_dense(dense, sem, boxes, torch.tensor([1, 2], device=device),
                                  torch.tensor([0.9, 0.8], device=device), things,
                                  num_queries=torch.tensor(0, device=device), padded=True, backend=backend)
    assert out.count.item() == 0 and out.count.dtype == torch.int64 and out.count.shape == ()
    assert out.classes.tolist() == [-1] * 5 and out.queries.tolist() == [-1] * 5
    assert out.scores.tolist() == [0.0] * 5 and out.areas.tolist() == [0] * 5
    assert (out.segment_map == 0).all()
    assert ops.panoptic_from_dense(dense, sem, boxes, torch.tensor([1, 2], device=device),
                                   torch.tensor([0.9, 0.8], device=device), things, backend=backend).classes.numel() == 2


@pytest.mark.backends(OP)
def test_kernels_clamp_num_queries(backend, device, make):
    """The kernels (called directly: no value check before them) clamp num_queries to [0, Q]."""
    impl = _dispatch.select(OP, backend, torch.device(device))
    dense, sem, boxes, classes, scores, is_thing = (t.to(device) for t in make.scene(3))
    args = (dense, sem, boxes, classes, scores, is_thing, 0.2, "iou", 0.0, 0.5, 5)
    q = boxes.shape[0]
    for given, meant in ((-4, 0), (q + 9, q)):
        out = impl(*args, torch.tensor(given, device=device))
        _assert_identical(out, impl(*args, torch.tensor(meant, device=device)))
    _assert_identical(impl(*args, torch.tensor(q, device=device)), impl(*args))


def test_num_queries_and_class_checks(make):
    dense, sem, boxes, classes, scores, is_thing = make.scene(0)
    args = (dense, sem, boxes, classes, scores, is_thing)
    q, c = boxes.shape[0], sem.shape[0]
    with pytest.raises(TypeError, match=r"^panoptic_from_dense: num_queries must be an integer tensor, got torch.float32$"):
        ops.panoptic_from_dense(*args, num_queries=torch.tensor(3.0))
    with pytest.raises(ValueError, match=r"^panoptic_from_dense: num_queries must have shape 0-D, got \[1\]$"):
        ops.panoptic_from_dense(*args, num_queries=torch.tensor([3]))
    for n in (-1, q + 1):
        with pytest.raises(ValueError, match=rf"^panoptic_from_dense: num_queries must lie in \[0, {q}\] \(the number "
                                             rf"of queries\), got {n}$"):
            ops.panoptic_from_dense(*args, num_queries=torch.tensor(n), padded=True)
    bad = classes.clone()
    bad[7] = c
    with pytest.raises(ValueError, match=rf"query_classes must lie in \[0, {c}\), got values in \[2, {c}\]"):
        ops.panoptic_from_dense(dense, sem, boxes, bad, scores, is_thing, num_queries=torch.tensor(8), padded=True)
    out = ops.panoptic_from_dense(dense, sem, boxes, bad, scores, is_thing, num_queries=torch.tensor(7), padded=True)
    assert out.count.item() > 0  # query 7 is absent: its class is not checked
    num = torch.tensor(7, dtype=torch.int32)  # any integer dtype
    _assert_identical(ops.panoptic_from_dense(*args, num_queries=num),
                      ops.panoptic_from_dense(*args, num_queries=num.long()))


# ------------------------------------------------------------------ masks bounded in space
# The CUDA fusion counts and paints each query over the range of its mask's non-zero words only
# (recorded while the masks are built; csrc/cuda/panoptic_from_dense_kernel.cu): scenes whose masks
# are local, ranges that start and end anywhere (a word range past 1024 words, the fusion block's
# width), masks in the first or only the last (partial) word, empty masks, and query counts past the
# kernels' chunks of 256 queries.
FAR = [-1000.0, -1000.0, -990.0, -990.0]  # no query box meets it


def _region_scene(seed, h, w, q, c=6, empty=()):
    """Query j's dense boxes (its box plus noise) fill a random rectangle of the grid (a later query
    on top of an earlier one), the rest of the grid predicts FAR: each mask lies in a band of rows.
    The queries in ``empty`` own no cell and their boxes lie far from every dense box: empty masks."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(q, 2, generator=g, dtype=F64) * torch.tensor([4 * w, 4 * h], dtype=F64),
                       torch.rand(q, 2, generator=g, dtype=F64) * 60 + 8], 1)
    boxes[:, 2:] += boxes[:, :2]
    dense = torch.tensor(FAR, dtype=F64).view(4, 1, 1).repeat(1, h, w)
    for j in range(q):
        y0, x0 = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        y1 = y0 + int(torch.randint(1, max(2, h // 3), (1,), generator=g))
        x1 = x0 + int(torch.randint(1, max(2, w // 2), (1,), generator=g))
        if j in empty:
            boxes[j] = torch.tensor([5000.0, 5000.0, 5010.0, 5010.0], dtype=F64)
        else:
            dense[:, y0:y1, x0:x1] = boxes[j].view(4, 1, 1)
    dense = dense + 0.5 * torch.randn(4, h, w, generator=g, dtype=F64)
    sem = torch.softmax(torch.randn(c, h, w, generator=g, dtype=F64) * 2, 0)
    classes = torch.randint(2, c, (q,), generator=g)
    scores = torch.rand(q, generator=g, dtype=F64)
    return dense.float(), sem.float(), boxes.float(), classes, scores.float(), torch.arange(c) >= 2


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("seed,h,w,q", [(0, 130, 300, 40), (1, 97, 411, 25), (2, 33, 65, 60)])
def test_local_masks_with_word_ranges_anywhere(backend, device, seed, h, w, q, skip_interpreted):
    """130 x 300 and 97 x 411: 1219 and 1246 words of 32 pixels, past the fusion block's 1024 threads,
    each mask's range starting and ending mid-block; 33 x 65: a partial last word."""
    if h * w > 10_000:
        skip_interpreted(backend, device, f"a {h}x{w} grid")
    scene = _region_scene(seed, h, w, q, empty=(3, 7))
    out = _check(backend, device, scene, sigma=0.1, overlap_threshold=0.6, stuff_area_limit=3)
    kept = out.queries[out.queries >= 0]
    assert len(kept) >= 5 and not ({3, 7} & set(kept.tolist()))  # the empty queries keep nothing


@pytest.mark.backends(OP, reference=False)
def test_masks_in_the_first_and_only_the_last_word(backend, device):
    """37 x 41 = 1517 pixels (a partial last word of 13 pixels for 32-pixel words, 45 for 64): query 0's
    mask is the last 3 pixels only, query 2's the first 2; query 1 is query 0 with a class whose
    probability stays below sigma and query 3 meets no dense box (empty masks); query 4 covers rows
    10-19, behind query 0 and 2 in score order."""
    h, w = 37, 41
    b_last, b_first, b_band = [100.0, 100.0, 120.0, 120.0], [0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 90.0, 80.0]
    dense = torch.tensor(FAR).view(4, 1, 1).repeat(1, h, w)
    dense[:, h - 1, w - 3:] = torch.tensor(b_last).view(4, 1)
    dense[:, 0, :2] = torch.tensor(b_first).view(4, 1)
    dense[:, 10:20, :] = torch.tensor(b_band).view(4, 1, 1)
    sem = torch.full((4, h, w), 0.1)
    sem[2] = 0.7  # class 2: every thing mask passes sigma = 0.3 where its box is predicted
    sem[3] = 0.1  # class 3: never
    boxes = torch.tensor([b_last, b_last, b_first, [500.0, 500.0, 510.0, 510.0], b_band])
    classes, scores = torch.tensor([2, 3, 2, 2, 2]), torch.tensor([0.9, 0.95, 0.8, 0.85, 0.5])
    args = (dense, sem, boxes, classes, scores, torch.tensor([False, False, True, True]))
    out = _check(backend, device, args, sigma=0.3, stuff_area_limit=0)
    assert out.queries.tolist()[:3] == [0, 2, 4] and out.areas.tolist()[:3] == [3, 2, 10 * w]
    want = torch.zeros(h, w, dtype=torch.int32)
    want[h - 1, w - 3:] = 1
    want[0, :2] = 2
    want[10:20] = 3
    assert torch.equal(out.segment_map == 1, want == 1) and torch.equal(out.segment_map == 2, want == 2)
    assert torch.equal(out.segment_map == 3, want == 3)


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("q", [150, 256, 257, 300])
def test_query_counts_past_the_kernels_chunks(backend, device, q, skip_interpreted):
    """The CUDA kernels take the queries in chunks of 256 (the mask statistics, the fusion's entries):
    Q = 150, one chunk; 256, exactly one; 257 and 300, a second chunk; with absent queries past
    num_queries = Q - 20 in the padded form."""
    skip_interpreted(backend, device, f"{q} queries")
    dense, sem, boxes, classes, scores, is_thing = _region_scene(q, 40, 56, q)
    _check(backend, device, (dense, sem, boxes, classes, scores, is_thing), sigma=0.1, overlap_threshold=0.8,
           stuff_area_limit=3)
    n = q - 20
    want = ops.PaddedPanopticSegments(*reference.panoptic_from_dense(
        dense, sem, boxes[:n], classes[:n], scores[:n], is_thing, 0.1, "iou", 0.0, 0.5, 3)).trimmed()
    args = [t.to(device) for t in (dense, sem, *_absent_garbage(n, boxes, classes, scores, sem.shape[0]), is_thing)]
    out = ops.panoptic_from_dense(*args, sigma=0.1, stuff_area_limit=3, num_queries=torch.tensor(n, device=device),
                                  padded=True, backend=backend)
    _assert_identical(out, _padded_reference(want, q + sem.shape[0]))
    assert (want.queries >= 0).sum() >= 20
