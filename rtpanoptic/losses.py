"""The training losses of paper eq. 19.

``L_total = L_box_reg + L_center + L_levelness + L_box_cls + lambda * L_semantics + L_mask``

- :func:`iou_loss` (eq. 11), :func:`centerness_loss` (eq. 12) and :func:`sigmoid_focal_loss`
  (box classes) are sums normalised by the number of foreground locations N_fg;
- :func:`levelness_loss` (eq. 13) is a cross-entropy averaged over non-ignored locations;
- :func:`bootstrapped_cross_entropy` (eq. 15) averages the worst ``ratio`` (30 %) of pixels;
- :func:`explicit_mask_loss` (eqs. 16-18) runs NMS on the current predictions for query boxes,
  matches them to ground-truth instances (beta = IoU) and calls :func:`rtpanoptic.ops.mask_loss`
  on the dense boxes of :func:`rtpanoptic.ops.gather_levelness`.

:class:`PanopticCriterion` puts them together and returns the total and its parts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .candidates import select_candidates
from .model.outputs import HeadOutputs
from .targets import FCOS_SIZE_RANGES, IGNORE, TargetConfig, Targets, build_targets, sample_masks

LOSS_NAMES = ("box_reg", "centerness", "box_cls", "levelness", "semantic", "mask")


@dataclass
class LossConfig:
    # eq. 19 weights (the paper uses 1 for all but lambda = semantic)
    box_reg: float = 1.0
    centerness: float = 1.0
    box_cls: float = 1.0
    levelness: float = 1.0
    semantic: float = 1.0  # lambda: 1 Cityscapes, 0.4 COCO
    mask: float = 1.0  # 0 switches the explicit mask loss off
    # box classification
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # "foreground": divide the summed focal loss by N_fg (FCOS, RetinaNet); "locations": by the
    # number of (non-ignored) locations over all levels, a literal reading of §4.2
    box_cls_normalizer: str = "foreground"
    # semantic bootstrapping (eq. 15): fraction of the worst pixels kept
    bootstrap_ratio: float = 0.3
    # target assignment (eq. 9) and weak supervision (§5.6)
    size_ranges: tuple[tuple[float, float], ...] = FCOS_SIZE_RANGES
    weak: bool = False
    # explicit mask loss: queries from NMS on the current predictions
    mask_pre_nms_thresh: float = 0.05
    mask_pre_nms_top_n: int = 1000
    mask_nms_thresh: float = 0.6
    mask_post_nms_top_n: int = 100
    mask_min_iou: float = 0.5  # a query is matched to the GT box it overlaps most, if at least this
    mask_detach_queries: bool = False
    # rtpanoptic.ops backend of gather_levelness / mask_loss in the mask loss; every backend
    # has autograd formulas (reference, cpp, cuda, triton), None picks the fastest for the device
    backend: str | None = None

    def __post_init__(self):
        if self.box_cls_normalizer not in ("foreground", "locations"):
            raise ValueError(
                f"LossConfig: box_cls_normalizer must be 'foreground' or 'locations', got {self.box_cls_normalizer!r}"
            )
        if not 0 < self.bootstrap_ratio <= 1:
            raise ValueError(f"LossConfig: bootstrap_ratio must lie in (0, 1], got {self.bootstrap_ratio}")
        for name in LOSS_NAMES:
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig: weight {name} must be >= 0, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- single losses
def iou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-location IoU loss (eq. 11, UnitBox) between boxes given as (l, t, r, b) offsets from the
    same point, ``[N, 4]`` each: ``-log((I + 1) / (U + 1))`` (FCOS' +1 smoothing keeps it finite).
    Returns ``[N]``."""
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)) * (torch.minimum(pt, tt) + torch.minimum(pb, tb))
    union = pred_area + target_area - inter
    return -torch.log((inter + 1.0) / (union + 1.0))


