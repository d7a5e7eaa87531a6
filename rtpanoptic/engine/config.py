"""Training configuration (plain dataclasses) and the presets of paper §5.3.

Build one from a preset, a YAML file and ``key.sub=value`` overrides::

    from rtpanoptic.config import load_config
    cfg = load_config(TrainConfig, "my.yaml", ["optim.lr=0.02"], base=train_preset("cityscapes"))

Presets: ``"cityscapes"`` (lr 0.013, 48k steps, x0.1 at 36k / 44k, 1800x900 crops rescaled
0.7-1.3, 1 image per GPU x 8 GPUs), ``"coco"`` (lr 0.01, 180k steps, x0.1 at 120k / 160k,
shortest side 640/720/800, 2 images per GPU x 8, semantic weight lambda 0.4) and ``"synthetic"``
(a small network on the built-in synthetic set; minutes on a CPU).  The learning rates are the
paper's for 8 processes; ``optim.scale_lr_with_world_size`` rescales them linearly when fewer or
more processes train (off by default: the numbers are used as given).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..losses import LossConfig

AMP_MODES = ("auto", "none", "bf16", "fp16")
TRANSFORMS = ("synthetic", "cityscapes", "coco", "none")


@dataclass
class ModelSection:
    preset: str = "r50-fpn"  # a name of rtpanoptic.model.PRESETS
    overrides: list[str] = field(default_factory=list)  # ["head.loc_channels=32", "backbone.norm=bn"]


@dataclass
class DataSection:
    name: str = "synthetic"  # rtpanoptic.data.build_dataset name: "synthetic" | "cityscapes" | "coco"
    root: str = "datasets/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    transforms: str = "synthetic"  # one of TRANSFORMS
    crop_size: tuple[int, int] = (900, 1800)  # (H, W), cityscapes transforms
    scale: tuple[float, float] = (0.7, 1.3)  # cityscapes / synthetic rescaling range
    min_sizes: tuple[int, ...] = (640, 720, 800)  # coco shortest side choices
    max_size: int = 1333
    synthetic_size: int = 128  # synthetic transforms crop size
    # synthetic set generation (used when name == "synthetic"); None keeps the generator default
    synthetic_num_train: int | None = None
    synthetic_num_val: int | None = None
    synthetic_image_size: int | None = None
    num_workers: int = 0


@dataclass
class OptimConfig:
    lr: float = 0.01  # for the whole (global) batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False  # exempt GroupNorm/BatchNorm weights and biases from decay
    clip_grad_norm: float | None = None  # max global grad norm; None: no clipping
    scale_lr_with_world_size: bool = False
    reference_world_size: int = 8  # world size the lr is given for (when scaling)


@dataclass
class ScheduleConfig:
    max_steps: int = 90000
    warmup_steps: int = 500
    warmup_factor: float = 1.0 / 3  # lr multiplier at step 0, rising linearly to 1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1


@dataclass
class RuntimeConfig:
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available, else cpu), "cpu", "cuda"
    amp: str = "auto"  # "auto" (bf16 on a GPU that supports it, else fp16 on GPU, none on CPU)
    channels_last: bool = True  # on GPU only
    batch_size: int = 2  # images per process
    seed: int = 0
    output_dir: str = "runs/train"
    resume: str | None = "auto"  # "auto": output_dir/last.pt if present; a path; None: never
    checkpoint_every: int = 1000  # steps; the last step is always saved
    keep_checkpoints: bool = False  # also keep step_XXXXXXX.pt copies
    log_every: int = 20
    eval_every: int = 0  # steps; 0: only the evaluator's final call (if an evaluator is given)
    eval_max_images: int | None = None
    tensorboard: bool = False
    progress: bool = True
    dist_backend: str = "auto"  # "auto": nccl on GPU, gloo on CPU
    sync_bn: bool = False  # SyncBatchNorm across GPUs (trainable BN only; GPU DDP only)
    # torch.set_num_threads during training on CPU (None: leave it).  On a small shared CPU, 1 is
    # often much faster than the default: torch's multithreaded kernels can stall when the cores
    # are busy (measured 20x slower steps with 2 threads on a loaded 2-core machine).
    threads: int | None = None
    # wall-clock budget of the training loop in seconds: when exceeded, training stops after the
    # current step as if it were the last one (checkpoint, final evaluation); resuming continues
    time_limit_s: float | None = None


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def validate_train_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the field of a value training cannot run with."""
    r, s, o, d = cfg.runtime, cfg.schedule, cfg.optim, cfg.data
    checks = [
        (r.amp in AMP_MODES, "runtime.amp", f"one of {AMP_MODES}", r.amp),
        (r.batch_size >= 1, "runtime.batch_size", ">= 1", r.batch_size),
        (r.checkpoint_every >= 1, "runtime.checkpoint_every", ">= 1", r.checkpoint_every),
        (r.log_every >= 1, "runtime.log_every", ">= 1", r.log_every),
        (r.eval_every >= 0, "runtime.eval_every", ">= 0", r.eval_every),
        (r.time_limit_s is None or r.time_limit_s >= 0, "runtime.time_limit_s", ">= 0 or null", r.time_limit_s),
        (s.max_steps >= 1, "schedule.max_steps", ">= 1", s.max_steps),
        (s.warmup_steps >= 0, "schedule.warmup_steps", ">= 0", s.warmup_steps),
        (0 < s.warmup_factor <= 1, "schedule.warmup_factor", "in (0, 1]", s.warmup_factor),
        (list(s.milestones) == sorted(s.milestones), "schedule.milestones", "increasing", s.milestones),
        (o.lr > 0, "optim.lr", "> 0", o.lr),
        (o.clip_grad_norm is None or o.clip_grad_norm > 0, "optim.clip_grad_norm", "> 0 or null", o.clip_grad_norm),
        (d.transforms in TRANSFORMS, "data.transforms", f"one of {TRANSFORMS}", d.transforms),
        (d.num_workers >= 0, "data.num_workers", ">= 0", d.num_workers),
    ]
    for ok, name, expected, got in checks:
        if not ok:
            raise ValueError(f"train config: {name} must be {expected}, got {got!r}")


