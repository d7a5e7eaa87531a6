"""Training targets (paper §4.1, eqs. 8-10 and 13; weak supervision §5.6 / appendix C).

Every location of every FPN level sits at the image point ``floor(s/2) + i*s`` (stride s, as
:func:`rtpanoptic.ops.grid.cell_centres`).  A location is foreground when that point lies inside
a ground-truth instance mask (weakly supervised: inside a ground-truth box, overlaps going to the
smallest box).  A foreground location gets

- the offsets ``(l, t, r, b) = (x - x1, y - y1, x2 - x, y2 - y)`` to its instance's box (eq. 8),
  kept on level i only if ``m_{i-1} <= max(l, t, r, b) <= m_i`` (eq. 9, FCOS ranges by default);
- the centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` (eq. 10);
- the instance's thing class.

The levelness target (eq. 13) lives on the levelness grid: 0 for background, else ``1 + i`` with i
the first level whose range holds ``max(l, t, r, b)`` at that grid point.  The semantic target is
the label map sampled at the semantic grid's cell centres (nearest / strided).

Crowd regions (``crowd_mask``) are ignored: a background location inside one gets no
classification or levelness loss.  Everything is vectorised over locations and instances; the
only Python loops run over images and levels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .ops.grid import cell_centres

FCOS_SIZE_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, math.inf),
)
# Target value of ignored locations (levelness, semantic uses the dataset's ignore label).
IGNORE = -1


@dataclass(frozen=True)
class TargetConfig:
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    size_ranges: tuple[tuple[float, float], ...] = FCOS_SIZE_RANGES  # (m_{i-1}, m_i) per level
    levelness_stride: int = 4
    semantic_stride: int = 4
    ignore_label: int = 255  # semantic ignore label of the dataset
    weak: bool = False  # weak supervision (§5.6): foreground = inside a GT box, smallest box wins

    def __post_init__(self):
        if len(self.strides) != len(self.size_ranges):
            raise ValueError(
                f"TargetConfig: {len(self.strides)} strides but {len(self.size_ranges)} size_ranges"
            )
        for i, (lo, hi) in enumerate(self.size_ranges):
            if not lo <= hi:
                raise ValueError(f"TargetConfig: size_ranges[{i}] = ({lo}, {hi}) must have lo <= hi")
        for name in ("levelness_stride", "semantic_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"TargetConfig: {name} must be >= 1, got {getattr(self, name)}")


class Targets(NamedTuple):
    """Targets of a batch; per level i maps ``[B, h_i, w_i]``.

    box_offsets[i]  ``[B, 4, h_i, w_i]`` (l, t, r, b) in pixels, 0 off the foreground
    labels[i]       int64 ``[B, h_i, w_i]`` thing index 0..K-1, -1 background
    centerness[i]   ``[B, h_i, w_i]`` eq. 10, 0 off the foreground
    valid[i]        bool ``[B, h_i, w_i]``: False for background inside a crowd region
    instance[i]     int64 ``[B, h_i, w_i]`` index of the assigned GT instance in its image, -1 none
    levelness       int64 ``[B, H_l, W_l]``: 0 background, 1 + level, -1 ignored (crowd)
    semantic        int64 ``[B, H_s, W_s]`` train ids, ``ignore_label`` where void / padding
    """

    box_offsets: list[Tensor]
    labels: list[Tensor]
    centerness: list[Tensor]
    valid: list[Tensor]
    instance: list[Tensor]
    levelness: Tensor
    semantic: Tensor

    @property
    def foreground(self) -> list[Tensor]:
        return [lab >= 0 for lab in self.labels]


def centerness_target(offsets: Tensor) -> Tensor:
    """Eq. 10 for ``[..., 4]`` (l, t, r, b) offsets with ``max(l, r) > 0`` and ``max(t, b) > 0``."""
    l, t, r, b = offsets.unbind(-1)
    lr = torch.minimum(l, r) / torch.maximum(l, r).clamp(min=1e-12)
    tb = torch.minimum(t, b) / torch.maximum(t, b).clamp(min=1e-12)
    return torch.sqrt((lr * tb).clamp(min=0))


def assign_points(
    xs: Tensor, ys: Tensor, masks: Tensor, boxes: Tensor, weak: bool
) -> tuple[Tensor, Tensor]:
    """Assign the image points ``(xs[P], ys[P])`` (integer pixels) to instances.

    Full supervision: a point belongs to the instance whose mask holds it (``masks [N, H, W]``);
    weak: to the smallest-area box ``boxes [N, 4]`` (xyxy, x2 exclusive) holding it.  If masks
    overlap (they should not) the smallest box also wins.  Returns ``(instance [P] int64,
    -1 for none; offsets [P, 4] float (l, t, r, b) to the assigned box, 0 for none)``.
    """
    p = xs.numel()
    n = boxes.shape[0]
    if n == 0 or p == 0:
        return torch.full((p,), -1, dtype=torch.int64, device=xs.device), boxes.new_zeros((p, 4))
    fx, fy = xs.to(boxes.dtype), ys.to(boxes.dtype)
    if weak:
        inside = (
            (fx[None] >= boxes[:, 0:1]) & (fx[None] < boxes[:, 2:3])
            & (fy[None] >= boxes[:, 1:2]) & (fy[None] < boxes[:, 3:4])
        )  # [N, P]
    else:
        h, w = masks.shape[-2:]
        ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        inside = masks[:, ys.clamp(0, h - 1), xs.clamp(0, w - 1)] & ok[None]  # [N, P]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = torch.where(inside, area[:, None], torch.full_like(area[:, None], math.inf))
    # amin + argmin: Tensor.min(dim) (values and indices) has a pathologically slow multithreaded
    # CPU path for small tensors in some torch builds (ms instead of us).
    best_cost, best = cost.amin(dim=0), cost.argmin(dim=0)  # first minimum: ties go to the lower index
    fg = torch.isfinite(best_cost)
    box = boxes[best]  # [P, 4]
    offsets = torch.stack([fx - box[:, 0], fy - box[:, 1], box[:, 2] - fx, box[:, 3] - fy], dim=1)
    offsets = torch.where(fg[:, None], offsets, torch.zeros_like(offsets))
    return torch.where(fg, best, torch.full_like(best, -1)), offsets


def _grid(h: int, w: int, stride: int, device) -> tuple[Tensor, Tensor]:
    ys = cell_centres(h, stride, torch.int64, device)
    xs = cell_centres(w, stride, torch.int64, device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xx.reshape(-1), yy.reshape(-1)


def _in_ranges(max_offset: Tensor, ranges: Sequence[tuple[float, float]]) -> Tensor:
    lo = max_offset.new_tensor([r[0] for r in ranges])
    hi = max_offset.new_tensor([r[1] for r in ranges])
    return (max_offset[:, None] >= lo) & (max_offset[:, None] <= hi)  # [P, L]


def _check_image(b: int, masks, boxes, labels, semantic, crowd, hp: int, wp: int) -> None:
    if masks.dtype != torch.bool or masks.dim() != 3 or tuple(masks.shape[1:]) != (hp, wp):
        raise ValueError(f"build_targets: instance_masks[{b}] must be bool [N, {hp}, {wp}], got "
                         f"{masks.dtype} {list(masks.shape)}")
    n = masks.shape[0]
    if boxes.dim() != 2 or tuple(boxes.shape) != (n, 4):
        raise ValueError(f"build_targets: boxes[{b}] must be [{n}, 4], got {list(boxes.shape)}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"build_targets: labels[{b}] must be [{n}], got {list(labels.shape)}")
    if tuple(semantic.shape) != (hp, wp):
        raise ValueError(f"build_targets: semantic[{b}] must be [{hp}, {wp}], got {list(semantic.shape)}")
    if crowd is not None and tuple(crowd.shape) != (hp, wp):
        raise ValueError(f"build_targets: crowd_mask[{b}] must be [{hp}, {wp}], got {list(crowd.shape)}")


def build_targets(batch: dict, cfg: TargetConfig = TargetConfig()) -> Targets:
    """Targets for a collated batch (``rtpanoptic.data.collate``: ``images [B,3,Hp,Wp]``,
    per-image lists ``instance_masks``, ``boxes``, ``labels``, ``semantic``, ``crowd_mask``).
    Tensors are created on the device of ``batch["images"]``."""
    if not isinstance(batch, dict) or "images" not in batch:
        raise TypeError("build_targets: batch must be a collated dict with an 'images' tensor")
    images = batch["images"]
    bsz, _, hp, wp = images.shape
    device = images.device
    for s in cfg.strides + (cfg.levelness_stride, cfg.semantic_stride):
        if hp % s or wp % s:
            raise ValueError(f"build_targets: padded image size {hp}x{wp} is not a multiple of stride {s}")
    n_levels = len(cfg.strides)
    per_level: list[list[list[Tensor]]] = [[[] for _ in range(5)] for _ in range(n_levels)]
    levelness, semantic = [], []
    crowds = batch.get("crowd_mask")
    for b in range(bsz):
        masks = batch["instance_masks"][b].to(device)
        boxes = batch["boxes"][b].to(device=device, dtype=torch.float32)
        labels = batch["labels"][b].to(device=device, dtype=torch.int64)
        sem = batch["semantic"][b].to(device)
        crowd = crowds[b].to(device) if crowds is not None else None
        _check_image(b, masks, boxes, labels, sem, crowd, hp, wp)

        for i, (stride, rng) in enumerate(zip(cfg.strides, cfg.size_ranges)):
            h, w = hp // stride, wp // stride
            xs, ys = _grid(h, w, stride, device)
            inst, offsets = assign_points(xs, ys, masks, boxes, cfg.weak)
            keep = (inst >= 0) & _in_ranges(offsets.amax(dim=1), [rng])[:, 0]
            inst = torch.where(keep, inst, torch.full_like(inst, -1))
            offsets = torch.where(keep[:, None], offsets, torch.zeros_like(offsets))
            lab = torch.where(keep, labels[inst.clamp(min=0)] if labels.numel() else inst, torch.full_like(inst, -1))
            ctr = torch.where(keep, centerness_target(offsets), torch.zeros_like(offsets[:, 0]))
            # Background inside a crowd region is ignored.  A location whose instance is assigned to
            # another level is a negative here (FCOS).
            valid = torch.ones_like(keep)
            if crowd is not None:
                valid = keep | ~crowd[ys, xs]
            out = per_level[i]
            out[0].append(offsets.t().reshape(4, h, w))
            out[1].append(lab.reshape(h, w))
            out[2].append(ctr.reshape(h, w))
            out[3].append(valid.reshape(h, w))
            out[4].append(inst.reshape(h, w))

        s = cfg.levelness_stride
        h, w = hp // s, wp // s
        xs, ys = _grid(h, w, s, device)
        inst, offsets = assign_points(xs, ys, masks, boxes, cfg.weak)
        fits = _in_ranges(offsets.amax(dim=1), cfg.size_ranges)  # [P, L]
        first = torch.where(fits.any(dim=1), fits.to(torch.uint8).argmax(dim=1) + 1, torch.zeros_like(inst))
        lvl = torch.where(inst >= 0, first, torch.zeros_like(inst))
        if crowd is not None:
            lvl = torch.where((inst < 0) & crowd[ys, xs], torch.full_like(lvl, IGNORE), lvl)
        levelness.append(lvl.reshape(h, w))

        s = cfg.semantic_stride
        h, w = hp // s, wp // s
        xs, ys = _grid(h, w, s, device)
        semantic.append(sem[ys, xs].to(torch.int64).reshape(h, w))

    stack = torch.stack
    return Targets(
        box_offsets=[stack(per_level[i][0]) for i in range(n_levels)],
        labels=[stack(per_level[i][1]) for i in range(n_levels)],
        centerness=[stack(per_level[i][2]) for i in range(n_levels)],
        valid=[stack(per_level[i][3]) for i in range(n_levels)],
        instance=[stack(per_level[i][4]) for i in range(n_levels)],
        levelness=stack(levelness),
        semantic=stack(semantic),
    )


def sample_masks(masks: Tensor, stride: int) -> Tensor:
    """Masks ``[N, H, W]`` sampled at the cell centres of a stride-``stride`` grid -> ``[N, H/s, W/s]``."""
    h, w = masks.shape[-2] // stride, masks.shape[-1] // stride
    ys = cell_centres(h, stride, torch.int64, masks.device)
    xs = cell_centres(w, stride, torch.int64, masks.device)
    return masks[:, ys][:, :, xs]
