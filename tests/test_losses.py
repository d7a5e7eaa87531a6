import math

import pytest
import torch

from rtpanoptic.losses import (
    LOSS_NAMES,
    LossConfig,
    PanopticCriterion,
    bootstrapped_cross_entropy,
    centerness_loss,
    explicit_mask_loss,
    iou_loss,
    levelness_loss,
    select_queries,
    sigmoid_focal_loss,
)
from rtpanoptic.model.outputs import HeadOutputs
from rtpanoptic.targets import build_targets

STRIDES = (8, 16, 32, 64, 128)


def test_iou_loss_hand_values():
    pred = torch.tensor([[1.0, 1, 1, 1], [2, 2, 2, 2], [1, 0, 1, 2]])
    target = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 2, 1]])
    # I = 4, U = 4 | I = 4, U = 16 | I = (0 + 1) * (0 + 1) = 1, U = 4 + 4 - 1 = 7
    expected = [0.0, -math.log(5 / 17), -math.log(2 / 8)]
    assert iou_loss(pred, target).tolist() == pytest.approx(expected, abs=1e-6)


def test_centerness_and_focal_hand_values():
    assert centerness_loss(torch.tensor([0.0, 0.0]), torch.tensor([0.5, 1.0])).tolist() == pytest.approx(
        [math.log(2)] * 2
    )
    logits = torch.zeros((2, 2))
    labels = torch.tensor([0, -1])
    # p = 0.5 everywhere: CE = log 2, (1 - p_t)^2 = 1/4; positive weight 0.25, negative 0.75
    fl = sigmoid_focal_loss(logits, labels)
    assert fl.tolist() == pytest.approx([(0.25 + 0.75) * 0.25 * math.log(2), 2 * 0.75 * 0.25 * math.log(2)])
    # a confident correct prediction costs almost nothing; gamma = 0, alpha < 0 is plain BCE
    assert sigmoid_focal_loss(torch.tensor([[8.0, -8.0]]), torch.tensor([0])).item() < 1e-5
    bce = sigmoid_focal_loss(torch.tensor([[1.0]]), torch.tensor([0]), alpha=-1, gamma=0).item()
    assert bce == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_levelness_loss_ignores():
    logits = torch.zeros((1, 3, 1, 2))
    assert levelness_loss(logits, torch.tensor([[[0, -1]]])).item() == pytest.approx(math.log(3))
    logits[0, 1, 0, 0] = 2.0
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert levelness_loss(logits, torch.tensor([[[1, -1]]])).item() == pytest.approx(expected)
    all_ignored = levelness_loss(logits.requires_grad_(), torch.full((1, 1, 2), -1))
    assert all_ignored.item() == 0 and all_ignored.requires_grad


def test_bootstrapped_cross_entropy_keeps_worst_30_percent():
    # 2 classes; target-class logit a, other 0 -> CE = log(1 + exp(-a))
    a = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0, -2.0, 4.0, 5.0, 6.0, 7.0])
    logits = torch.stack([a, torch.zeros(10)])[None, :, None, :]  # [1, 2, 1, 10]
    target = torch.zeros((1, 1, 10), dtype=torch.int64)
    target[0, 0, 9] = 255  # ignored: 9 labelled pixels -> ceil(0.3 * 9) = 3 kept
    ce = [math.log(1 + math.exp(-v)) for v in a.tolist()[:9]]
    worst = sorted(ce, reverse=True)[:3]
    out = bootstrapped_cross_entropy(logits, target, 255, 0.3)
    assert out.item() == pytest.approx(sum(worst) / 3, rel=1e-6)
    assert bootstrapped_cross_entropy(logits, target, 255, 1.0).item() == pytest.approx(sum(ce) / 9, rel=1e-6)
    assert bootstrapped_cross_entropy(logits, torch.full_like(target, 255), 255).item() == 0


