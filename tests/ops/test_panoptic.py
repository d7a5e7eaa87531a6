"""panoptic_from_dense: mask construction (eqs. 5-7) + fusion on hand-built scenes, and every
(backend, device) pair against the reference, bit for bit."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference

OP = "panoptic_from_dense"
NAN = float("nan")
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
def test_sigma_controls_the_mask(backend, device):
    dense, sem, is_thing = _scene(device=device)
    boxes = torch.tensor([BOX_A], device=device)
    args = (dense, sem, boxes, torch.tensor([1], device=device), torch.tensor([0.9], device=device), is_thing)
    # IoU 1 * P_sem 0.9 = 0.9 on the left: kept at sigma 0.3, dropped at 0.95; the
    # right half has IoU 0 with A.
    assert ops.panoptic_from_dense(*args, sigma=0.3, backend=backend).areas.tolist()[0] == 28
    out = ops.panoptic_from_dense(*args, sigma=0.95, backend=backend)
    assert out.queries.tolist() == [-1]  # only stuff left


def _random_scene(seed, h=24, w=32, c=6, q=12, dtype=torch.float32, device="cpu", box_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(q, 2, generator=g) * torch.tensor([w, h]) * 4 * box_scale
    sizes = (8 + torch.rand(q, 2, generator=g) * 40) * box_scale
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    owner = torch.randint(0, q, (h, w), generator=g)
    dense = boxes[owner].permute(2, 0, 1) + torch.randn(4, h, w, generator=g) * box_scale
    sem = torch.softmax(torch.randn(c, h, w, generator=g) * 3, 0)
    is_thing = torch.tensor([i >= 2 for i in range(c)])
    classes = torch.randint(2, c, (q,), generator=g)
    scores = torch.rand(q, generator=g)
    cast = lambda t: t.to(dtype).to(device)
    return cast(dense), cast(sem), cast(boxes), classes.to(device), cast(scores), is_thing.to(device)


def _assert_identical(out, ref):
    for name, a, b in zip(("segment_map", "classes", "queries", "scores", "areas"), out, ref):
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), name


@pytest.mark.backends(OP, reference=False)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_random_is_bitwise_the_reference(backend, device, seed, score):
    """float32: the masks are computed operation by operation like the reference's (no fused
    multiply-add), so segment maps and segment lists are identical."""
    dense, sem, boxes, classes, scores, is_thing = _random_scene(seed, device=device)
    kw = dict(sigma=0.2, score=score, stuff_area_limit=5)
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend=backend, **kw)
    ref = reference.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, 0.2, score, 0.0, 0.5, 5)
    _assert_identical(out, ref)
    assert len(out.classes) > 2  # the scene is non-trivial


@pytest.mark.backends(OP)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("score", ["iou", "tri"])
def test_half_is_computed_in_float32(backend, device, dtype, score):
    """float16/bfloat16 inputs: scores, products and the sigma threshold in float32 (as the
    float32 reference on the same rounded inputs), so boxes of hundreds of pixels (areas above
    float16's 65504) still give masks."""
    dense, sem, boxes, classes, scores, is_thing = _random_scene(4, dtype=dtype, device=device, box_scale=12.0)
    kw = dict(sigma=0.2, score=score, stuff_area_limit=5)
    out = ops.panoptic_from_dense(dense, sem, boxes, classes, scores, is_thing, backend=backend, **kw)
    up = [t.float() for t in (dense, sem, boxes)]
    ref = reference.panoptic_from_dense(*up, classes, scores.float(), is_thing, 0.2, score, 0.0, 0.5, 5)
    _assert_identical(out, ref)
    assert (out.queries >= 0).sum() >= 3  # things were found


@pytest.mark.backends(OP)
def test_nan_semantic_probabilities_follow_torch_argmax(backend, device):
    """A NaN probability is the maximum of its pixel's argmax (torch.argmax: first NaN wins) and
    never passes the mask threshold; a NaN box never passes it either."""
    dense, sem, boxes, classes, scores, is_thing = _random_scene(5, device="cpu")
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
def test_coco_133_classes(backend, device):
    """COCO panoptic's 133 classes (80 things, 53 stuff), on a grid whose pixel count is not a
    multiple of 32 or 64."""
    g = torch.Generator().manual_seed(6)
    c, h, w, q = 133, 37, 45, 40
    dense, _, boxes, _, scores, _ = _random_scene(6, h=h, w=w, q=q)
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
    assert out[0].shape == (0, 5) and out[0].dtype == torch.int32 and all(len(t) == 0 for t in out[1:])
