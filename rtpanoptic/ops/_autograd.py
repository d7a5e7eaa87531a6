"""Autograd formulas of the C++/CUDA ops ``rtpanoptic::<op>`` (cpp and cuda backends).

The backward passes are kernels themselves (``rtpanoptic::_<op>_backward``, schemas in
csrc/ops.cpp) except ``decode_boxes``, whose backward is a sign flip.  They reproduce the
reference's autograd, including its conventions at kinks (clamp passes no gradient at 0,
min/max split it between equal arguments) and the zero gradient where the IoU's union is 0.

Non-differentiable inputs get ``None``: ``levelness`` (it only enters through an argmax),
``gt_masks``, ``beta`` (a constant weight, as in the reference) and ``batch_index``.
``nms`` and ``batched_nms`` return indices (no gradient).  ``box_iou`` and ``panoptic_from_dense``
have no formula in the kernels: their autograd raises a clear error on backward instead of
silently returning a missing gradient (``rtpanoptic.ops.box_iou`` with ``backend=None`` uses the
reference when an input requires grad, so it stays differentiable).
"""
from __future__ import annotations

import torch

from .. import _extension

_SIGN = (-1.0, -1.0, 1.0, 1.0)


# ------------------------------------------------------------------ decode_boxes
def _decode_setup(ctx, inputs, output):
    pass


def _decode_backward(ctx, grad):
    sign = grad.new_tensor(_SIGN).view(1, 4, 1, 1)
    return grad * sign, None


# -------------------------------------------------------------- gather_levelness
def _gather_setup(ctx, inputs, output):
    offsets, levelness, out_stride = inputs
    ctx.save_for_backward(levelness, *offsets)
    ctx.out_stride = out_stride


def _gather_backward(ctx, grad_boxes, grad_fg):
    levelness, *offsets = ctx.saved_tensors
    if grad_boxes is None:
        grad_boxes = torch.zeros((levelness.shape[0], 4, *levelness.shape[2:]), dtype=levelness.dtype,
                                 device=levelness.device)
    grads = torch.ops.rtpanoptic._gather_levelness_backward(grad_boxes.contiguous(), offsets, levelness,
                                                            ctx.out_stride)
    return list(grads), None, None


# ----------------------------------------------------------------- iou_attention
def _attention_setup(ctx, inputs, output):
    dense_boxes, query_boxes, score = inputs
    ctx.save_for_backward(dense_boxes, query_boxes)
    ctx.score = score


def _attention_backward(ctx, grad):
    dense_boxes, query_boxes = ctx.saved_tensors
    gd, gq = torch.ops.rtpanoptic._iou_attention_backward(grad.contiguous(), dense_boxes, query_boxes, ctx.score)
    return gd, gq, None


# --------------------------------------------------------------------- mask_loss
def _mask_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mask_loss_backward(ctx, grad):
    dense_boxes, query_boxes, gt_masks, beta, batch_index = ctx.saved_tensors
    gd, gq = torch.ops.rtpanoptic._mask_loss_backward(grad, dense_boxes, query_boxes, gt_masks, beta, batch_index)
    return gd, gq, None, None, None


# ------------------------------------------------------------ not differentiable
def _no_setup(ctx, inputs, output):
    pass


def _not_differentiable(name):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"rtpanoptic::{name}: the cpp/cuda kernels have no backward; call rtpanoptic.ops.{name} with "
            f"backend='reference' to differentiate it"
        )

    return backward


FORMULAS = {
    "box_iou": (_not_differentiable("box_iou"), _no_setup),
    "panoptic_from_dense": (_not_differentiable("panoptic_from_dense"), _no_setup),
    "decode_boxes": (_decode_backward, _decode_setup),
    "gather_levelness": (_gather_backward, _gather_setup),
    "iou_attention": (_attention_backward, _attention_setup),
    "mask_loss": (_mask_loss_backward, _mask_loss_setup),
}


def register(namespace: str = "rtpanoptic") -> None:
    for name, (backward, setup) in FORMULAS.items():
        torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)


if _extension.load():
    register()
