"""Weight files as users have them: read, recognise and load them strictly into a network.

:func:`read_weights` accepts

- the authors' released state dict (``cvpr_realtime_pano_cityscapes_standalone_no_prefix.pth``,
  328 tensors for ``tri-cityscapes-r50``), with the FPN named as torchvision <= 0.12
  (``fpn_inner`` style ``inner_blocks.i.weight``) or >= 0.13 (``inner_blocks.i.0.weight``);
- a plain ``model.state_dict()`` of any preset (also wrapped as ``{"state_dict": ...}`` or with
  DistributedDataParallel's ``module.`` prefix on every name);
- this project's training checkpoint (:mod:`rtpanoptic.engine.checkpoint`), whose training
  config comes along.

Every file is read with ``torch.load(weights_only=True)``: a pickle that would need to run code
is refused, never executed.  :func:`load_weights` is strict; a file for another network fails
with a one-line :class:`WeightsError` naming the first missing, unexpected and mis-shaped
tensor and how many there are of each.

The reading errors live here, below the model presets and the training engine that both read
weight files: :class:`CheckpointError` (also :mod:`rtpanoptic.engine.checkpoint`'s) and its
subclass :class:`WeightsError`.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_DDP_PREFIX = "module."


class CheckpointError(Exception):
    """A checkpoint that cannot be read, trusted, fitted to a network or written (one-line message)."""


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _untrusted_message(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an old-format or unreadable archive: the names are only a hint
        names = []
    listed = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
    return (f"{path} was not loaded: it holds pickled Python objects{listed} that only an unsafe load could "
            f"rebuild, and such a load can run code; rtpanoptic reads checkpoints with weights_only=True "
            f"(checkpoints of earlier rtpanoptic versions pickled the numpy RNG state: train again to get one that loads)")


class WeightsError(CheckpointError):
    """A weights file that cannot be read, trusted or fitted to a network (one-line message)."""


@dataclass(frozen=True)
class Weights:
    """The tensors of a weights file.

    Attributes:
        path: the file.
        state_dict: ``{name: tensor}`` as the file names them (a ``module.`` prefix removed).
        kind: ``"rtpanoptic checkpoint"`` or ``"state dict"``.
        config: the training config saved in an rtpanoptic checkpoint (a plain dict), else None.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    kind: str
    config: dict[str, Any] | None = None


def read_weights(path: str | os.PathLike) -> Weights:
    """Read a weights file (see the module docstring) on the CPU with ``weights_only=True``.

    Raises :class:`WeightsError` for a missing, truncated, untrusted or tensor-less file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist" if not path.exists()
                           else f"weights file {path} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):  # torch.save's format: the refusal names the objects' types
            raise WeightsError(_untrusted_message(path)) from None
        raise WeightsError(f"{path} was not loaded: it is not a PyTorch zip archive, and the weights_only=True "
                           f"reader refused its content (a corrupt file, or a pickle that would have to run "
                           f"code to load)") from None
    except Exception as exc:  # zip / storage errors of a truncated or foreign file
        raise WeightsError(f"{path} is not a readable PyTorch weights file, truncated or of another format "
                           f"({_first_line(exc)})") from None
    kind, config = "state dict", None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        kind = "rtpanoptic checkpoint"
        config = obj["config"] if isinstance(obj.get("config"), Mapping) else None
        obj = obj["model"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty mapping" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise WeightsError(f"{path} holds {what}, not a state dict of tensors")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path} is not a state dict of tensors: entry {name!r} is a {type(value).__name__}")
    state = dict(obj)
    if all(k.startswith(_DDP_PREFIX) for k in state):
        state = {k[len(_DDP_PREFIX):]: v for k, v in state.items()}
    return Weights(path, state, kind, dict(config) if config is not None else None)


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """``{other name: own name}`` over the modules that accept two names for a tensor."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        aliases = getattr(module, "state_dict_aliases", None)
        if callable(aliases):
            prefix = f"{name}." if name else ""
            out.update({prefix + other: prefix + own for other, own in aliases().items()})
    return out


def mismatch(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """How ``state_dict`` fails to fit ``model`` strictly, in one line; None when it fits.

    Names a tensor may carry in two forms (the FPN's torchvision names) count as the same tensor.
    """
    own = model.state_dict()
    aliases = _aliases(model)
    theirs = {aliases.get(k, k): v for k, v in state_dict.items()}
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in state_dict if aliases.get(k, k) not in own]
    shaped = [k for k in own if k in theirs and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shaped):
        return None

    def count(keys: list[str], what: str, first: str = "") -> str:
        return f"{len(keys)} {what}" + (f" (first: {first or keys[0]})" if keys else "")

    k = shaped[0] if shaped else ""
    first_shape = f"{k} {list(theirs[k].shape)} in the file, {list(own[k].shape)} in the network" if shaped else ""
    text = ", ".join((count(missing, "missing"), count(unexpected, "unexpected"),
                      count(shaped, "mis-shaped", first_shape)))
    if unexpected and all(k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
                          for k in unexpected):
        text += "; it looks like an ImageNet ResNet: give it as backbone.pretrained=PATH instead"
    return text


def load_weights(model: torch.nn.Module, weights: str | os.PathLike | Weights, network: str | None = None) -> Weights:
    """Load a weights file into ``model`` strictly (every tensor, each with its shape); returns it.

    Args:
        model: the network, e.g. ``build_model("tri-cityscapes-r50")``.
        weights: a path (read with :func:`read_weights`) or what it returned.
        network: how to name the network in an error (default: its class name).

    Raises :class:`WeightsError` (one line) for an unreadable file or one for another network.
    """
    if not isinstance(weights, Weights):
        weights = read_weights(weights)
    label = network or type(model).__name__
    problem = mismatch(model, weights.state_dict)
    if problem is not None:
        raise WeightsError(f"{weights.path} is for another architecture than {label}: {problem}")
    try:
        model.load_state_dict(weights.state_dict, strict=True)
    except RuntimeError as exc:  # a tensor that cannot be copied (e.g. complex into float)
        raise WeightsError(f"{weights.path} does not load into {label} ({_first_line(exc)})") from None
    return weights


def frozen_random_layers(backbone_cfg) -> list[str]:
    """The backbone layers that stay at their random initial values during training:
    those frozen by ``norm="frozen_bn"`` / ``freeze_at > 0`` when ``pretrained`` is not set."""
    if backbone_cfg.pretrained:
        return []
    stages = ("stem (conv1)", "layer1", "layer2", "layer3", "layer4")
    frozen = [f"{s} convs" for s in stages[: backbone_cfg.freeze_at]]
    if backbone_cfg.norm == "frozen_bn":
        frozen.append("every BatchNorm (frozen_bn)")
    return frozen


def warn_frozen_random_layers(backbone_cfg) -> None:
    """Warn (one :class:`UserWarning` naming the fix) when training would freeze random layers."""
    frozen = frozen_random_layers(backbone_cfg)
    if frozen:
        warnings.warn(
            f"backbone.pretrained is not set, so the frozen backbone layers ({', '.join(frozen)}) keep their "
            f"random initial values for the whole training: set model.overrides=[backbone.pretrained=PATH] to a "
            f"local torchvision ResNet-{backbone_cfg.depth} file (README: pretrained backbones), or train from "
            f"scratch with model.overrides=[backbone.norm=bn,backbone.freeze_at=0]",
            UserWarning, stacklevel=2)
