"""The training config and the dataset a command runs on, with user errors as :class:`UsageError`."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..usage import UsageError


def train_config(preset: str, config_path: str | None = None, overrides: Sequence[str] = ()):
    """``engine.make_config`` with the user-facing errors turned into :class:`UsageError`."""
    from ..config import ConfigError
    from ..engine import TRAIN_PRESETS, make_config

    if preset not in TRAIN_PRESETS:
        raise UsageError(f"unknown preset {preset!r}; known presets: {', '.join(sorted(TRAIN_PRESETS))}")
    try:
        return make_config(preset, config_path, list(overrides))
    except ConfigError as exc:
        raise UsageError(f"bad config: {exc}") from None
    except ValueError as exc:  # validate_train_config
        raise UsageError(str(exc)) from None


def check_data_root(cfg) -> None:
    """The dataset folder of ``cfg.data`` must exist (the synthetic set is generated on demand)."""
    d = cfg.data
    if d.name != "synthetic" and not Path(d.root).is_dir():
        raise UsageError(f"dataset folder {d.root} (data.root, dataset {d.name!r}) does not exist; "
                         f"set data.root=PATH to where the dataset lies")


def build_dataset(cfg, split: str, train: bool = False, progress: bool = True):
    """The (un-augmented unless ``train``) dataset of ``cfg.data`` for ``split``; UsageError if missing.
    The synthetic set is generated first when needed (with a progress bar if ``progress``)."""
    from ..data import DatasetError, generate_synthetic
    from ..engine.factories import build_dataset_from_config, synthetic_config

    check_data_root(cfg)
    try:
        if cfg.data.name == "synthetic":
            generate_synthetic(cfg.data.root, synthetic_config(cfg), progress=progress)
        return build_dataset_from_config(cfg, split, train=train)
    except (DatasetError, FileNotFoundError) as exc:
        raise UsageError(f"cannot open dataset {cfg.data.name!r} split {split!r}: {exc}") from None