def _rect(y0, y1, x0, x1, size=128):
    m = torch.zeros((size, size), dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _batch(crowd=None):
    masks = torch.stack([_rect(8, 40, 8, 56), _rect(64, 128, 0, 128)])
    sem = torch.zeros((128, 128), dtype=torch.int64)
    sem[masks[0]] = 3
    sem[masks[1]] = 5
    return {
        "images": torch.zeros((1, 3, 128, 128), dtype=torch.uint8),
        "instance_masks": [masks],
        "boxes": [torch.tensor([[8.0, 8, 56, 40], [0, 64, 128, 128]])],
        "labels": [torch.tensor([0, 2])],
        "semantic": [sem],
        "crowd_mask": [crowd if crowd is not None else torch.zeros((128, 128), dtype=torch.bool)],
    }


def _outputs(seed=0, k=3, c=6, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    size = 128
    offs = [(torch.rand((1, 4, size // s, size // s), generator=g) * 2 * s + 1) for s in STRIDES]
    ctr = [torch.randn((1, 1, size // s, size // s), generator=g) for s in STRIDES]
    cls = [torch.randn((1, k, size // s, size // s), generator=g) - 2 for s in STRIDES]
    lvl = torch.randn((1, 6, 32, 32), generator=g)
    sem = torch.randn((1, c, 32, 32), generator=g)
    out = HeadOutputs(offs, ctr, cls, lvl, sem)
    if requires_grad:
        for t in offs + ctr + cls + [lvl, sem]:
            t.requires_grad_()
    return out


def test_select_queries_hand_values():
    out = _outputs(requires_grad=False)
    for c in out.class_logits:
        c.fill_(-10.0)
    # one confident candidate: level 0 (stride 8), cell (1, 2) at (20, 12), class 1
    out.class_logits[0][0, 1, 1, 2] = 5.0
    out.box_offsets[0][0, :, 1, 2] = torch.tensor([10.0, 4, 30, 20])
    boxes, scores, classes = select_queries(out, STRIDES, 0, 0.05, 1000, 0.6, 100)
    assert boxes.tolist() == [[10.0, 8.0, 50.0, 32.0]]
    p = 1 / (1 + math.exp(-5.0))
    assert scores.item() == pytest.approx(p * torch.sigmoid(out.centerness[0][0, 0, 1, 2]).item(), rel=1e-6)
    assert classes.tolist() == [1]
    # a duplicate of lower score is removed by NMS, a different class is not
    out.class_logits[0][0, 1, 1, 3] = 4.0
    out.box_offsets[0][0, :, 1, 3] = torch.tensor([18.0, 4, 22, 20])  # same box from (28, 12)
    out.class_logits[0][0, 0, 1, 3] = 3.0
    boxes, _, classes = select_queries(out, STRIDES, 0, 0.05, 1000, 0.6, 100)
    assert sorted(classes.tolist()) == [0, 1] and len(boxes) == 2


def test_explicit_mask_loss_hand_computed():
    """An 8 x 8 image, one level at stride 8 (a single cell, centre (4, 4)) predicting offsets
    (2, 2, 2, 2): the query box is (2, 2, 6, 6); the ground-truth box (2, 2, 6, 8) overlaps it by
    beta = 16 / 24 = 2/3.  The levelness grid (stride 4) is 2 x 2 with centres 2 and 6; the
    constant offsets give the dense boxes (0, 0, 4, 4), (4, 0, 8, 4), (0, 4, 4, 8), (4, 4, 8, 8),
    each with IoU 4 / 28 = 1/7 with the query.  The mask [2:6, 2:6] sampled at the centres keeps
    pixel (0, 0) only (N = 1): E_FN = 1 - 1/7, E_FP = 3/7, so
    L = 1 / Q * beta / N * (E_FP + E_FN) = 2/3 * 9/7 = 6/7."""
    offsets = [torch.full((1, 4, 1, 1), 2.0, requires_grad=True)]
    outputs = HeadOutputs(offsets, [torch.zeros(1, 1, 1, 1)], [torch.tensor([[[[5.0]], [[-5.0]]]])],
                          torch.tensor([-5.0, 5.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous(),
                          torch.zeros(1, 3, 2, 2))
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:6, 2:6] = True
    batch = {"boxes": [torch.tensor([[2.0, 2.0, 6.0, 8.0]])], "instance_masks": [mask]}
    loss, nq = explicit_mask_loss(outputs, batch, (8,), 4, LossConfig())
    assert nq == 1
    assert loss.item() == pytest.approx(6 / 7, rel=1e-6)
    # d L / d offsets: every dense box (x - l, y - t, x + r, y + b) and the query move with them
    loss.backward()
    assert offsets[0].grad is not None and offsets[0].grad.abs().sum() > 0


def test_explicit_mask_loss_without_queries_is_zero_and_attached():
    out = _outputs(seed=1)
    with torch.no_grad():
        for c in out.class_logits:
            c.fill_(-10.0)
    loss, nq = explicit_mask_loss(out, _batch(), STRIDES, 4, LossConfig())
    assert nq == 0 and loss.item() == 0 and loss.requires_grad


def test_criterion_parts_sum_weights_and_grads():
    batch = _batch(crowd=_rect(0, 8, 96, 128))
    out = _outputs()
    crit = PanopticCriterion(LossConfig(), STRIDES, 4, 4, 255)
    total, parts = crit(out, batch)
    assert set(LOSS_NAMES) <= set(parts)
    assert total.item() == pytest.approx(sum(parts[n].item() for n in LOSS_NAMES), rel=1e-6)
    t = build_targets(batch)
    assert parts["num_fg"] == sum(float((lab >= 0).sum()) for lab in t.labels)
    total.backward()
    for tensor in out.box_offsets + out.centerness + out.class_logits + [out.levelness, out.semantic]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    # weights scale the parts; lambda = 0.4 on semantics
    out = _outputs()
    _, parts2 = PanopticCriterion(LossConfig(semantic=0.4, box_cls=2.0), STRIDES, 4, 4, 255)(out, batch)
    assert parts2["semantic"].item() == pytest.approx(0.4 * parts["semantic"].item(), rel=1e-6)
    assert parts2["box_cls"].item() == pytest.approx(2 * parts["box_cls"].item(), rel=1e-6)
    # weak supervision: no mask loss
    _, parts3 = PanopticCriterion(LossConfig(weak=True), STRIDES, 4, 4, 255)(_outputs(), batch)
    assert parts3["mask"].item() == 0 and parts3["num_fg"] >= parts["num_fg"]


def test_perfect_boxes_give_zero_regression_loss():
    batch = _batch()
    t = build_targets(batch)
    out = _outputs(requires_grad=False)
    for i in range(5):
        fg = t.labels[i] >= 0
        out.box_offsets[i][:, :, fg[0]] = t.box_offsets[i][:, :, fg[0]]
    _, parts = PanopticCriterion(LossConfig(), STRIDES)(out, batch)
    assert parts["box_reg"].item() == pytest.approx(0.0, abs=1e-6)


def test_focal_normalised_by_foreground_and_crowd_ignored():
    batch = _batch()
    out = _outputs(requires_grad=False)
    crit = PanopticCriterion(LossConfig(), STRIDES)
    t = build_targets(batch)
    _, parts = crit(out, batch)
    logits = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, 3) for c in out.class_logits])
    labels = torch.cat([lab.reshape(-1) for lab in t.labels])
    expected = sigmoid_focal_loss(logits, labels).sum() / parts["num_fg"]
    assert parts["box_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    _, parts_loc = PanopticCriterion(LossConfig(box_cls_normalizer="locations"), STRIDES)(out, batch)
    n_loc = sum(lab.numel() for lab in t.labels)
    assert parts_loc["box_cls"].item() == pytest.approx(expected.item() * parts["num_fg"] / n_loc, rel=1e-5)
    with pytest.raises(ValueError, match="box_cls_normalizer"):
        LossConfig(box_cls_normalizer="batch")
    # a crowd region over background removes those locations from the classification loss
    batch_c = _batch(crowd=_rect(0, 8, 64, 128))
    _, parts_c = crit(out, batch_c)
    assert parts_c["box_cls"].item() < parts["box_cls"].item()
