"""Named model presets and :func:`build_model`.

``r18-fpn``, ``r34-fpn``, ``r50-fpn``: the paper's network (RGB ImageNet input, semantics and
levelness at stride 4, IoU box attention with sigma 0.3).  ``tri-cityscapes-r50``: the
authors' released Cityscapes model (``cvpr_realtime_pano_cityscapes_standalone_no_prefix.pth``
loads into it with ``strict=True``): BGR Caffe input, FrozenBN without eps, semantics at
stride 8, the "tri" box score with sigma 0.4, pre-NMS threshold 0.06, class-agnostic NMS 0.97.
Its paper variant is the same model with overrides (``head.semantic_stride=4`` changes the
weights' meaning, so only the inference options are meant to be switched on the released file).
Its release-exact variant: ``inference.mask_mode=release`` (the release's bilinear masks, see
:class:`~rtpanoptic.model.config.InferenceConfig`); the preset keeps the default ``"grid"``.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Mapping

from ..config import merge, parse_override
from ..data.description import DatasetDescription, get_description
from .config import BackboneConfig, HeadConfig, InferenceConfig, ModelConfig
from .network import PanopticNet


def _paper(depth: int) -> ModelConfig:
    return ModelConfig(backbone=BackboneConfig(depth=depth))


PRESETS: dict[str, ModelConfig] = {
    "r18-fpn": _paper(18),
    "r34-fpn": _paper(34),
    "r50-fpn": _paper(50),
    "tri-cityscapes-r50": ModelConfig(
        backbone=BackboneConfig(depth=50, frozen_bn_eps=0.0),
        head=HeadConfig(semantic_stride=8, levelness_stride=4),
        inference=InferenceConfig(
            pre_nms_thresh=0.06, pre_nms_top_n=1000, nms_thresh=0.6, global_nms_thresh=0.97,
            post_nms_top_n=100, score="tri", sigma=0.4,
        ),
        input_format="bgr_caffe",
        description="cityscapes",
    ),
}


def preset_config(name: str) -> ModelConfig:
    """A fresh copy of a preset's :class:`ModelConfig`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def _shortcut(key: str, value) -> dict:
    if key == "channels":
        return {"fpn": {"channels": value}, "head": {"loc_channels": value, "sem_channels": value}}
    if key == "fpn_channels":
        return {"fpn": {"channels": value}}
    if key == "input_format":
        return {key: value}
    for section in ("backbone", "fpn", "head", "inference"):
        cls = type(getattr(ModelConfig(), section))
        if key in {f.name for f in dataclasses.fields(cls)}:
            return {section: {key: value}}
    raise TypeError(f"build_model: unknown keyword {key!r}; use overrides= for nested fields")


def build_model(
    name_or_config: str | ModelConfig,
    description: str | DatasetDescription | None = None,
    overrides: Iterable[str] | Mapping | None = None,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> PanopticNet:
    """Build a :class:`PanopticNet` from a preset name or a :class:`ModelConfig`.

    Args:
        name_or_config: ``"r18-fpn" | "r34-fpn" | "r50-fpn" | "tri-cityscapes-r50"`` or a config.
        description: a :class:`DatasetDescription` or the name of a registered one; default
            ``cfg.description``.  It sets the numbers of classes C and thing classes K.
        overrides: ``["head.loc_channels=32", ...]`` strings or a nested mapping.
        weights: a weights file loaded strictly with ``weights_only=True``
            (:func:`rtpanoptic.weights.load_weights`): the authors' released state dict, a
            ``state_dict()`` of this network, or an rtpanoptic training checkpoint.  A file for
            another network raises :class:`rtpanoptic.weights.WeightsError`.
        **kwargs: any field of the config's sections by its bare name (``pretrained="r18.pth"``,
            ``depth=18``, ``norm="bn"``, ``freeze_at=0``, ``loc_channels=32``, ``sigma=0.4``,
            ``input_format=...``), plus ``channels=`` (FPN and both towers) and ``fpn_channels=``.
    """
    if isinstance(name_or_config, str):
        cfg = preset_config(name_or_config)
    elif isinstance(name_or_config, ModelConfig):
        cfg = name_or_config
    else:
        raise TypeError(f"build_model: name_or_config must be a preset name or a ModelConfig, "
                        f"got {type(name_or_config).__name__}")
    if overrides:
        if isinstance(overrides, Mapping):
            cfg = merge(cfg, overrides, where="build_model overrides")
        else:
            for text in overrides:
                cfg = merge(cfg, parse_override(text), where=f"override {text!r}")
    for key, value in kwargs.items():
        cfg = merge(cfg, _shortcut(key, value), where=f"build_model({key}=...)")
    if description is None:
        description = cfg.description
    if isinstance(description, str):
        description = get_description(description)
    elif not isinstance(description, DatasetDescription):
        raise TypeError(f"build_model: description must be a DatasetDescription or a name, "
                        f"got {type(description).__name__}")
    cfg = dataclasses.replace(cfg, description=description.name)
    model = PanopticNet(cfg, description)
    if weights is not None:
        from ..weights import load_weights

        name = name_or_config if isinstance(name_or_config, str) else "this ModelConfig"
        load_weights(model, weights, network=f"model {name!r} ({description.num_classes} classes)")
    return model
