"""nms / batched_nms / box_iou: every (backend, device) pair against the reference, the
reference against torchvision, and hand-computed edge cases."""
import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference

CPU_NMS = ops.available_backends("cpu")["nms"]
CPU_BNMS = ops.available_backends("cpu")["batched_nms"]
CPU_IOU = ops.available_backends("cpu")["box_iou"]
HALF = [torch.float16, torch.bfloat16]


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    # overlap 1, union 4+4-1; touching corners; identical
    expected = torch.tensor([[1 / 7, 0.0, 1.0]])
    for backend in CPU_IOU:
        torch.testing.assert_close(ops.box_iou(a, b, backend=backend), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_torchvision(make_boxes, seed, dtype):
    a, b = make_boxes(37, seed=seed, dtype=dtype), make_boxes(23, seed=seed + 10, dtype=dtype)
    expected = torchvision.ops.box_iou(a, b)
    for backend in CPU_IOU:
        torch.testing.assert_close(ops.box_iou(a, b, backend=backend), expected)


@pytest.mark.backends("box_iou")
def test_box_iou_empty_inputs_reach_the_kernel(backend, device):
    impl = _dispatch.select("box_iou", backend, torch.device(device))
    a = torch.zeros(0, 4, device=device)
    b = torch.rand(3, 4, device=device)
    assert impl(a, b).shape == (0, 3) and impl(b, a).shape == (3, 0)
    assert ops.box_iou(a, b, backend=backend).shape == (0, 3)


def _hard_boxes(device, dtype=torch.float32):
    """Random boxes with coordinates up to 4000 (products round), plus identical, touching,
    nested and zero-area boxes and inexact binary fractions."""
    boxes = torch.cat([
        torch.rand(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3000,
        torch.rand(40, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 900,
    ], 1)
    boxes[:, 2:] += boxes[:, :2]
    boxes[1] = boxes[0]
    boxes[2] = torch.tensor([boxes[0, 2], boxes[0, 1], boxes[0, 2] + 10, boxes[0, 3]])
    boxes[3] = boxes[0] + torch.tensor([1 / 3, 1 / 7, -2 / 3, -5 / 7], dtype=torch.float64)
    boxes[4, 2:] = boxes[4, :2]
    return boxes.to(dtype).to(device)


@pytest.mark.backends("box_iou", reference=False)
def test_box_iou_float32_is_bitwise_the_reference(backend, device, assert_bitwise):
    a = _hard_boxes(device)
    assert_bitwise(ops.box_iou(a, a[::3], backend=backend), reference.box_iou(a, a[::3]), backend, device)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.backends("box_iou")
@pytest.mark.parametrize("dtype", HALF)
def test_box_iou_half_is_float32_rounded_once(backend, device, dtype, assert_bitwise):
    """float16/bfloat16 boxes of 300-4000 px: areas far above float16's 65504, so native half
    arithmetic would give inf / NaN; computed in float32 and rounded once, exactly."""
    a = _hard_boxes("cpu", torch.float64).clamp(max=4000).to(dtype).to(device)
    out = ops.box_iou(a, a[::3], backend=backend)
    assert out.dtype == dtype
    want = reference.box_iou(a.float(), a[::3].float()).to(dtype)
    assert torch.isfinite(want[5:, 5:]).all()
    assert_bitwise(out, want, backend, device)


@pytest.mark.parametrize("backend", CPU_NMS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n,threshold", [(1, 0.5), (50, 0.3), (400, 0.5), (400, 0.7)])
def test_nms_matches_torchvision(make_boxes, backend, seed, n, threshold):
    boxes = make_boxes(n, seed=seed)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed + 100))
    keep = ops.nms(boxes, scores, threshold, backend=backend)
    assert keep.dtype == torch.int64
    torch.testing.assert_close(keep, torchvision.ops.nms(boxes, scores, threshold), rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_NMS)
def test_nms_hand_computed(backend):
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]],
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) suppresses 0 (IoU 1) and 1 (IoU 9/11); 2 is disjoint.
    assert ops.nms(boxes, scores, 0.5, backend=backend).tolist() == [3, 2]
    # IoU(0,1) = 90/110 = 0.818...: at a threshold above it nothing overlapping that much.
    assert ops.nms(boxes, scores, 0.85, backend=backend).tolist() == [3, 1, 2]


@pytest.mark.parametrize("backend", CPU_NMS)
def test_nms_ties_keep_input_order(backend):
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 3 + [[50, 50, 60, 60.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert ops.nms(boxes, scores, 0.5, backend=backend).tolist() == [0, 3]


@pytest.mark.parametrize("backend", CPU_NMS)
def test_nms_iou_exactly_at_threshold_is_kept(backend):
    boxes = torch.tensor([[0, 0, 2, 1.0], [1, 0, 3, 1.0]])  # inter 1, union 3
    scores = torch.tensor([1.0, 0.5])
    iou = float(reference.box_iou(boxes, boxes)[0, 1])
    assert ops.nms(boxes, scores, iou, backend=backend).tolist() == [0, 1]  # not strictly greater
    assert ops.nms(boxes, scores, float(torch.nextafter(torch.tensor(iou), torch.tensor(0.0))), backend=backend).tolist() == [0]


@pytest.mark.parametrize("backend", CPU_NMS)
def test_nms_degenerate_and_nan(backend):
    boxes = torch.tensor(
        [[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [float("nan"), 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    # zero-area boxes have IoU 0/0 = NaN with each other: never suppress; the NaN box
    # neither suppresses nor is suppressed; box 4 is suppressed by box 2.
    keep = ops.nms(boxes, scores, 0.5, backend=backend)
    assert keep.tolist() == [0, 1, 2, 3]
    assert keep.tolist() == torchvision.ops.nms(boxes, scores, 0.5).tolist()


@pytest.mark.backends("nms")
def test_nms_empty_inputs_reach_the_kernel(backend, device):
    impl = _dispatch.select("nms", backend, torch.device(device))
    keep = impl(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    impl = _dispatch.select("batched_nms", backend, torch.device(device))
    keep = impl(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                torch.zeros(0, dtype=torch.int64, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


@pytest.mark.parametrize("backend", CPU_NMS)
def test_nms_half_upcasts(make_boxes, backend):
    boxes = make_boxes(200, seed=5).half()
    scores = torch.rand(200, generator=torch.Generator().manual_seed(5)).half()
    expected = reference.nms(boxes.float(), scores.float(), 0.5)
    assert ops.nms(boxes, scores, 0.5, backend=backend).tolist() == expected.tolist()


@pytest.mark.parametrize("backend", CPU_BNMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_nms_matches_torchvision(make_boxes, backend, seed):
    n = 300
    g = torch.Generator().manual_seed(seed)
    boxes = make_boxes(n, seed=seed)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, 5, (n,), generator=g)
    keep = ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend)
    torch.testing.assert_close(keep, torchvision.ops.batched_nms(boxes, scores, idxs, 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BNMS)
def test_batched_nms_classes_do_not_interact(backend):
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    idxs = torch.tensor([0, 1, 0])
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [0, 1]
    assert ops.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5, backend=backend).shape == (0,)


@pytest.mark.backends("batched_nms")
def test_batched_nms_categories_beyond_int32(backend, device):
    """Category ids are int64: 0 and 2**32 (equal after truncation to int32) stay different."""
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 4, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 2**32, -(2**32), 2**32 + 1], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [0, 1, 2, 3]
    idxs = torch.tensor([5, 2**40 + 5, 5, 2**40 + 5], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [0, 1]
