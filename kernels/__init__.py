"""Triton kernels of ``rtpanoptic.ops``, installed as ``rtpanoptic.kernels``.

:data:`IMPLEMENTATIONS` maps each op (and backward op) of the table in
:mod:`rtpanoptic.ops.registry` to its function here; ``rtpanoptic.ops`` registers them as
``torch.ops.rtpanoptic_triton.<op>`` (``registry.load_triton()``, on first use) and selects them
with ``backend="triton"``.  One module per op; ``_box_score`` holds the shared IoU / TRI score
and its gradient; ``_grid`` the cell centres; ``_common`` the launch helper and its options;
``_compile_check`` compiles every kernel for a GPU without one.  The kernels run on CUDA
tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.  They depend only on
``rtpanoptic.ops.reference`` and ``rtpanoptic.ops.registry``.
"""
from . import (
    box_iou,
    decode_boxes,
    gather_levelness,
    iou_attention,
    mask_loss,
    nms,
    panoptic_from_dense,
    panoptic_from_dense_release,
    select_queries,
    upsample_argmax,
)

MODULES = (box_iou, decode_boxes, gather_levelness, iou_attention, mask_loss, nms, panoptic_from_dense,
           panoptic_from_dense_release, select_queries, upsample_argmax)
IMPLEMENTATIONS = {
    "nms": nms.nms,
    "batched_nms": nms.batched_nms,
    "box_iou": box_iou.box_iou,
    "decode_boxes": decode_boxes.decode_boxes,
    "gather_levelness": gather_levelness.gather_levelness,
    "_gather_levelness_backward": gather_levelness._gather_levelness_backward,
    "iou_attention": iou_attention.iou_attention,
    "_iou_attention_backward": iou_attention._iou_attention_backward,
    "panoptic_from_dense": panoptic_from_dense.panoptic_from_dense,
    "panoptic_from_dense_release": panoptic_from_dense_release.panoptic_from_dense_release,
    "mask_loss": mask_loss.mask_loss,
    "_mask_loss_backward": mask_loss._mask_loss_backward,
    "select_queries": select_queries.select_queries,
    "upsample_argmax": upsample_argmax.upsample_argmax,
}
