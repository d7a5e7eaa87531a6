"""Unified panoptic head (paper §4.2, Fig. 3).

Two towers shared by all FPN levels (4 x Conv3x3 + GroupNorm + ReLU each):
the localisation tower (``bbox_tower``) feeds box offsets, centerness and, globally, the
levelness; the semantics tower (``cls_tower``) feeds the thing-class logits and, globally,
the semantic logits.  Global maps come from the towers' features of every level bilinearly
resized to one grid and concatenated.  Names follow the authors' release.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import HeadConfig
from .outputs import HeadOutputs


class Scale(nn.Module):
    """A learnable scalar multiplier (one per level for the box regression)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(in_channels: int, channels: int, num_convs: int, per_group: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
            nn.GroupNorm(channels // per_group, channels),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


class PanopticHead(nn.Module):
    def __init__(self, in_channels: int, num_levels: int, num_things: int, num_classes: int, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.num_levels = num_levels
        loc, sem = cfg.loc_channels, cfg.sem_channels
        self.cls_tower = _tower(in_channels, sem, cfg.num_convs, cfg.gn_channels_per_group)
        self.bbox_tower = _tower(in_channels, loc, cfg.num_convs, cfg.gn_channels_per_group)
        self.cls_logits = nn.Conv2d(num_levels * sem, num_classes, 3, padding=1)  # semantic segmentation
        self.box_cls_logits = nn.Conv2d(sem, num_things, 3, padding=1)
        self.bbox_pred = nn.Conv2d(loc, 4, 3, padding=1)
        self.centerness = nn.Conv2d(loc, 1, 3, padding=1)
        self.levelness = nn.Conv2d(num_levels * loc, num_levels + 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.box_cls_logits.bias, -math.log((1 - cfg.prior_prob) / cfg.prior_prob))

    def forward(self, features: list[Tensor], image_size: tuple) -> HeadOutputs:
        """``features``: P3..P7; ``image_size``: the (padded) input (H, W)."""
        if len(features) != self.num_levels:
            raise ValueError(f"PanopticHead: expected {self.num_levels} feature maps, got {len(features)}")
        h, w = image_size
        offsets, centerness, class_logits, sem_feats, loc_feats = [], [], [], [], []
        for i, x in enumerate(features):
            sem = self.cls_tower(x)
            loc = self.bbox_tower(x)
            class_logits.append(self.box_cls_logits(sem))
            centerness.append(self.centerness(loc))
            log_offsets = self.scales[i](self.bbox_pred(loc))
            offsets.append(torch.exp(log_offsets.clamp(max=self.cfg.max_log_offset)))
            sem_feats.append(sem)
            loc_feats.append(loc)
        sem_size = (h // self.cfg.semantic_stride, w // self.cfg.semantic_stride)
        lvl_size = (h // self.cfg.levelness_stride, w // self.cfg.levelness_stride)
        semantic = self.cls_logits(_resize_cat(sem_feats, sem_size))
        levelness = self.levelness(_resize_cat(loc_feats, lvl_size))
        return HeadOutputs(offsets, centerness, class_logits, levelness, semantic)


def _resize_cat(feats: list[Tensor], size) -> Tensor:
    return torch.cat(
        [f if tuple(f.shape[-2:]) == tuple(size) else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
         for f in feats],
        dim=1,
    )
