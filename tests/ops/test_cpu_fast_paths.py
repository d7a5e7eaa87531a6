"""The fast paths of the cpp ``nms`` / ``batched_nms`` / ``panoptic_from_dense`` kernels
(csrc/cpu/simd.h: an AVX2 path picked at run time, a scalar one otherwise) and their exact
rejections, on inputs built to break them: lengths around the 8-lane vector width and the
64-pixel word, ties, NaN/inf/inverted/huge boxes and probabilities, IoUs and products exactly
at the threshold, sigma at its boundaries, float16/bfloat16 rounding, everything rejected.
Every case is compared bit for bit with the reference (and with torchvision for NMS).

The file runs once on the path this CPU selects and once more, in a subprocess, on the
scalar path (``ATEN_CPU_CAPABILITY=default``)."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import reference

pytestmark = pytest.mark.skipif(
    not all("cpp" in ops.available_backends("cpu")[op] for op in ("nms", "batched_nms", "panoptic_from_dense")),
    reason="the C++ extension is not built",
)
C = torch.ops.rtpanoptic
NAN, INF = float("nan"), float("inf")


def _next_up(x: float, dtype=torch.float32) -> float:
    return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(INF, dtype=dtype)))


def _next_down(x: float, dtype=torch.float32) -> float:
    return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(-INF, dtype=dtype)))


# ------------------------------------------------------------------------------------ nms
def _clustered(n, seed, dtype=torch.float32, objects=None, image=256.0):
    """Boxes around few objects (many overlaps, as before NMS) and scores with ties."""
    g = torch.Generator().manual_seed(seed)
    k = objects or max(1, n // 10)
    centres = torch.rand(k, 2, generator=g, dtype=torch.float64) * image
    sizes = 8 + torch.rand(k, 2, generator=g, dtype=torch.float64) * 60
    owner = torch.randint(0, k, (n,), generator=g)
    jitter = 1 + 0.2 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    c, s = centres[owner], sizes[owner]
    boxes = torch.cat([c - s / 2 * jitter[:, :2], c + s / 2 * jitter[:, 2:]], 1)
    scores = (torch.rand(n, generator=g, dtype=torch.float64) * 16).floor() / 16  # many ties
    return boxes.to(dtype), scores.to(dtype)


def _check_nms(boxes, scores, threshold, idxs=None, torchvision_too=True):
    if idxs is None:
        keep = C.nms(boxes, scores, threshold)
        expected = reference.nms(boxes, scores, threshold)
        if torchvision_too and boxes.dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(keep, torchvision.ops.nms(boxes, scores, threshold), rtol=0, atol=0)
    else:
        keep = C.batched_nms(boxes, scores, idxs, threshold)
        expected = reference.batched_nms(boxes, scores, idxs, threshold)
    assert keep.dtype == torch.int64
    torch.testing.assert_close(keep, expected, rtol=0, atol=0)
    return keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 130, 600])
def test_nms_lengths_around_the_vector_width(n, dtype):
    boxes, scores = _clustered(n, seed=n, dtype=dtype)
    for threshold in (0.3, 0.5, 0.7):
        _check_nms(boxes, scores, threshold)
        idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n))
        _check_nms(boxes, scores, threshold, idxs)


@pytest.mark.parametrize("n", [5000, 20000])
def test_nms_benchmark_sizes_match_torchvision(n):
    g = torch.Generator().manual_seed(n)
    boxes, _ = _clustered(n, seed=n, objects=n // 20, image=1024.0)
    scores = torch.rand(n, generator=g)
    keep = C.nms(boxes, scores, 0.5)
    torch.testing.assert_close(keep, torchvision.ops.nms(boxes, scores, 0.5), rtol=0, atol=0)
    assert 0 < len(keep) < n


def _special_boxes(dtype):
    """NaN, infinite, zero-area, inverted, identical, huge (area overflows to inf) boxes, repeated
    so that every kind lands in a vector body and in a tail."""
    base = torch.tensor(
        [
            [10, 10, 30, 30],
            [10, 10, 30, 30],  # identical
            [12, 11, 31, 29],
            [NAN, 10, 30, 30],
            [10, 10, 30, NAN],
            [-INF, -INF, INF, INF],
            [0, 0, INF, 20],
            [INF, 0, INF, 20],  # inf - inf: NaN width
            [20, 20, 20, 20],  # point
            [10, 20, 30, 20],  # zero height
            [30, 30, 10, 10],  # inverted
            [30, 10, 10, 30],  # inverted in x only: negative area
            [-1e30, -1e30, 1e30, 1e30],  # area overflows to inf in float32
            [1e30, 1e30, 3e30, 3e30],
            [-5, -5, 15, 15],
            [11, 9, 29, 31],
        ],
        dtype=torch.float64,
    )
    return base.repeat(3, 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [-1.0, -0.0, 0.0, 0.2, 0.5, 0.9, 1.0, 1.5, NAN])
def test_nms_nonfinite_degenerate_boxes_and_any_threshold(dtype, threshold):
    boxes = _special_boxes(dtype)
    n = len(boxes)
    g = torch.Generator().manual_seed(0)
    for scores in ((torch.rand(n, generator=g) * 4).floor().to(dtype), torch.full((n,), 0.5, dtype=dtype)):
        _check_nms(boxes, scores, threshold)
        _check_nms(boxes, scores, threshold, torch.randint(0, 2, (n,), generator=g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_iou_exactly_at_the_threshold_in_every_lane(dtype):
    # The head box [0, 0, 2, 1] has IoU exactly 1/2 with [0, 0, 1, 1] and 1/2 + (a little) with
    # [0, 0, 1 + e, 1]; 40 such candidates, alternating, cover every lane and the tail.
    head = [[0.0, 0.0, 2.0, 1.0]]
    eps = 1e-5 if dtype == torch.float32 else 1e-12
    cands = [[0.0, 0.0, 1.0 + (eps if k % 2 else 0.0), 1.0] for k in range(40)]
    boxes = torch.tensor(head + cands, dtype=dtype)
    scores = torch.linspace(1, 0, len(boxes), dtype=dtype)
    iou = reference.box_iou(boxes[:1], boxes[1:])[0]
    assert (iou[0::2] == 0.5).all() and (iou[1::2] > 0.5).all()
    keep = _check_nms(boxes, scores, 0.5)
    # exactly at the threshold: kept, (and then the candidates suppress one another: IoU 1 or ~1)
    assert keep.tolist() == [0, 1]
    keep = _check_nms(boxes, scores, _next_down(0.5, dtype))
    assert keep.tolist() == [0]


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


@pytest.mark.parametrize("low_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.3])
def test_nms_low_precision_rounds_the_iou_before_comparing(low_dtype, threshold):
    head, cands = _rounding_pairs(low_dtype, threshold)
    assert len(cands) > 0, "the construction must yield IoUs that cross the threshold only in float32"
    for cand in cands[:: max(1, len(cands) // 8)]:
        pair = torch.stack([head, cand])
        scores = torch.tensor([1.0, 0.5])
        # in float32 the candidate is suppressed; rounded to low_dtype its IoU is not above the threshold
        assert C.nms(pair, scores, threshold).tolist() == [0]
        keep = _check_nms(pair.to(low_dtype), scores.to(low_dtype), threshold)
        assert keep.tolist() == [0, 1]
        keep = _check_nms(pair.to(low_dtype), scores.to(low_dtype), threshold, torch.zeros(2, dtype=torch.long))
        assert keep.tolist() == [0, 1]
    boxes = torch.cat([head[None], cands]).to(low_dtype)
    scores = torch.linspace(1, 0, len(boxes)).to(low_dtype)
    _check_nms(boxes, scores, threshold)


@pytest.mark.parametrize("low_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.65, 0.7, 0.95, 1.0, 70000.0, -70000.0])
def test_nms_low_precision_random_against_the_reference(low_dtype, threshold):
    boxes, scores = _clustered(400, seed=3, dtype=low_dtype)
    _check_nms(boxes, scores, threshold)
    _check_nms(boxes, scores, threshold, torch.randint(0, 2, (400,), generator=torch.Generator().manual_seed(1)))


def test_nms_empty():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        empty = torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype)
        assert C.nms(*empty, 0.5).shape == (0,)
        assert C.batched_nms(*empty, torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)


# ---------------------------------------------------------------------- panoptic_from_dense
SETTINGS = dict(score_threshold=0.0, overlap_threshold=0.5, stuff_area_limit=3)


def _check_panoptic(dense, sem, boxes, classes, scores, is_thing, sigma, score="iou", **kw):
    kw = {**SETTINGS, **kw}
    args = (dense, sem, boxes, classes, scores, is_thing, sigma, score, kw["score_threshold"],
            kw["overlap_threshold"], kw["stuff_area_limit"])
    out = C.panoptic_from_dense(*args)
    ref = reference.panoptic_from_dense(*args)
    for a, b in zip(out, ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    return out


def _scene(seed, h, w, q, c=5, dtype=torch.float32, spread=1.0):
    """Dense boxes repeating the query boxes with noise, softmax probabilities, score ties."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(q, 1), 2, generator=g, dtype=torch.float64) * torch.tensor([w, h]) * 4
    sizes = 4 + torch.rand(max(q, 1), 2, generator=g, dtype=torch.float64) * 40
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    owner = torch.randint(0, max(q, 1), (h, w), generator=g)
    dense = boxes[owner].permute(2, 0, 1) + spread * torch.randn(4, h, w, generator=g, dtype=torch.float64)
    sem = torch.softmax(torch.randn(c, h, w, generator=g, dtype=torch.float64) * 3, 0)
    is_thing = torch.tensor([i >= 2 for i in range(c)])
    classes = torch.randint(2, c, (q,), generator=g)
    scores = (torch.rand(q, generator=g, dtype=torch.float64) * 4).floor() / 4
    return [t.to(dtype) if t.is_floating_point() else t for t in (dense.contiguous(), sem, boxes[:q], classes, scores,
                                                                  is_thing)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score,sigma", [("iou", 0.2), ("iou", 0.0), ("iou", -0.1), ("tri", 0.3), ("tri", -0.5)])
@pytest.mark.parametrize("h,w,q", [(1, 1, 1), (1, 63, 7), (1, 64, 8), (1, 65, 9), (3, 37, 17), (5, 100, 33),
                                   (16, 64, 100)])
def test_panoptic_shapes_around_words_and_chunks(h, w, q, score, sigma, dtype):
    _check_panoptic(*_scene(h * 1000 + w + q, h, w, q, dtype=dtype), sigma, score)


def _one_query_scene(probs, dense_box, query_box, dtype=torch.float32):
    """One row of len(probs) pixels, every dense box = dense_box, one thing query of class 1,
    class-1 probabilities `probs` (class 0, stuff, gets 1 - probs)."""
    w = len(probs)
    prob = torch.tensor(probs, dtype=torch.float64)
    sem = torch.stack([1 - prob, prob]).view(2, 1, w).to(dtype)
    dense = torch.tensor(dense_box, dtype=torch.float64).view(4, 1, 1).expand(4, 1, w).contiguous().to(dtype)
    boxes = torch.tensor([query_box], dtype=dtype)
    return dense, sem, boxes, torch.tensor([1]), torch.tensor([0.9], dtype=dtype), torch.tensor([False, True])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [0.0, -0.0, 0.25, 0.5, 1e-45, 1e-300, -1e-300])
