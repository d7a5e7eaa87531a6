"""What a training config builds: its datasets (with their transforms) and its network."""
from __future__ import annotations

import contextlib

from .config import TrainConfig


def build_transforms(cfg: TrainConfig, ignore_label: int = 255):
    """The training transforms of ``cfg.data.transforms`` (None for ``"none"``)."""
    from ..data import transforms as T

    d = cfg.data
    if d.transforms == "none":
        return None
    if d.transforms == "synthetic":
        return T.synthetic_train_transforms(d.synthetic_size, tuple(d.scale), ignore_label)
    if d.transforms == "cityscapes":
        return T.cityscapes_train_transforms(tuple(d.crop_size), tuple(d.scale), ignore_label)
    return T.coco_train_transforms(tuple(d.min_sizes), d.max_size)


def synthetic_config(cfg: TrainConfig):
    """The :class:`~rtpanoptic.data.SyntheticConfig` of ``cfg.data`` (the set generated for it)."""
    from ..data import SyntheticConfig

    d = cfg.data
    changes = {
        k: v
        for k, v in (("num_train", d.synthetic_num_train), ("num_val", d.synthetic_num_val),
                     ("image_size", d.synthetic_image_size))
        if v is not None
    }
    return SyntheticConfig(**changes)


def build_dataset_from_config(cfg: TrainConfig, split: str, train: bool = True):
    """The dataset of ``cfg.data`` for ``split`` (training transforms when ``train``)."""
    from ..data import build_dataset, get_description

    d = cfg.data
    ignore = 255
    with contextlib.suppress(ValueError, KeyError):
        ignore = get_description(d.name).ignore_label
    transforms = build_transforms(cfg, ignore) if train else None
    synthetic_cfg = synthetic_config(cfg) if d.name == "synthetic" else None
    if d.name == "synthetic":
        dataset = build_dataset(d.name, d.root, split, transforms, synthetic_cfg=synthetic_cfg)
    else:
        dataset = build_dataset(d.name, d.root, split, transforms)
    dataset.max_pixels = d.max_pixels  # images are read (and checked against it) on access
    return dataset


def build_model_from_config(cfg: TrainConfig, description):
    """The network of ``cfg.model`` for a dataset ``description``."""
    from ..model import build_model

    return build_model(cfg.model.preset, description, overrides=list(cfg.model.overrides))
