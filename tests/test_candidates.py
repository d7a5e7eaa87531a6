"""Candidate selection (paper eq. 4) against a per-location loop, and the cell-centre grid."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.candidates import NO_CANDIDATE, select_candidates
from rtpanoptic.ops.grid import cell_centres

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
