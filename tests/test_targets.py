import math

import pytest
import torch

from rtpanoptic.targets import TargetConfig, assign_points, build_targets, centerness_target, sample_masks


def _sample(masks, labels, semantic=None, crowd=None, size=128):
    masks = torch.stack(masks) if masks else torch.zeros((0, size, size), dtype=torch.bool)
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {
        "images": torch.zeros((1, 3, size, size), dtype=torch.uint8),
        "instance_masks": [masks],
        "boxes": [torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)],
        "labels": [torch.tensor(labels, dtype=torch.int64)],
        "semantic": [semantic if semantic is not None else torch.zeros((size, size), dtype=torch.int64)],
        "crowd_mask": [crowd if crowd is not None else torch.zeros((size, size), dtype=torch.bool)],
    }


def _rect(y0, y1, x0, x1, size=128):
    m = torch.zeros((size, size), dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def scene():
    # A: rows 8..39, cols 8..55 -> box (8, 8, 56, 40), class 0 (small: level 0 only)
    # B: rows 64..127, all columns -> box (0, 64, 128, 128), class 2 (level 1 everywhere)
    return _sample([_rect(8, 40, 8, 56), _rect(64, 128, 0, 128)], [0, 2])


def test_hand_values_level0(scene):
    t = build_targets(scene)
    # stride 8: cell (i=1, j=1) sits at image point (12, 12), inside A
    assert t.labels[0][0, 1, 1] == 0
    assert t.box_offsets[0][0, :, 1, 1].tolist() == [4, 4, 44, 28]  # l = 12-8, t = 12-8, r = 56-12, b = 40-12
    expected_ctr = math.sqrt(4 / 44 * 4 / 28)
    assert t.centerness[0][0, 1, 1].item() == pytest.approx(expected_ctr, rel=1e-6)
    # (4, 4) is outside A's mask: background
    assert t.labels[0][0, 0, 0] == -1 and t.box_offsets[0][0, :, 0, 0].tolist() == [0, 0, 0, 0]
    assert t.centerness[0][0, 0, 0] == 0
    # A covers x in {12..52} (6 cells) and y in {12..36} (4 cells) at stride 8
    assert int((t.labels[0][0, :5] == 0).sum()) == 24
    # B at stride 8: point (4, 68): max(4, 4, 124, 60) = 124 -> level 1, not level 0
    assert t.labels[0][0, 8, 0] == -1
    assert t.labels[1][0, 4, 0] == 2  # stride 16, point (8, 72): max = 120
    assert t.box_offsets[1][0, :, 4, 0].tolist() == [8, 8, 120, 56]


def test_size_range_boundaries(scene):
    t = build_targets(scene)
    # A at stride 16: point (8, 8): offsets (0, 0, 48, 32) -> max 48 belongs to level 0 only
    assert (t.labels[1][0, :3] == -1).all()
    # B at stride 128: point (64, 64): (64, 0, 64, 64), max = 64 fits levels 0 and 1 (eq. 9 is
    # inclusive on both ends) but not level 4 (512..inf)
    assert t.labels[4][0, 0, 0] == -1
    # stride 64: point (32, 96): (32, 32, 96, 32) -> 96, level 1 only: not on level 3
    assert (t.labels[3] == -1).all()
    # eq. 9 is inclusive at both ends: max(l, t, r, b) = 64 fits level 0 (0..64) and level 1 (64..128)
    t = build_targets(_sample([_rect(0, 68, 0, 68)], [1]))  # box (0, 0, 68, 68)
    assert t.box_offsets[0][0, :, 0, 0].tolist() == [4, 4, 64, 64]  # stride 8 point (4, 4): max 64
    assert t.labels[0][0, 0, 0] == 1
    assert t.labels[1][0, 0, 0] == -1  # stride 16 point (8, 8): (8, 8, 60, 60) -> level 0 only
    t = build_targets(_sample([_rect(0, 72, 0, 72)], [1]))  # box (0, 0, 72, 72)
    assert t.labels[0][0, 0, 0] == -1  # stride 8 point (4, 4): (4, 4, 68, 68) -> 68, level 1 only
    assert t.labels[1][0, 0, 0] == 1  # stride 16 point (8, 8): (8, 8, 64, 64) -> max 64 fits level 1
    assert t.box_offsets[1][0, :, 0, 0].tolist() == [8, 8, 64, 64]
    assert t.levelness[0, 0, 0] == 2  # levelness point (2, 2): (2, 2, 70, 70) -> level 1 -> 2


def _naive(sample, stride, ranges, weak=False):
    """Per-pixel Python loop over the formulas (eqs. 8-10)."""
    masks, boxes, labels = sample["instance_masks"][0], sample["boxes"][0], sample["labels"][0]
    size = masks.shape[-1] // stride
    lab = torch.full((size, size), -1)
    off = torch.zeros((4, size, size))
    for i in range(size):
        for j in range(size):
            x, y = stride // 2 + j * stride, stride // 2 + i * stride
            best, best_area = None, math.inf
            for n in range(len(boxes)):
                x1, y1, x2, y2 = boxes[n].tolist()
                inside = (x1 <= x < x2 and y1 <= y < y2) if weak else bool(masks[n, y, x])
                area = (x2 - x1) * (y2 - y1)
                if inside and area < best_area:
                    best, best_area = n, area
            if best is None:
                continue
            x1, y1, x2, y2 = boxes[best].tolist()
            o = [x - x1, y - y1, x2 - x, y2 - y]
            if ranges[0] <= max(o) <= ranges[1]:
                lab[i, j] = labels[best]
                off[:, i, j] = torch.tensor(o)
    return lab, off


@pytest.mark.parametrize("weak", [False, True])
def test_matches_naive_loop(weak):
    g = torch.Generator().manual_seed(0)
    masks, labels = [], []
    occupied = torch.zeros((128, 128), dtype=torch.bool)
    for n in range(6):
        y0, x0 = torch.randint(0, 100, (2,), generator=g).tolist()
        h, w = torch.randint(4, 90, (2,), generator=g).tolist()
        m = _rect(y0, min(128, y0 + h), x0, min(128, x0 + w)) & ~occupied  # non-overlapping masks
        if m.sum() == 0:
            continue
        occupied |= m
        masks.append(m)
        labels.append(n % 3)
    s = _sample(masks, labels)
    cfg = TargetConfig(weak=weak)
    t = build_targets(s, cfg)
    for i, stride in enumerate(cfg.strides):
        lab, off = _naive(s, stride, cfg.size_ranges[i], weak)
        assert torch.equal(t.labels[i][0], lab), (stride, weak)
        assert torch.equal(t.box_offsets[i][0], off), (stride, weak)


def test_weak_overlap_goes_to_smallest_box():
    big = _rect(0, 64, 0, 64)  # box (0, 0, 64, 64)
    small = _rect(16, 32, 16, 32)  # box (16, 16, 32, 32), inside the big box
    s = _sample([big & ~small, small], [0, 1])
    t = build_targets(s, TargetConfig(weak=True))
    # stride 8 point (20, 20) lies in both boxes: the small one (class 1) wins
    assert t.labels[0][0, 2, 2] == 1
    assert t.box_offsets[0][0, :, 2, 2].tolist() == [4, 4, 12, 12]
    # with masks the big instance's mask does not hold (20, 20): still the small one; and weak
    # supervision makes a point inside the big box but outside its mask foreground: mask a hole
    holed = big.clone()
    holed[40:48, 40:48] = False
    s = _sample([holed], [0])
    assert build_targets(s).labels[0][0, 5, 5] == -1  # point (44, 44) in the hole
    assert build_targets(s, TargetConfig(weak=True)).labels[0][0, 5, 5] == 0


def test_levelness_semantic_and_crowd(scene):
    sem = torch.arange(128).repeat(128, 1) % 7  # column index mod 7
    sem[:, 100:] = 255
    crowd = _rect(0, 16, 96, 128)
    s = dict(scene)
    s["semantic"], s["crowd_mask"] = [sem], [crowd]
    t = build_targets(s)
    assert t.levelness.shape == (1, 32, 32) and t.semantic.shape == (1, 32, 32)
    # levelness point (2 + 4j, 2 + 4i): (14, 14) is inside A: offsets (6, 6, 42, 26) -> level 0 -> 1
    assert t.levelness[0, 3, 3] == 1
    # (2, 66) inside B: (2, 2, 126, 62) -> 126 -> level 1 -> 2
    assert t.levelness[0, 16, 0] == 2
    # (2, 2) background; (98, 2) background inside the crowd region -> ignored (-1)
    assert t.levelness[0, 0, 0] == 0 and t.levelness[0, 0, 24] == -1
    # per-level: background in crowd is not valid, elsewhere valid
    assert not t.valid[0][0, 0, 12] and t.valid[0][0, 0, 0] and t.valid[0][0, 1, 1]
    # semantic: sampled at column 2 + 4j
    assert t.semantic[0, 5].tolist() == [(2 + 4 * j) % 7 if 2 + 4 * j < 100 else 255 for j in range(32)]
    # semantic stride 8 samples at 4 + 8j
    t8 = build_targets(s, TargetConfig(semantic_stride=8))
    assert t8.semantic[0, 0, 1] == 12 % 7


def test_centerness_formula_and_empty():
    off = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [0.0, 3.0, 2.0, 3.0]])
    expected = [math.sqrt(1 / 3 * 2 / 4), 1.0, 0.0]
    assert centerness_target(off).tolist() == pytest.approx(expected)
    s = _sample([], [])
    t = build_targets(s)
    assert all((lab == -1).all() for lab in t.labels) and (t.levelness == 0).all()
    inst, off = assign_points(torch.tensor([1]), torch.tensor([1]), torch.zeros((0, 8, 8), dtype=torch.bool),
                              torch.zeros((0, 4)), False)
    assert inst.tolist() == [-1] and off.tolist() == [[0, 0, 0, 0]]


def test_sample_masks_and_bad_input(scene):
    m = sample_masks(scene["instance_masks"][0], 4)
    assert m.shape == (2, 32, 32) and m[0, 2, 2] and not m[0, 1, 1]  # (10, 10) in A, (6, 6) not
    bad = dict(scene)
    bad["semantic"] = [torch.zeros((64, 64), dtype=torch.int64)]
    with pytest.raises(ValueError, match="semantic"):
        build_targets(bad)
    with pytest.raises(ValueError, match="size_ranges"):
        TargetConfig(size_ranges=((0, 1),))