def centerness_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-location binary cross-entropy of centerness logits against eq. 10 targets (eq. 12)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss summed over classes: ``logits [N, K]``, ``labels [N]`` (-1 = background,
    i.e. every class negative).  ``FL = -alpha_t (1 - p_t)^gamma log p_t``.  Returns ``[N]``."""
    k = logits.shape[-1]
    onehot = (labels[:, None] == torch.arange(k, device=labels.device)[None]).to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = p * onehot + (1 - p) * (1 - onehot)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * onehot + (1 - alpha) * (1 - onehot))
    return loss.sum(dim=-1)


def levelness_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of levelness logits ``[B, L+1, H, W]`` against ``target [B, H, W]``
    (0 background, 1 + level, -1 ignored), averaged over non-ignored locations (eq. 13)."""
    valid = target != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def bootstrapped_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, ratio: float = 0.3) -> Tensor:
    """Semantic cross-entropy (eq. 15) averaged over the worst ``ceil(ratio * n)`` of the n labelled
    pixels of the batch (bootstrapping as in [34, 27]); ``ratio = 1`` is the plain mean."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    n = int(valid.sum())
    if n == 0:
        return logits.sum() * 0
    k = max(1, math.ceil(ratio * n))
    losses = per_pixel[valid]
    if k < n:
        losses = losses.topk(k, sorted=False).values
    return losses.mean()


# ---------------------------------------------------------------------------- mask loss
def select_queries(
    outputs: HeadOutputs,
    strides: Sequence[int],
    image: int,
    pre_nms_thresh: float,
    pre_nms_top_n: int,
    nms_thresh: float,
    post_nms_top_n: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Query boxes of one image from the current predictions: the candidates of eq. 4
    (:func:`~rtpanoptic.candidates.select_candidates`; every location counts, the padding too: the
    targets train it as background), class-aware NMS, the best ``post_nms_top_n`` kept.
    Returns ``(boxes [Q, 4] differentiable, scores [Q], classes [Q])``."""
    one = slice(image, image + 1)
    boxes = [ops.decode_boxes(o[one].float(), stride) for o, stride in zip(outputs.box_offsets, strides)]
    # scores from detached logits; the boxes stay attached to the offsets
    boxes, scores, classes = select_candidates(
        boxes, [c[one].detach() for c in outputs.class_logits], [c[one].detach() for c in outputs.centerness],
        strides, pre_nms_thresh, pre_nms_top_n,
    )[0]
    keep = ops.batched_nms(boxes.detach(), scores, classes, nms_thresh)[:post_nms_top_n]
    return boxes[keep], scores[keep], classes[keep]


def explicit_mask_loss(
    outputs: HeadOutputs, batch: dict, strides: Sequence[int], levelness_stride: int, cfg: LossConfig
) -> tuple[Tensor, int]:
    """Eqs. 16-18 on a batch.  Returns ``(loss, number of matched queries)``."""
    offsets = [o.float() for o in outputs.box_offsets]
    dense, _ = ops.gather_levelness(offsets, outputs.levelness.float(), levelness_stride, backend=cfg.backend)
    q_boxes, q_beta, q_masks, q_image = [], [], [], []
    for b in range(dense.shape[0]):
        gt_boxes = batch["boxes"][b].to(device=dense.device, dtype=torch.float32)
        if gt_boxes.shape[0] == 0:
            continue
        boxes, _, _ = select_queries(
            outputs, strides, b, cfg.mask_pre_nms_thresh, cfg.mask_pre_nms_top_n,
            cfg.mask_nms_thresh, cfg.mask_post_nms_top_n,
        )
        if boxes.shape[0] == 0:
            continue
        with torch.no_grad():
            iou = ops.box_iou(boxes.detach(), gt_boxes).nan_to_num(0.0)  # [Q, N]
            beta, match = iou.amax(dim=1), iou.argmax(dim=1)
            ok = beta >= cfg.mask_min_iou
        if not bool(ok.any()):
            continue
        masks = sample_masks(batch["instance_masks"][b].to(dense.device), levelness_stride)
        q_boxes.append(boxes[ok])
        q_beta.append(beta[ok])
        q_masks.append(masks[match[ok]])
        q_image.append(torch.full((int(ok.sum()),), b, dtype=torch.int64, device=dense.device))
    if not q_boxes:
        return dense.sum() * 0, 0
    boxes = torch.cat(q_boxes)
    if cfg.mask_detach_queries:
        boxes = boxes.detach()
    loss = ops.mask_loss(dense, boxes, torch.cat(q_masks), torch.cat(q_beta), torch.cat(q_image), backend=cfg.backend)
    return loss, boxes.shape[0]


