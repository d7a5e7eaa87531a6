"""Named datasets: ``build_dataset(name, root, split, transforms)``.

- ``"coco"``: COCO 2017 panoptic, ``root/{train,val}2017/``, ``root/annotations/panoptic_{split}2017.json``
  and ``root/annotations/panoptic_{split}2017/`` (split "train" / "val").
- ``"cityscapes"``: see :mod:`rtpanoptic.data.cityscapes`.
- ``"synthetic"``: generated under ``root`` on first use (:mod:`rtpanoptic.data.synthetic`).
"""
from __future__ import annotations

import os
from collections.abc import Callable

from .cityscapes import cityscapes_panoptic_dataset
from .coco_panoptic import COCOPanopticDataset
from .description import COCO_PANOPTIC
from .synthetic import SyntheticConfig, synthetic_dataset

DATASETS = ("coco", "cityscapes", "synthetic")


def coco_panoptic_dataset(root: str, split: str = "train", transforms=None) -> COCOPanopticDataset:
    root = str(root)
    return COCOPanopticDataset(
        os.path.join(root, f"{split}2017"),
        os.path.join(root, "annotations", f"panoptic_{split}2017.json"),
        os.path.join(root, "annotations", f"panoptic_{split}2017"),
        description=COCO_PANOPTIC,
        transforms=transforms,
    )


def build_dataset(
    name: str,
    root: str,
    split: str = "train",
    transforms: Callable[[dict], dict] | None = None,
    synthetic_cfg: SyntheticConfig | None = None,
) -> COCOPanopticDataset:
    if name == "coco":
        return coco_panoptic_dataset(root, split, transforms)
    if name == "cityscapes":
        return cityscapes_panoptic_dataset(root, split, transforms)
    if name == "synthetic":
        return synthetic_dataset(root, split, synthetic_cfg, transforms)
    raise ValueError(f"unknown dataset {name!r}; known: {DATASETS}")
