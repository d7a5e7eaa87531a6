"""Mask AP through pycocotools' COCOeval."""
from __future__ import annotations

import pytest
import torch

from rtpanoptic.evaluation import InstanceAPEvaluator

pytest.importorskip("pycocotools")


def _masks():
    m = torch.zeros(2, 64, 64, dtype=torch.bool)
    m[0, 4:30, 4:30] = True
    m[1, 35:60, 30:62] = True
    return m


def test_perfect_and_wrong_class():
    gt = _masks()
    ev = InstanceAPEvaluator(2, class_names=["x", "y"])
    ev.update(gt, torch.tensor([0, 1]), gt, torch.tensor([0, 1]), torch.tensor([0.9, 0.8]))
    r = ev.compute()
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0)
    assert r["per_class"] == {"x": pytest.approx(1.0), "y": pytest.approx(1.0)}
    ev.reset()
    ev.update(gt, torch.tensor([0, 1]), gt, torch.tensor([1, 0]), torch.tensor([0.9, 0.8]))
    assert ev.compute()["AP"] == pytest.approx(0.0)


def test_half_overlap_counts_at_ap50_only():
    gt = _masks()[:1]
    pred = torch.zeros(1, 64, 64, dtype=torch.bool)
    pred[0, 4:30, 4:21] = True  # IoU = 17 / 26 ~ 0.65: TP for thresholds 0.50 .. 0.65
    ev = InstanceAPEvaluator(1)
    ev.update(gt, torch.tensor([0]), pred, torch.tensor([0]), torch.tensor([1.0]))
    r = ev.compute()
    assert r["AP50"] == pytest.approx(1.0) and r["AP75"] == pytest.approx(0.0)
    assert r["AP"] == pytest.approx(0.4, abs=1e-6)  # 4 of 10 thresholds (0.50, 0.55, 0.60, 0.65)


def test_crowd_detection_ignored():
    gt = _masks()
    ev = InstanceAPEvaluator(1)
    ev.update(gt[:1], torch.tensor([0]), gt, torch.tensor([0, 0]), torch.tensor([0.9, 0.95]),
              crowd_masks=gt[1:], crowd_labels=torch.tensor([0]))
    assert ev.compute()["AP"] == pytest.approx(1.0)  # the detection on the crowd region is no FP


def test_bad_labels():
    ev = InstanceAPEvaluator(1)
    with pytest.raises(ValueError, match="labels must lie"):
        ev.update(_masks(), torch.tensor([0, 3]), _masks(), torch.tensor([0, 0]), torch.ones(2))
