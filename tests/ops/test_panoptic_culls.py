"""panoptic_from_dense's mask culls: the cpp kernel skips the chunks of pixels whose mask bits
``score * P_sem > sigma`` are certainly 0 (csrc/cpu/panoptic_from_dense_kernel.cpp; the "tri"
bounds and their proofs: csrc/cpu/score_bounds.h).  Every backend against the reference, bit for
bit, on scenes built to break an unsound cull: tiny boxes beside a tiny query (a large "tri" score
between disjoint boxes), products within an ulp of sigma beside culled chunks, probabilities above 1
and below 0, inverted / infinite / NaN boxes, boxes whose "tri" score overflows to +inf, sigma
negative, 0, near 1, NaN and inf, float32 and float64, many seeds; each query alone too (its
segment is then its mask, which fusion would otherwise partly hide).  The cpp kernel is also
compared with itself with every cull off (RTPANOPTIC_PFD_NOCULL=1).  tests/ops/test_cpp_simd.py
runs the cpp cases once more on the scalar path."""
import pytest
import torch

from rtpanoptic.ops import _dispatch, reference

OP = "panoptic_from_dense"
F64 = torch.float64
NAN, INF = float("nan"), float("inf")
DTYPES = [torch.float32, F64]


def _kernel(backend, device):
    return _dispatch.select(OP, backend, torch.device(device))


def _run(backend, device, args, sigma, score):
    """The kernel's segments (no argument checks: any sigma), checked bit for bit against the
    reference; returns the segment map."""
    values = (sigma, score, 0.0, 1.0, 10**9)  # overlap 1: no mask rejected; no stuff segment
    out = _kernel(backend, device)(*[t.to(device) for t in args], *values)
    ref = reference.panoptic_from_dense(*args, *values)
    names = ("segment_map", "classes", "queries", "scores", "areas", "count")
    for name, a, b in zip(names, out, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0, equal_nan=True, msg=name)
    if backend == "cpp":  # the same bits with every cull off
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RTPANOPTIC_PFD_NOCULL", "1")
            plain = _kernel(backend, device)(*[t.to(device) for t in args], *values)
        for name, a, b in zip(names, out, plain):
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0, equal_nan=True, msg=name)
    return out[0].cpu()


def _each_query_alone(backend, device, args, sigma, score):
    """Every query alone: its segment (id 1) is exactly its mask.  Returns the masks [Q, h, w]."""
    dense, sem, boxes, classes, scores, is_thing = args
    return torch.stack([_run(backend, device, (dense, sem, boxes[j:j + 1], classes[j:j + 1], scores[j:j + 1],
                                               is_thing), sigma, score) == 1 for j in range(boxes.shape[0])])


def _scores(dense, box, score):
    """score(dense box, box) per pixel [h, w], in the dtype (the reference's formula)."""
    return reference.pairwise_box_score(dense.reshape(4, -1).t(), box.view(1, 4), score)[0].view(dense.shape[1:])


def _step(x, k):
    """x moved by k ulps of its dtype (elementwise)."""
    toward = torch.full_like(x, INF if k > 0 else -INF)
    for _ in range(abs(k)):
        x = torch.nextafter(x, toward)
    return x


def _least_passing(s, sigma):
    """The least probability p of s's dtype with fl(s * p) > sigma, elementwise, for s > 0 finite
    (fl(s * p) is nondecreasing in p); NaN elsewhere."""
    sig = torch.tensor(sigma, dtype=s.dtype)
    ok = (s > 0) & s.isfinite()
    s1 = torch.where(ok, s, torch.ones_like(s))
    # a first guess within a few ulps (in the subnormal range the ulps are coarse): sigma / s, or
    # for sigma = 0 the product's least value that rounds above 0 (half the least subnormal)
    half_tiny_exp = -150 if s.dtype == torch.float32 else -1075  # 2 ** -1075 is not a float64
    guess = (sigma / s1.to(F64)) if sigma != 0 else (2.0 ** -100 / s1.to(F64)) * 2.0 ** (half_tiny_exp + 100)
    p = guess.to(s.dtype)
    for _ in range(64):  # walk down while still passing, up while not (a few steps at most)
        down = _step(p, -1)
        p = torch.where(s1 * down > sig, down, p)
        p = torch.where(s1 * p > sig, p, _step(p, 1))
    assert bool(((s1 * p > sig) & ~(s1 * _step(p, -1) > sig))[ok].all())
    return torch.where(ok, p, torch.full_like(p, NAN))


