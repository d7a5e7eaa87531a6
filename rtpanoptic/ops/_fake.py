"""Fake (meta) implementations of the C++/CUDA ops, for torch.compile and torch.export."""
from __future__ import annotations

import torch

from .. import _extension


def _nms_fake(boxes, scores, iou_threshold):
    ctx = torch.library.get_ctx()
    n = ctx.new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return _nms_fake(boxes, scores, iou_threshold)


def _box_iou_fake(boxes1, boxes2):
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


def _decode_boxes_fake(offsets, stride):
    return torch.empty_like(offsets)


def _gather_levelness_fake(offsets, levelness, out_stride):
    b, _, h, w = levelness.shape
    return levelness.new_empty((b, 4, h, w)), levelness.new_empty((b, h, w), dtype=torch.bool)


def _iou_attention_fake(dense_boxes, query_boxes, score):
    return dense_boxes.new_empty((query_boxes.shape[0], dense_boxes.shape[1], dense_boxes.shape[2]))


def _panoptic_from_dense_fake(
    dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing,
    sigma, score, score_threshold, overlap_threshold, stuff_area_limit,
):
    ctx = torch.library.get_ctx()
    s = ctx.new_dynamic_size()
    _, h, w = dense_boxes.shape
    return (
        dense_boxes.new_empty((h, w), dtype=torch.int32),
        dense_boxes.new_empty((s,), dtype=torch.int64),
        dense_boxes.new_empty((s,), dtype=torch.int64),
        dense_boxes.new_empty((s,), dtype=torch.float32),
        dense_boxes.new_empty((s,), dtype=torch.int64),
    )


def _mask_loss_fake(dense_boxes, query_boxes, gt_masks, beta, batch_index):
    return dense_boxes.new_empty(())


def _gather_levelness_backward_fake(grad_boxes, offsets, levelness, out_stride):
    return [torch.empty_like(o) for o in offsets]


def _iou_attention_backward_fake(grad, dense_boxes, query_boxes, score):
    return torch.empty_like(dense_boxes), torch.empty_like(query_boxes)


def _mask_loss_backward_fake(grad, dense_boxes, query_boxes, gt_masks, beta, batch_index):
    return torch.empty_like(dense_boxes), torch.empty_like(query_boxes)


FAKES = {
    "nms": _nms_fake,
    "batched_nms": _batched_nms_fake,
    "box_iou": _box_iou_fake,
    "decode_boxes": _decode_boxes_fake,
    "gather_levelness": _gather_levelness_fake,
    "iou_attention": _iou_attention_fake,
    "panoptic_from_dense": _panoptic_from_dense_fake,
    "mask_loss": _mask_loss_fake,
}
# Backward kernels of the C++/CUDA library only (other namespaces need not define them).
BACKWARD_FAKES = {
    "_gather_levelness_backward": _gather_levelness_backward_fake,
    "_iou_attention_backward": _iou_attention_backward_fake,
    "_mask_loss_backward": _mask_loss_backward_fake,
}


def register(namespace: str = "rtpanoptic") -> None:
    """Register the fakes for ``namespace::<op>`` (the C++ ops, or another library's copy)."""
    for name, fn in FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}", fn)


if _extension.load():
    register()
    for _name, _fn in BACKWARD_FAKES.items():
        torch.library.register_fake(f"rtpanoptic::{_name}", _fn)