def test_panoptic_product_exactly_at_sigma(sigma, dtype):
    # dense box == query box: IoU exactly 1, so the product is the probability.  Probabilities
    # exactly sigma (not > sigma), one ulp above, one ulp below, at every lane of two words and a tail.
    s = float(torch.tensor(sigma, dtype=dtype))
    pattern = [s, _next_up(s, dtype), _next_down(s, dtype), 0.0]
    probs = [pattern[k % 4] for k in range(64 * 2 + 5)]
    box = [2.0, 2.0, 10.0, 10.0]
    args = _one_query_scene(probs, box, box, dtype)
    out = _check_panoptic(*args, sigma, stuff_area_limit=10**9)
    expected = (torch.tensor(probs, dtype=dtype) > s).to(torch.int32)
    assert torch.equal(out[0][0], expected)


@pytest.mark.parametrize("sigma", [0.0, -0.0, -1e-50, 1e-50, -1e-30])
def test_panoptic_zero_scores_at_the_sign_of_sigma(sigma):
    # Dense boxes far from the query: IoU +0, product +0, and "+0 > sigma" holds only for sigma < 0
    # (as float32: -1e-50 rounds to -0.0, -1e-30 does not).  The rejections must not fire for sigma < 0.
    probs = [0.5] * 70
    args = _one_query_scene(probs, [100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 10.0, 10.0])
    out = _check_panoptic(*args, sigma, stuff_area_limit=10**9)
    expected_all = float(torch.tensor(sigma, dtype=torch.float32)) < 0
    assert bool((out[0] == 1).all()) == expected_all
    assert bool((out[0] == 0).all()) != expected_all


