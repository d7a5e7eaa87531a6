"""Triton kernels of ``rtpanoptic.ops``, installed as ``rtpanoptic.kernels``.

Importing this package registers every kernel as ``torch.ops.rtpanoptic_triton.<op>``
(same schema as ``torch.ops.rtpanoptic.<op>``), which ``rtpanoptic.ops`` selects with
``backend="triton"``.  One module per op; ``_box_score`` holds the shared IoU / TRI score
and its gradient; ``_common`` the launch helper and its options; ``_compile_check`` compiles
every kernel for a GPU without one.  The kernels run on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1``.
"""
from . import box_iou, decode_boxes, gather_levelness, iou_attention, mask_loss, nms, panoptic_from_dense

MODULES = (box_iou, decode_boxes, gather_levelness, iou_attention, mask_loss, nms, panoptic_from_dense)
