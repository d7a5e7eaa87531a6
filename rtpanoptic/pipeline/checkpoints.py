"""Networks from weights files (training checkpoints, state dicts, the released file; read with
``weights_only=True``), errors as :class:`UsageError`."""
from __future__ import annotations

import torch

from ..usage import UsageError


def checkpoint_config(state: dict, path: str):
    """The TrainConfig saved in a checkpoint."""
    from ..config import ConfigError, from_dict
    from ..engine import TrainConfig

    if not isinstance(state.get("config"), dict):
        raise UsageError(f"{path} holds no training config; name its network with --model NAME (e.g. "
                         f"tri-cityscapes-r50) or --preset / --config")
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
    """``(network in eval mode on device, TrainConfig)`` of a weights file: a training checkpoint,
    a plain state dict or the authors' released file (:func:`rtpanoptic.weights.read_weights`).

    ``cfg`` None: the network described by the checkpoint's own config.  Otherwise ``cfg.model``
    must describe the file's network; a mismatch is a :class:`UsageError`.
    """
    from ..weights import WeightsError, load_weights, read_weights

    try:
        weights = read_weights(checkpoint)
        if cfg is None:
            cfg = checkpoint_config({"config": weights.config}, checkpoint)
        model = build_network(cfg, description)
        load_weights(model, weights, network=f"model {cfg.model.preset!r} {list(cfg.model.overrides)} "
                                             f"with {model.num_classes} classes")
    except WeightsError as exc:
        raise UsageError(str(exc)) from None
    return model.to(device).eval(), cfg