def _at_the_bound(s, sigma, g, low=0.01):
    """Probabilities at the bound of the scores s: the least passing one, or one ulp below or
    above it (random per pixel); `low` where there is none (s <= 0, NaN, inf)."""
    p = _least_passing(s, sigma)
    k = torch.randint(-1, 2, s.shape, generator=g)
    p = torch.where(k < 0, _step(p, -1), torch.where(k > 0, _step(p, 1), p))
    return torch.where(p.isnan(), torch.full_like(p, low), p)


def _one_row(dense_boxes, probs, query, dtype):
    """One row of pixels with the given dense boxes [w, 4] and class-1 probabilities [w], one thing
    query of class 1 (class 0, stuff, gets 1 - probs)."""
    w = dense_boxes.shape[0]
    dense = dense_boxes.t().reshape(4, 1, w).to(dtype).contiguous()
    sem = torch.stack([1 - probs, probs]).view(2, 1, w).to(dtype)
    return (dense, sem, torch.tensor([query], dtype=dtype), torch.tensor([1]), torch.tensor([0.9], dtype=dtype),
            torch.tensor([False, True]))


# ---------------------------------------------------------------- hand-built scenes
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [0.4, 0.0, 0.9, 0.999999, -0.25])
@pytest.mark.parametrize("side", [0.3, 1e-3])
def test_tri_of_tiny_disjoint_boxes(backend, device, sigma, side, dtype):
    """A tiny query (area < 1) and tiny dense boxes beside it, touching it, at its corner or a gap
    away: disjoint (inter 0), yet tri ~ 1 / (area + 1) is large.  Probabilities at the bound of
    each pixel's product, and chunks of low probabilities beside them; two words and a tail."""
    g = torch.Generator().manual_seed(int(side * 1000) + int(sigma * 100))
    w = 64 * 2 + 11
    a = side
    query = [0.0, 0.0, a, a]
    t = torch.rand(w, generator=g, dtype=F64) * a  # a dense box's side
    gap = torch.rand(w, generator=g, dtype=F64) * a
    zero = torch.zeros(w, dtype=F64)
    shapes = [
        torch.stack([zero + a, zero, a + t, t], 1),  # touching the query's right edge
        torch.stack([a + gap, zero, a + gap + t, t], 1),  # a gap to its right
        torch.stack([zero + a, zero + a, a + t, a + t], 1),  # at its corner
        torch.stack([-t, zero, zero, zero + a], 1),  # touching its left edge
        torch.stack([zero + a, zero, zero + a, zero + a], 1),  # zero width, on its edge
        torch.tensor(query, dtype=F64).expand(w, 4),  # the query itself
    ]
    kind = torch.randint(0, len(shapes), (w,), generator=g)
    boxes = torch.stack(shapes)[kind, torch.arange(w)]
    dense = boxes.t().reshape(4, 1, w).to(dtype)
    s = _scores(dense, torch.tensor(query, dtype=dtype), "tri")[0]
    probs = _at_the_bound(s, sigma, g).to(F64)
    probs[16:24] = 0.01  # a chunk of low probabilities between passing ones
    args = _one_row(boxes, probs, query, dtype)
    mask = _run(backend, device, args, sigma, "tri")[0] == 1
    disjoint = kind < len(shapes) - 1
    assert bool(mask[disjoint].any()) and not bool(mask[disjoint].all())  # the disjoint boxes decide


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("sigma", [0.4, 0.0, 1e-30, 0.999999, 1.0, -0.1])
def test_products_one_ulp_around_sigma(backend, device, score, sigma, dtype):
    """Dense boxes equal to the query, a few ulps around it, nested in it, overlapping it, far from
    it, at several scales (scores 1, just below 1, and small); each pixel's probability the least
    one whose product passes sigma, or one ulp below or above it: an upper bound of the score that
    is an ulp too low culls a passing pixel."""
    g = torch.Generator().manual_seed(7)
    w = 64 * 3 + 5
    query = (torch.tensor([1.0, 2.0, 5.0, 7.0], dtype=F64) * 2.0 ** 8).to(dtype)
    scale = (2.0 ** torch.randint(-4, 20, (w, 1), generator=g)).to(F64)  # of the other boxes
    base = torch.tensor([[1.0, 2.0, 5.0, 7.0]], dtype=F64) * scale
    jitter = torch.randint(-2, 3, (w, 4), generator=g).to(F64)
    shapes = [
        query.to(F64).expand(w, 4),  # the query itself
        _step(query, 1).to(F64).expand(w, 4),  # an ulp away
        _step(query, -2).to(F64).expand(w, 4),
        base,  # similar, at another scale
        base + scale * torch.tensor([[0.5, 0.5, -0.5, -0.5]], dtype=F64),  # nested in it
        base + scale * jitter / 4,  # overlapping it
        base + scale * 10,  # far from it
    ]
    kind = torch.randint(0, len(shapes), (w,), generator=g)
    dense = torch.stack(shapes)[kind, torch.arange(w)].to(dtype).t().reshape(4, 1, w)
    s = _scores(dense, query, score)[0]
    probs = _at_the_bound(s, sigma, g).to(F64)
    probs[40:48] = 0.0
    args = _one_row(dense[:, 0].t().to(F64), probs, query.tolist(), dtype)
    mask = _run(backend, device, args, sigma, score)[0] == 1
    assert bool(mask.any()) and not bool(mask.all())


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [0.4, 0.0, -0.5])
def test_tri_overflowing_to_inf_and_boxes_at_the_bound(backend, device, sigma, dtype):
    """Boxes too large for the bounds: a box equal to the query whose areas overflow when added
    (tri = 0 - (-inf) = +inf: it passes with a probability of 1e-30), coordinates just above and
    at 2^60 (float32) / 2^508 (float64), inverted, NaN and infinite boxes and queries."""
    big = 1.5e19 if dtype == torch.float32 else 1.2e154
    limit = 2.0 ** 60 if dtype == torch.float32 else 2.0 ** 508
    above = float(_step(torch.tensor(limit, dtype=dtype), 1))
    rows = [
        [0.0, 0.0, big, big],  # tri(box, itself) = +inf
        [0.0, 0.0, limit, limit],
        [-limit, -limit, limit, limit],
        [0.0, 0.0, above, 1.0],
        [5.0, 5.0, 1.0, 1.0],  # inverted
        [NAN, 0.0, 4.0, 4.0],
        [-INF, 0.0, 4.0, 4.0],
        [0.0, 0.0, INF, 4.0],
        [-INF, -INF, INF, INF],
        [1.0, 1.0, 3.0, 3.0],
    ]
    queries = [[0.0, 0.0, big, big], [0.0, 0.0, limit, limit], [-limit, -limit, limit, limit],
               [0.0, 0.0, above, 1.0], [3.0, 3.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0], [-INF, -INF, INF, INF],
               [0.0, 0.0, INF, 2.0]]
    w = 64 + 9
    idx = torch.arange(w) % len(rows)
    idx[8:16] = 0  # a whole chunk of +inf scores, all with probability 1e-30
    boxes = torch.tensor(rows, dtype=F64)[idx]
    probs = torch.where(torch.arange(w) % 3 == 0, torch.tensor(1e-30, dtype=F64), torch.tensor(0.6, dtype=F64))
    probs[8:16] = 1e-30
    for query in queries:
        args = _one_row(boxes, probs, query, dtype)
        for score in ("tri", "iou"):
            _run(backend, device, args, sigma, score)
    args = _one_row(boxes, probs, [0.0, 0.0, big, big], dtype)
    assert bool((_run(backend, device, args, 0.4, "tri")[0, idx == 0] == 1).all())  # +inf * 1e-30 > 0.4


