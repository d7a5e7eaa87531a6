"""panoptic_from_dense: mask construction (eqs. 5-7) + fusion on hand-built scenes."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference

PAN = ops.available_backends("cpu")["panoptic_from_dense"]
BOX_A = [0.0, 0.0, 4.0, 8.0]
BOX_B = [4.0, 0.0, 8.0, 8.0]


def _scene(dtype=torch.float32):
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
    return dense, sem, torch.tensor([False, True, True])


@pytest.mark.parametrize("backend", PAN)
def test_two_things_and_stuff(backend):
    dense, sem, is_thing = _scene()
    boxes = torch.tensor([BOX_A, BOX_B])
    out = ops.panoptic_from_dense(
        dense, sem, boxes, torch.tensor([1, 2]), torch.tensor([0.9, 0.8]), is_thing, backend=backend
    )
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


@pytest.mark.parametrize("backend", PAN)
def test_order_overlap_threshold_and_limits(backend):
    dense, sem, is_thing = _scene()
    boxes = torch.tensor([BOX_A, BOX_B, BOX_A])
    classes = torch.tensor([1, 2, 1])
    # the duplicate of A (query 2) has the best score: it paints first, query 0 fully overlaps
    scores = torch.tensor([0.5, 0.8, 0.95])
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


@pytest.mark.parametrize("backend", PAN)
def test_sigma_controls_the_mask(backend):
    dense, sem, is_thing = _scene()
    boxes = torch.tensor([BOX_A])
    args = (dense, sem, boxes, torch.tensor([1]), torch.tensor([0.9]), is_thing)
    # IoU 1 * P_sem 0.9 = 0.9 on the left: kept at sigma 0.3, dropped at 0.95; the
    # right half has IoU 0 with A.
    assert ops.panoptic_from_dense(*args, sigma=0.3, backend=backend).areas.tolist()[0] == 28
    out = ops.panoptic_from_dense(*args, sigma=0.95, backend=backend)
    assert out.queries.tolist() == [-1]  # only stuff left


@pytest.mark.parametrize("backend", PAN)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_random_matches_reference(backend, seed, score):
    g = torch.Generator().manual_seed(seed)
    h, w, c, q = 24, 32, 6, 12
    centres = torch.rand(q, 2, generator=g) * torch.tensor([w, h]) * 4
    sizes = 8 + torch.rand(q, 2, generator=g) * 40
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    owner = torch.randint(0, q, (h, w), generator=g)
    dense = boxes[owner].permute(2, 0, 1) + torch.randn(4, h, w, generator=g)
    sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
    is_thing = torch.tensor([False, False, True, True, True, True])
    classes = torch.randint(2, c, (q,), generator=g)
    scores = torch.rand(q, generator=g)
    kw = dict(sigma=0.2, score=score, stuff_area_limit=5)
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend=backend, **kw)
    ref = reference.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, 0.2, score, 0.0, 0.5, 5)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    assert len(out.classes) > 2  # the scene is non-trivial


@pytest.mark.parametrize("backend", PAN)
def test_no_queries_is_stuff_only(backend):
    dense, sem, is_thing = _scene()
    out = ops.panoptic_from_dense(
        dense, sem, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0), is_thing, backend=backend
    )
    assert out.queries.tolist() == [-1] and out.classes.tolist() == [0]
    assert out.scores.dtype == torch.float32 and out.areas.dtype == torch.int64