# ----------------------------------------------------------------------------- criterion
class PanopticCriterion:
    """Targets + every loss of eq. 19.

    Args:
        cfg: :class:`LossConfig`.
        strides, levelness_stride, semantic_stride: of the network (``model.strides`` ...).
        ignore_label: the dataset's semantic ignore label.
        reduce_mean: optional ``float -> float`` averaging a number over DDP ranks (the foreground
            count N_fg is averaged so every rank normalises alike, as FCOS does).

    ``criterion(outputs, batch)`` -> ``(total, parts)``: ``parts`` maps each name of
    :data:`LOSS_NAMES` to its weighted scalar (tensors attached to the graph) plus
    ``num_fg`` and ``num_queries`` (floats) for logging.
    """

    def __init__(
        self,
        cfg: LossConfig,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        levelness_stride: int = 4,
        semantic_stride: int = 4,
        ignore_label: int = 255,
        reduce_mean: Callable[[float], float] | None = None,
    ):
        self.cfg = cfg
        self.strides = tuple(int(s) for s in strides)
        self.levelness_stride = int(levelness_stride)
        self.target_cfg = TargetConfig(
            strides=self.strides,
            size_ranges=tuple(tuple(float(v) for v in r) for r in cfg.size_ranges),
            levelness_stride=self.levelness_stride,
            semantic_stride=int(semantic_stride),
            ignore_label=int(ignore_label),
            weak=cfg.weak,
        )
        self.ignore_label = int(ignore_label)
        self.reduce_mean = reduce_mean

    def targets(self, batch: dict) -> Targets:
        return build_targets(batch, self.target_cfg)

    def __call__(self, outputs: HeadOutputs, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        t = self.targets(batch)
        n_levels = len(self.strides)
        if len(outputs.box_offsets) != n_levels:
            raise ValueError(f"PanopticCriterion: {len(outputs.box_offsets)} levels of outputs, {n_levels} strides")

        def flat(x: Tensor) -> Tensor:  # [B, C, h, w] -> [B*h*w, C]
            return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])

        pred_off = torch.cat([flat(o.float()) for o in outputs.box_offsets])
        pred_ctr = torch.cat([flat(c.float()) for c in outputs.centerness])[:, 0]
        pred_cls = torch.cat([flat(c.float()) for c in outputs.class_logits])
        tgt_off = torch.cat([flat(o) for o in t.box_offsets])
        tgt_lab = torch.cat([lab.reshape(-1) for lab in t.labels])
        tgt_ctr = torch.cat([c.reshape(-1) for c in t.centerness])
        valid = torch.cat([v.reshape(-1) for v in t.valid])
        fg = tgt_lab >= 0

        num_fg = float(fg.sum())
        if self.reduce_mean is not None:
            num_fg = self.reduce_mean(num_fg)
        norm = max(num_fg, 1.0)

        cls_norm = norm
        if cfg.box_cls_normalizer == "locations":
            cls_norm = float(valid.sum())
            if self.reduce_mean is not None:
                cls_norm = self.reduce_mean(cls_norm)
            cls_norm = max(cls_norm, 1.0)
        box_cls = sigmoid_focal_loss(pred_cls[valid], tgt_lab[valid], cfg.focal_alpha, cfg.focal_gamma).sum() / cls_norm
        if bool(fg.any()):
            box_reg = iou_loss(pred_off[fg], tgt_off[fg]).sum() / norm
            center = centerness_loss(pred_ctr[fg], tgt_ctr[fg]).sum() / norm
        else:
            box_reg = pred_off.sum() * 0
            center = pred_ctr.sum() * 0
        level = levelness_loss(outputs.levelness.float(), t.levelness)
        semantic = bootstrapped_cross_entropy(outputs.semantic.float(), t.semantic, self.ignore_label, cfg.bootstrap_ratio)
        if cfg.mask > 0 and not cfg.weak:
            mask, num_q = explicit_mask_loss(outputs, batch, self.strides, self.levelness_stride, cfg)
        else:
            mask, num_q = outputs.levelness.sum() * 0, 0

        parts = {
            "box_reg": cfg.box_reg * box_reg,
            "centerness": cfg.centerness * center,
            "box_cls": cfg.box_cls * box_cls,
            "levelness": cfg.levelness * level,
            "semantic": cfg.semantic * semantic,
            "mask": cfg.mask * mask,
        }
        total = sum(parts.values())
        parts["num_fg"] = num_fg
        parts["num_queries"] = float(num_q)
        return total, parts