@pytest.mark.parametrize("score,sigma", [("iou", 0.1), ("iou", 0.0), ("iou", -0.2), ("tri", 0.1), ("tri", -0.2)])
def test_panoptic_query_box_touching_the_word_bounds(score, sigma):
    # Every dense box lies in x in [0, 10]; queries start exactly at 10 (touching: inter 0),
    # one ulp left of 10 (overlapping by an ulp), or end exactly at 0.
    w = 64 + 7
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(w, generator=g, dtype=torch.float64) * 5
    dense = torch.stack([x0, torch.zeros(w, dtype=torch.float64), x0 + 5, torch.full((w,), 10.0, dtype=torch.float64)])
    dense = dense.view(4, 1, w).float()
    dense[2, 0, 3] = 10.0  # the word's max x2 is exactly 10
    dense[0, 0, 5] = 0.0  # its min x1 exactly 0
    queries = torch.tensor([[10.0, 0.0, 20.0, 10.0], [_next_down(10.0), 0.0, 20.0, 10.0], [-10.0, 0.0, 0.0, 10.0],
                            [-10.0, 0.0, _next_up(0.0), 10.0], [0.0, 10.0, 10.0, 20.0], [0.0, -5.0, 10.0, 0.0]])
    q = len(queries)
    sem = torch.full((2, 1, w), 0.5)
    _check_panoptic(dense, sem, queries, torch.ones(q, dtype=torch.long), torch.linspace(1, 0.5, q),
                    torch.tensor([False, True]), sigma, score, overlap_threshold=1.0)


