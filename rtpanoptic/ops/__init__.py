"""``rtpanoptic.ops``: the performance-critical core as drop-in ops.

Every op takes ``backend=`` (``"reference"``, ``"cpp"``, ``"cuda"``, ``"triton"`` or
None for the fastest available on the tensors' device) and validates its inputs.
Boxes are xyxy in absolute pixels with no +1 on areas.  See
:mod:`rtpanoptic.ops.reference` for the specification of each op and
:mod:`rtpanoptic.ops.registry` for the table every op is registered from.
"""
from .. import _extension
from . import registry
from ._dispatch import BACKENDS, OPS, available_backends
from .attention import iou_attention
from .boxes import batched_nms, box_iou, nms
from .dense import decode_boxes, gather_levelness
from .mask_loss import mask_loss
from .panoptic import PaddedPanopticSegments, PanopticSegments, panoptic_from_dense
from .panoptic_release import panoptic_from_dense_release
from .select import select_queries
from .upsample import semantic_probs, upsample_argmax

if _extension.load():
    registry.register(registry.CPP_NAMESPACE)  # fakes and autograd of the C++/CUDA ops

__all__ = [
    "BACKENDS",
    "OPS",
    "PaddedPanopticSegments",
    "PanopticSegments",
    "available_backends",
    "batched_nms",
    "box_iou",
    "decode_boxes",
    "gather_levelness",
    "iou_attention",
    "mask_loss",
    "nms",
    "panoptic_from_dense",
    "panoptic_from_dense_release",
    "select_queries",
    "semantic_probs",
    "upsample_argmax",
]
