"""mIoU from the confusion matrix, hand-computed."""
from __future__ import annotations

import math

import pytest
import torch

from rtpanoptic.evaluation import SemanticEvaluator, confusion_matrix, miou


def test_confusion_and_miou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    conf = confusion_matrix(pred, target, num_classes=4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    ev = SemanticEvaluator(4, class_names=["a", "b", "c", "d"])
    ev.update(pred, target)
    r = ev.compute()
    # IoU a = 1 / (2 + 2 - 1) = 1/3, b = 2 / 3, c = 1 / 2, d absent (NaN, not averaged)
    assert r["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2]) and math.isnan(r["iou"][3])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)
    assert miou(target.clamp(max=2), target.clamp(max=2), 3) == 1.0
    ev.update(pred, target)
    assert ev.compute()["miou"] == pytest.approx(r["miou"])


def test_bad_labels():
    with pytest.raises(ValueError, match="predicted labels"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="target labels"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2), torch.zeros(3), 3)