# ---------------------------------------------------------------- random scenes
def _adversarial_scene(seed, h=6, w=50, q=10, dtype=torch.float32, sigma=0.4, score="tri"):
    """Queries of sides from 0.01 to 50 (many tiny); dense boxes in runs of 3-12 pixels that copy a
    query's box (exactly, with noise, or an ulp away), sit beside it (tiny, touching or a gap away),
    or are inverted, NaN, infinite, huge; class probabilities at the bound of the product of each
    pixel with its run's query (the least passing one, or an ulp below or above), low runs between.
    Classes: 0, 1 stuff; 2, 3, 4 things."""
    g = torch.Generator().manual_seed(seed)
    sides = 10.0 ** (torch.rand(q, 2, generator=g, dtype=F64) * 3.7 - 2)
    centres = torch.rand(q, 2, generator=g, dtype=F64) * 60
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], 1).to(dtype).to(F64)
    classes = torch.randint(2, 5, (q,), generator=g)
    n = h * w
    owner = torch.empty(n, dtype=torch.long)
    dense = torch.empty(n, 4, dtype=F64)
    p = 0
    while p < n:
        run = int(torch.randint(3, 13, (1,), generator=g))
        j = int(torch.randint(0, q, (1,), generator=g))
        b = boxes[j]
        side = b[2:] - b[:2]
        kind = int(torch.randint(0, 9, (1,), generator=g))
        k = min(run, n - p)
        t = torch.rand(k, 2, generator=g, dtype=F64) * side * 0.5
        if kind == 0:
            d = b.repeat(k, 1)
        elif kind == 1:
            d = b + torch.randn(k, 4, generator=g, dtype=F64) * side.repeat(2) * 0.05
        elif kind == 2:  # tiny, touching the query's right edge
            d = torch.cat([torch.stack([b[2].repeat(k), b[1].repeat(k)], 1),
                           torch.stack([b[2].repeat(k), b[1].repeat(k)], 1) + t], 1)
        elif kind == 3:  # tiny, a small gap below the query
            y = b[3] + torch.rand(k, generator=g, dtype=F64) * side[1] * 0.1
            d = torch.stack([b[0].repeat(k), y, b[0] + t[:, 0], y + t[:, 1]], 1)
        elif kind == 4:  # inverted
            d = b[[2, 3, 0, 1]].repeat(k, 1)
        elif kind == 5:  # an ulp away
            d = _step(b.to(dtype), int(torch.randint(-2, 3, (1,), generator=g)) or 1).to(F64).repeat(k, 1)
        elif kind == 6:  # NaN / inf coordinates in some pixels
            d = b.repeat(k, 1)
            d[::2, int(torch.randint(0, 4, (1,), generator=g))] = [NAN, INF, -INF][int(torch.randint(0, 3, (1,),
                                                                                                   generator=g))]
        elif kind == 7:  # huge boxes
            d = torch.tensor([[-1e30, -1e30, 1e30, 1e30]], dtype=F64).repeat(k, 1)
        else:  # random boxes anywhere
            c = torch.rand(k, 2, generator=g, dtype=F64) * 60
            d = torch.cat([c, c + torch.rand(k, 2, generator=g, dtype=F64) * 20], 1)
        dense[p:p + k] = d
        owner[p:p + k] = j
        p += k
    dense = dense.to(dtype)
    s = reference.pairwise_box_score(dense, boxes.to(dtype), score)  # [Q, P]
    own = s.gather(0, owner.view(1, n))[0]
    probs = _at_the_bound(own, sigma, g).to(F64)
    low = torch.rand(n, generator=g) < 0.15  # low runs beside passing ones
    probs = torch.where(low, torch.rand(n, generator=g, dtype=F64) * 0.05, probs)
    sem = torch.rand(5, n, generator=g, dtype=F64) * 0.1
    sem[classes[owner], torch.arange(n)] = probs
    scores = torch.rand(q, generator=g, dtype=F64)
    is_thing = torch.tensor([False, False, True, True, True])
    return (dense.t().reshape(4, h, w).contiguous(), sem.view(5, h, w).to(dtype), boxes.to(dtype), classes,
            scores.to(dtype), is_thing)


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score,sigma", [("tri", 0.4), ("tri", 0.0), ("tri", 0.95), ("tri", -0.3), ("iou", 0.4),
                                         ("iou", 0.0)])
