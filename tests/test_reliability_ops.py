"""``rtpanoptic.ops`` box ops take what torchvision's own tests give torchvision's (integer boxes
for ``box_iou``, ``batched_nms(empty, None, None, None)``) on every backend, and the reference NMS
says when an input is too large for it instead of failing in the allocator (issue 12)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import reference

CPU = ops.available_backends("cpu")


def _backends(op):
    return [pytest.param(b, id=b) for b in CPU[op]]


@pytest.mark.parametrize("backend", _backends("box_iou"))
@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
def test_box_iou_integer_boxes_like_torchvision(backend, dtype):
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 100, (7, 2), generator=g)
    a = torch.cat([xy, xy + torch.randint(0, 60, (7, 2), generator=g)], 1).to(dtype)
    xy = torch.randint(0, 100, (5, 2), generator=g)
    b = torch.cat([xy, xy + torch.randint(1, 60, (5, 2), generator=g)], 1).to(dtype)
    expect = torchvision.ops.box_iou(a, b)
    got = ops.box_iou(a, b, backend=backend)
    assert got.dtype == expect.dtype == torch.get_default_dtype()
    torch.testing.assert_close(got, expect, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", _backends("box_iou"))
def test_box_iou_uint8_boxes_do_not_wrap_around(backend):
    # torchvision subtracts uint8 corners before upcasting (negative widths wrap to 255 - w); here
    # uint8 boxes give the IoU of their values, as every other integer dtype
    a = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 70]], dtype=torch.uint8)
    b = torch.tensor([[5, 5, 15, 15], [0, 0, 10, 10]], dtype=torch.uint8)
    assert torch.equal(ops.box_iou(a, b, backend=backend), torchvision.ops.box_iou(a.long(), b.long()))


@pytest.mark.parametrize("backend", _backends("box_iou"))
def test_box_iou_integer_torchvision_case(backend):
    # torchvision's test_ops.TestBoxIou: integer boxes, float IoU
    boxes = torch.tensor([[0, 0, 100, 100], [0, 0, 50, 50], [200, 200, 300, 300]], dtype=torch.int16)
    expect = torch.tensor([[1.0, 0.25, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(ops.box_iou(boxes, boxes, backend=backend), expect)


def test_box_iou_empty_integer_boxes_are_float():
    out = ops.box_iou(torch.zeros(0, 4, dtype=torch.int64), torch.zeros(3, 4, dtype=torch.int64))
    assert out.shape == (0, 3) and out.dtype == torch.get_default_dtype()


def test_box_iou_still_refuses_bool_boxes():
    with pytest.raises(TypeError, match="box_iou: boxes1 must be a floating-point or integer tensor, got torch.bool"):
        ops.box_iou(torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("backend", [None, *_backends("batched_nms")])
def test_batched_nms_empty_with_nones_like_torchvision(backend):
    empty = torch.empty((0,), dtype=torch.int64)
    expect = torchvision.ops.batched_nms(empty, None, None, None)
    got = ops.batched_nms(empty, None, None, None, backend=backend)
    assert got.dtype == expect.dtype == torch.int64 and got.shape == expect.shape == (0,)
    got = ops.batched_nms(torch.empty((0, 4)), None, None, None, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (0,)


def test_batched_nms_non_empty_still_validates():
    with pytest.raises(TypeError, match="batched_nms: scores must be a torch.Tensor, got NoneType"):
        ops.batched_nms(torch.zeros(2, 4), None, None, 0.5)


@pytest.mark.parametrize("op", ["nms", "batched_nms"])
def test_reference_nms_says_which_backend_takes_300k_boxes(op):
    n = 300_000
    boxes = torch.zeros(n, 4)
    scores = torch.zeros(n)
    args = (boxes, scores, torch.zeros(n, dtype=torch.int64), 0.5) if op == "batched_nms" else (boxes, scores, 0.5)
    with pytest.raises(ValueError, match=rf"{op}: 300000 boxes are too many for the reference backend.*backend='cpp'"):
        getattr(ops, op)(*args, backend="reference")
    with pytest.raises(ValueError, match=rf"{op}: 300000 boxes"):
        getattr(reference, op)(*args)