def _cityscapes() -> TrainConfig:
    return TrainConfig(
        model=ModelSection("r50-fpn"),
        data=DataSection(name="cityscapes", root="datasets/cityscapes", transforms="cityscapes",
                         crop_size=(900, 1800), scale=(0.7, 1.3), num_workers=4),
        optim=OptimConfig(lr=0.013, momentum=0.9, weight_decay=1e-4),
        schedule=ScheduleConfig(max_steps=48000, warmup_steps=500, milestones=(36000, 44000), gamma=0.1),
        loss=LossConfig(semantic=1.0),
        runtime=RuntimeConfig(batch_size=1, output_dir="runs/cityscapes", checkpoint_every=2000, eval_every=0),
    )


def _coco() -> TrainConfig:
    return TrainConfig(
        model=ModelSection("r50-fpn"),
        data=DataSection(name="coco", root="datasets/coco", transforms="coco", min_sizes=(640, 720, 800),
                         max_size=1333, num_workers=4),
        optim=OptimConfig(lr=0.01, momentum=0.9, weight_decay=1e-4),
        schedule=ScheduleConfig(max_steps=180000, warmup_steps=500, milestones=(120000, 160000), gamma=0.1),
        loss=LossConfig(semantic=0.4),
        runtime=RuntimeConfig(batch_size=2, output_dir="runs/coco", checkpoint_every=5000, eval_every=0),
    )


def _synthetic() -> TrainConfig:
    # A ResNet-18 trained from scratch with trainable BatchNorm and a thin FPN / head, one CPU
    # thread.  Measured on a loaded 2-core machine: 0.48-0.6 s/step, 800 steps in 390-480 s, PQ 79.5
    # on the 50 synthetic val images (72.0 at step 400; 80.6 with loss.backend="reference": the
    # backends differ in float rounding only).  The 10-minute time limit is a safety valve for
    # slower machines (a 15-minute demo budget): training then stops early, still well trained.
    return TrainConfig(
        model=ModelSection(
            "r18-fpn",
            [
                "backbone.norm=bn", "backbone.freeze_at=0", "fpn.channels=32",
                "head.loc_channels=32", "head.sem_channels=32", "head.num_convs=2",
            ],
        ),
        data=DataSection(name="synthetic", root="datasets/synthetic", transforms="synthetic", synthetic_size=128,
                         scale=(0.8, 1.25), num_workers=0),
        optim=OptimConfig(lr=0.02, momentum=0.9, weight_decay=1e-4, clip_grad_norm=5.0),
        schedule=ScheduleConfig(max_steps=800, warmup_steps=100, warmup_factor=0.1, milestones=(600, 750)),
        loss=LossConfig(semantic=1.0),
        runtime=RuntimeConfig(batch_size=8, output_dir="runs/synthetic", checkpoint_every=200, log_every=10,
                              eval_every=0, amp="none", channels_last=False, threads=1, time_limit_s=600.0),
    )


TRAIN_PRESETS: dict[str, callable] = {"cityscapes": _cityscapes, "coco": _coco, "synthetic": _synthetic}


def train_preset(name: str) -> TrainConfig:
    """A fresh :class:`TrainConfig` of a named preset (``cityscapes``, ``coco``, ``synthetic``)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {sorted(TRAIN_PRESETS)}")
    return copy.deepcopy(TRAIN_PRESETS[name]())


def model_train_config(model: str | None, train_preset: str | None = None) -> tuple[str, list[str]]:
    """``(training preset, overrides)`` of a training config whose network is model preset ``model``.

    The training preset defaults to the one of the model's dataset (``tri-cityscapes-r50`` ->
    ``cityscapes``; ``synthetic`` when none fits); the overrides set ``model.preset`` and clear the
    training preset's own ``model.overrides``.  ``model`` None: ``(train_preset or "synthetic", [])``.
    Raises ValueError for an unknown model preset.
    """
    if model is None:
        return train_preset or "synthetic", []
    from ..model import preset_config

    dataset = preset_config(model).description
    preset = train_preset or (dataset if dataset in TRAIN_PRESETS else "synthetic")
    return preset, [f"model.preset={model}", "model.overrides=[]"]


def make_config(preset: str = "synthetic", path: str | None = None, overrides=()) -> TrainConfig:
    """``train_preset(preset)``, then the YAML file at ``path``, then ``["a.b=value", ...]`` overrides
    (what a command line needs)."""
    from ..config import load_config

    cfg = load_config(TrainConfig, path, list(overrides), base=train_preset(preset))
    validate_train_config(cfg)
    return cfg
