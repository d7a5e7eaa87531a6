"""Networks from training checkpoints (read with ``weights_only=True``), errors as :class:`UsageError`."""
from __future__ import annotations

import os

import torch

from ..usage import UsageError


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's content, loaded with ``weights_only=True`` (never executed); UsageError otherwise."""
    from ..engine.checkpoint import CheckpointError
    from ..engine.checkpoint import read_checkpoint as read

    try:
        return read(path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None


def checkpoint_config(state: dict, path: str):
    """The TrainConfig saved in a checkpoint."""
    from ..config import ConfigError, from_dict
    from ..engine import TrainConfig

    if not isinstance(state.get("config"), dict):
        raise UsageError(f"{path} holds no training config; pass --preset / --config to describe its network")
    try:
        return from_dict(TrainConfig, state["config"], where=f"{path} config")
    except ConfigError as exc:
        raise UsageError(f"{path}: cannot read its training config ({exc})") from None


def build_network(cfg, description=None):
    """The (untrained) network of ``cfg.model`` for ``description`` (default: ``cfg.data``'s dataset)."""
    from ..data import get_description
    from ..engine.factories import build_model_from_config

    if description is None:
        try:
            description = get_description(cfg.data.name)
        except KeyError as exc:
            raise UsageError(str(exc).strip("'\"")) from None
    try:
        return build_model_from_config(cfg, description)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot build model {cfg.model.preset!r}: {exc}") from None


def load_model(checkpoint: str, cfg=None, description=None, device: torch.device | str = "cpu"):
    """``(network in eval mode on device, TrainConfig)`` of a training checkpoint.

    ``cfg`` None: the network described by the checkpoint's own config.  Otherwise ``cfg.model``
    must describe the checkpoint's network; a mismatch is a :class:`UsageError`.
    """
    from ..engine.checkpoint import CheckpointError, load_model_state

    state = read_checkpoint(checkpoint)
    if cfg is None:
        cfg = checkpoint_config(state, checkpoint)
    model = build_network(cfg, description)
    try:
        load_model_state(model, state["model"], checkpoint)
    except CheckpointError as exc:
        raise UsageError(f"{exc}; the network: model {cfg.model.preset!r} {list(cfg.model.overrides)} with "
                         f"{model.num_classes} classes") from None
    return model.to(device).eval(), cfg
