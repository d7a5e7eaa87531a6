"""Training: configuration and presets, the DDP-ready loop, checkpoints."""
from ..distributed import DistInfo, init_distributed
from .checkpoint import CheckpointError, atomic_save, load_checkpoint, save_checkpoint
from .config import (
    TRAIN_PRESETS,
    DataSection,
    ModelSection,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
    make_config,
    train_preset,
)
from .trainer import NonFiniteLossError, TrainResult, WarmupMultiStep, train

__all__ = [
    "TRAIN_PRESETS",
    "CheckpointError",
    "DataSection",
    "DistInfo",
    "ModelSection",
    "NonFiniteLossError",
    "OptimConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "WarmupMultiStep",
    "atomic_save",
    "init_distributed",
    "load_checkpoint",
    "make_config",
    "save_checkpoint",
    "train",
    "train_preset",
]
