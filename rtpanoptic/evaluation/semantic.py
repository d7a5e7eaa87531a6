"""Semantic segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy."""
from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_label: int = 255) -> torch.Tensor:
    """int64 ``[C, C]``, rows = ground truth, columns = prediction; ``ignore_label`` targets are skipped.

    Predictions outside ``0..C-1`` on non-ignored pixels raise.
    """
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if num_classes <= 0:
        raise ValueError(f"confusion_matrix: num_classes must be positive, got {num_classes}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_label
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"confusion_matrix: target labels outside [0, {num_classes}) and not ignore_label")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"confusion_matrix: predicted labels outside [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor) -> dict:
    """``{"miou", "iou" (per class, NaN where a class is absent from both), "pixel_accuracy"}``."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    total = conf.sum()
    return {
        "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
        "iou": iou.tolist(),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
    }


class SemanticEvaluator:
    """Accumulates a confusion matrix over images; ``compute()`` gives mIoU (classes present in gt or pred)."""

    def __init__(self, num_classes: int, ignore_label: int = 255, class_names: list | None = None):
        self.num_classes, self.ignore_label, self.class_names = int(num_classes), int(ignore_label), class_names
        self.conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.conf.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.conf += confusion_matrix(torch.as_tensor(pred).cpu(), torch.as_tensor(target).cpu(), self.num_classes, self.ignore_label)

    def compute(self) -> dict:
        out = iou_from_confusion(self.conf)
        if self.class_names is not None:
            out["per_class"] = dict(zip(self.class_names, out["iou"]))
        return out


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_label: int = 255) -> float:
    """Mean IoU of one prediction / target pair (or a batch of them)."""
    return iou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_label))["miou"]
