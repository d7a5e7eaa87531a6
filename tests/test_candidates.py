"""Candidate selection (paper eq. 4) against a per-location loop, and the cell-centre grid."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.candidates import NO_CANDIDATE, select_candidates
from rtpanoptic.ops.grid import cell_centres, cells_before

STRIDES = (8, 16)


def _level_outputs(b, k, size, seed):
    g = torch.Generator().manual_seed(seed)
    boxes, logits, ctr = [], [], []
    for s in STRIDES:
        h, w = size[0] // s, size[1] // s
        boxes.append(ops.decode_boxes(torch.rand(b, 4, h, w, generator=g) * 40, s, backend="reference"))
        logits.append(torch.randn(b, k, h, w, generator=g) * 2)
        ctr.append(torch.randn(b, 1, h, w, generator=g))
    return boxes, logits, ctr


def _loop(boxes, logits, ctr, thresh, top_n, sizes):
    """Every (level, class, y, x) visited one by one: the candidates of each image as sets of rows."""
    out = []
    for b in range(logits[0].shape[0]):
        rows = []
        for lb, lg, c, s in zip(boxes, logits, ctr, STRIDES):
            level = []
            for k in range(lg.shape[1]):
                for y in range(lg.shape[2]):
                    for x in range(lg.shape[3]):
                        p = torch.sigmoid(lg[b, k, y, x])
                        inside = sizes is None or (y * s + s // 2 < sizes[b][0] and x * s + s // 2 < sizes[b][1])
                        if p > thresh and inside:
                            level.append((float(p * torch.sigmoid(c[b, 0, y, x])), k, *lb[b, :, y, x].tolist()))
            rows += sorted(level, reverse=True)[:top_n]
        out.append(sorted(rows))
    return out


def _rows(c):
    return sorted((s, k, *box) for s, k, box in zip(c.scores.tolist(), c.labels.tolist(), c.boxes.tolist()))


@pytest.mark.parametrize("sizes", [None, [(64, 64), (40, 57)]])
@pytest.mark.parametrize("top_n", [3, 1000])
def test_matches_a_per_location_loop(sizes, top_n):
    boxes, logits, ctr = _level_outputs(2, 3, (64, 64), seed=top_n)
    got = select_candidates(boxes, logits, ctr, STRIDES, 0.4, top_n, image_sizes=sizes)
    expected = _loop(boxes, logits, ctr, 0.4, top_n, sizes)
    assert len(got) == 2
    for c, e in zip(got, expected):
        assert c.labels.dtype == torch.int64 and c.scores.dtype == torch.float32
        assert [r[1] for r in _rows(c)] == [r[1] for r in e]
        assert torch.tensor(_rows(c)) == pytest.approx(torch.tensor(e), rel=1e-6)
        assert len(e) > 0
    if sizes is not None:  # the padding changes the smaller image's candidates only
        whole = select_candidates(boxes, logits, ctr, STRIDES, 0.4, top_n)
        assert _rows(got[0]) == _rows(whole[0]) and _rows(got[1]) != _rows(whole[1])


def test_each_level_in_decreasing_score():
    boxes, logits, ctr = _level_outputs(1, 2, (64, 64), seed=3)
    c = select_candidates(boxes, logits, ctr, STRIDES, 0.3, 1000)[0]
    n0 = int((torch.sigmoid(logits[0]) > 0.3).sum())
    for part in (c.scores[:n0], c.scores[n0:]):
        assert torch.equal(part, part.sort(descending=True).values)


def test_fixed_count_pads_with_no_candidate():
    boxes, logits, ctr = _level_outputs(1, 2, (64, 64), seed=4)
    free = select_candidates(boxes, logits, ctr, STRIDES, 0.7, 40)[0]
    fixed = select_candidates(boxes, logits, ctr, STRIDES, 0.7, 40, fixed_count=True)[0]
    assert len(fixed.scores) == 40 + min(40, 2 * 4 * 4)
    real = fixed.scores != NO_CANDIDATE
    assert _rows(free) == _rows(type(fixed)(fixed.boxes[real], fixed.scores[real], fixed.labels[real]))
    assert 0 < len(free.scores) < int(real.numel())


def test_nothing_passes():
    boxes, logits, ctr = _level_outputs(1, 2, (32, 32), seed=5)
    c = select_candidates(boxes, logits, ctr, STRIDES, 1.0, 10)[0]
    assert c.boxes.shape == (0, 4) and c.scores.shape == (0,) and c.labels.shape == (0,)


def test_boxes_stay_differentiable():
    boxes, logits, ctr = _level_outputs(1, 2, (32, 32), seed=6)
    boxes = [b.requires_grad_() for b in boxes]
    c = select_candidates(boxes, logits, ctr, STRIDES, 0.2, 5)[0]
    c.boxes.sum().backward()
    assert sum(int((b.grad != 0).any(dim=1).sum()) for b in boxes) == len({*map(tuple, c.boxes.tolist())}) > 0


def test_cell_centres():
    assert cell_centres(4, 8).tolist() == [4, 12, 20, 28]
    assert cell_centres(3, 5, torch.float32).tolist() == [2.0, 7.0, 12.0]
    assert cell_centres(0, 8).shape == (0,)
    # the reference decodes around these centres (zero offsets give the centres themselves)
    centres = ops.reference.decode_boxes(torch.zeros(1, 4, 3, 6), 16)[0]
    assert torch.equal(centres[0, 0], cell_centres(6, 16, torch.float32))
    assert torch.equal(centres[1, :, 0], cell_centres(3, 16, torch.float32))


def _masked_select(boxes, class_logits, centerness, strides, thresh, top_n, image_sizes=None, fixed_count=False):
    """select_candidates written with explicit masks: p > thresh and the cell centre inside the image
    (cell_centres against the size), NO_CANDIDATE elsewhere, topk of each image's flat scores."""
    per_image = [[] for _ in range(class_logits[0].shape[0])]
    for level_boxes, logits, ctr, stride in zip(boxes, class_logits, centerness, strides):
        prob = logits.float().sigmoid()
        score = prob * ctr.float().sigmoid()
        hl, wl = prob.shape[2], prob.shape[3]
        for b in range(prob.shape[0]):
            ok = prob[b] > thresh
            if image_sizes is not None:
                h, w = image_sizes[b]
                ok = ok & (cell_centres(hl, stride)[:, None] < h) & (cell_centres(wl, stride)[None, :] < w)
            ok = ok.flatten()
            s = torch.where(ok, score[b].flatten(), torch.full_like(score[b].flatten(), NO_CANDIDATE))
            n = min(top_n, s.numel()) if fixed_count else min(int(ok.sum()), top_n)
            top, idx = s.topk(n)
            per_image[b].append((level_boxes[b].reshape(4, hl * wl)[:, idx % (hl * wl)].t(), top, idx // (hl * wl)))
    return [tuple(torch.cat(parts) for parts in zip(*levels)) for levels in per_image]


@pytest.mark.parametrize("fixed_count", [False, True])
@pytest.mark.parametrize("top_n", [5, 37, 1000])
def test_equals_the_masked_formula_exactly(fixed_count, top_n):
    """Bit for bit and in the same order as the explicit masks, on adversarial inputs: scores with
    many exact ties (quantised logits), NaN and inf logits and centerness, image sizes that cut the
    grid before, at and between cell centres (also before the first centre: nothing inside)."""
    g = torch.Generator().manual_seed(top_n)
    b, k = 5, 3
    boxes, logits, ctr = _level_outputs(b, k, (64, 80), seed=top_n)
    for lg, c in zip(logits, ctr):
        lg.copy_((lg * 2).round() / 2)  # ties
        c.copy_(c.round())
        flat = lg.view(-1)
        flat[torch.randint(0, flat.numel(), (12,), generator=g)] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(4)
        c.view(-1)[torch.randint(0, c.numel(), (4,), generator=g)] = float("nan")
    sizes = [(64, 80), (3, 80), (64, 4), (36, 45), (41, 70)]
    for image_sizes in (None, sizes):
        got = select_candidates(boxes, logits, ctr, STRIDES, 0.3, top_n, image_sizes=image_sizes,
                                fixed_count=fixed_count)
        want = _masked_select(boxes, logits, ctr, STRIDES, 0.3, top_n, image_sizes, fixed_count)
        for c, w in zip(got, want):
            for a, e in zip(c, w):
                assert a.dtype == e.dtype and a.shape == e.shape
                assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.nan_to_num(), e.nan_to_num())


def test_cells_before():
    for stride in (1, 3, 4, 8, 128):
        for size in (0, 1, 5, 16):
            for limit in range(-3, size * stride + stride + 3):
                assert cells_before(limit, size, stride) == int((cell_centres(size, stride) < limit).sum())
