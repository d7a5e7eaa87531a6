"""Evaluation: panoptic quality, semantic mIoU, instance mask AP."""
from .instance_ap import InstanceAPEvaluator, has_pycocotools
from .panoptic_quality import PanopticQualityEvaluator, PQError, PQStat, pq_compute, pq_image, sample_to_panoptic
from .semantic import SemanticEvaluator, confusion_matrix, iou_from_confusion, miou

__all__ = [
    "InstanceAPEvaluator",
    "PQError",
    "PQStat",
    "PanopticQualityEvaluator",
    "SemanticEvaluator",
    "confusion_matrix",
    "has_pycocotools",
    "iou_from_confusion",
    "miou",
    "pq_compute",
    "pq_image",
    "sample_to_panoptic",
]