def _nonfinite_scene(dtype):
    dense, sem, boxes, classes, scores, is_thing = _scene(11, 6, 80, 12, dtype=dtype)
    dense, sem, boxes, scores = dense.clone(), sem.clone(), boxes.clone(), scores.clone()
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score,sigma", [("iou", 0.2), ("iou", 0.0), ("iou", -0.3), ("tri", 0.2), ("tri", -0.3)])
def test_panoptic_nonfinite_inverted_and_negative_inputs(score, sigma, dtype):
    _check_panoptic(*_nonfinite_scene(dtype), sigma, score)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_panoptic_every_query_rejected(dtype):
    dense, sem, boxes, classes, scores, is_thing = _scene(5, 4, 70, 9, dtype=dtype)
    far = boxes + 10_000  # no query meets any dense box
    out = _check_panoptic(dense, sem, far, classes, scores, is_thing, 0.1)
    assert (out[2] == -1).all() and len(out[1]) > 0
    low = sem.clone()
    low[2:] = low[2:].clamp(max=0.1)  # no thing probability above sigma
    out = _check_panoptic(dense, low, boxes, classes, scores, is_thing, 0.1)
    assert (out[2] == -1).all()
    out = _check_panoptic(dense, low, boxes, classes, scores, is_thing, 0.05)  # control: masks appear
    assert (out[2] >= 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c,w", [(1, 13), (3, 64), (19, 71)])
def test_panoptic_stuff_argmax_ties_and_nan(c, w, dtype):
    g = torch.Generator().manual_seed(c + w)
    sem = (torch.rand(c, 3, w, generator=g) * 3).floor().to(dtype) / 3  # many exact ties
    sem[:, 1, 5] = NAN
    if c > 1:
        sem[c - 1, 1, 8] = NAN
        sem[1, 2, 0:9] = NAN
        sem[0, 2, 0:3] = NAN  # the first NaN wins
    dense = torch.zeros(4, 3, w, dtype=dtype)
    boxes = torch.zeros(0, 4, dtype=dtype)
    is_thing = torch.zeros(c, dtype=torch.bool)
    _check_panoptic(dense, sem, boxes, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=dtype), is_thing, 0.2,
                    stuff_area_limit=0)


def test_panoptic_benchmark_like_scene():
    # the benchmark's construction (dense boxes of random owners: no spatial coherence), smaller
    dense, sem, boxes, classes, scores, is_thing = _scene(7, 32, 96, 100, c=19, spread=4.0)
    out = _check_panoptic(dense, sem, boxes, classes, scores, is_thing, 0.05)
    assert (out[2] >= 0).sum() > 5


# ----------------------------------------------------------------------- the scalar path
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == "default", reason="already on the scalar path")
def test_every_case_above_on_the_scalar_path():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x", "-k",
         "not test_every_case_above_on_the_scalar_path"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    check = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "DEFAULT"