@pytest.mark.parametrize("seed", range(6))
def test_random_adversarial_scenes(backend, device, seed, score, sigma, dtype, skip_interpreted):
    if seed > 1:
        skip_interpreted(backend, device, "more seeds")
    args = _adversarial_scene(seed, dtype=dtype, sigma=sigma, score=score)
    _run(backend, device, args, sigma, score)  # all queries: fusion
    masks = _each_query_alone(backend, device, args, sigma, score)
    assert 0 < int(masks.sum()) < masks.numel()


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("score", ["iou", "tri"])
@pytest.mark.parametrize("sigma", [NAN, INF, -INF, 1.0, 1e-45, -1e-45, 2.0])
def test_sigma_at_its_extremes(backend, device, score, sigma):
    args = _adversarial_scene(11, dtype=torch.float32, sigma=0.4, score=score)
    _run(backend, device, args, sigma, score)


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("dtype", DTYPES)
def test_negative_and_large_probabilities(backend, device, dtype):
    """Probabilities below 0 (a negative score times a negative probability is positive: tri lies
    in [-1, 1]) and above 1, NaN and inf, in chunks of their own and mixed with normal ones."""
    dense, sem, boxes, classes, scores, is_thing = _adversarial_scene(12, dtype=dtype, sigma=0.2)
    sem = sem.clone()
    flat = sem.view(5, -1)
    flat[:, 0:8] = -0.9
    flat[:, 11] = -0.5
    flat[:, 20:28] = 7.0
    flat[:, 30] = NAN
    flat[:, 31] = INF
    flat[:, 40:48] = NAN
    flat[:, 50] = -0.0
    for sigma, score in [(0.2, "tri"), (0.0, "tri"), (-0.3, "tri"), (0.2, "iou"), (0.0, "iou")]:
        masks = _each_query_alone(backend, device, (dense, sem, boxes, classes, scores, is_thing), sigma, score)
        assert bool(masks.any())
