"""The training loop: ``rtpanoptic.engine.train(cfg)``.

One process or many under ``torchrun`` (DDP; NCCL on GPU, gloo on CPU).  Per step: a batch from
a resumable sampler, ``model.normalize``, the forward pass (autocast on GPU), the losses of
eq. 19 (:class:`rtpanoptic.losses.PanopticCriterion`, always in float32), a finiteness check of
every loss part (all ranks agree before anything is applied), backward, optional gradient
clipping, SGD step, scheduler step.  Rank 0 alone logs (tqdm, optional TensorBoard) and writes
checkpoints (atomically); evaluation is a pluggable callable.
"""
from __future__ import annotations

import bisect
import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..config import save_config, to_dict
from ..losses import LOSS_NAMES, PanopticCriterion
from .checkpoint import LAST, find_resume, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import TrainConfig, validate_train_config
from .distributed import (
    DistInfo,
    SeededDataset,
    StepSampler,
    all_reduce_mean,
    all_reduce_tensor_mean,
    barrier,
    broadcast_buffers,
    cleanup,
    init_distributed,
    unwrap,
)

# evaluator(model, step) -> {"metric": value}; called on rank 0 with the unwrapped model in eval mode
Evaluator = Callable[[torch.nn.Module, int], dict[str, float]]


class NonFiniteLossError(FloatingPointError):
    """A loss part became NaN or infinite; training stopped before applying that step."""


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained network (unwrapped from DDP), in train mode
    step: int  # steps done
    # one record per log interval (rank 0), those before a resume included
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    checkpoint: Path | None = None  # last checkpoint written (rank 0)
    seconds: float = 0.0  # wall time of the loop


class WarmupMultiStep:
    """lr multiplier at step s: linear warm-up from ``warmup_factor`` over ``warmup_steps``, times
    ``gamma`` for every milestone <= s (a picklable object, so the scheduler's state is complete)."""

    def __init__(self, warmup_steps: int, warmup_factor: float, milestones, gamma: float):
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        factor = self.gamma ** bisect.bisect_right(self.milestones, step)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, world_size: int = 1) -> torch.optim.SGD:
    o = cfg.optim
    lr = o.lr * (world_size / o.reference_world_size if o.scale_lr_with_world_size else 1.0)
    decay, no_decay = [], []
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            exempt = o.no_decay_norm_bias and (isinstance(module, norm_types) or name == "bias")
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=o.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupMultiStep(s.warmup_steps, s.warmup_factor, s.milestones, s.gamma)
    )


def _reapply_schedule(optimizer, scheduler, cfg: TrainConfig, world_size: int) -> None:
    """After loading a checkpoint: the lr and schedule of ``cfg`` win over the saved ones (a run
    resumed with a longer schedule follows the new one); the same config changes nothing."""
    fresh = build_optimizer(torch.nn.Linear(1, 1), cfg, world_size).param_groups[0]["lr"]
    s = cfg.schedule
    scheduler.lr_lambdas = [WarmupMultiStep(s.warmup_steps, s.warmup_factor, s.milestones, s.gamma)
                            for _ in optimizer.param_groups]
    scheduler.base_lrs = [fresh for _ in optimizer.param_groups]
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def build_transforms(cfg: TrainConfig, ignore_label: int = 255):
    from ..data import transforms as T

    d = cfg.data
    if d.transforms == "none":
        return None
    if d.transforms == "synthetic":
        return T.synthetic_train_transforms(d.synthetic_size, tuple(d.scale), ignore_label)
    if d.transforms == "cityscapes":
        return T.cityscapes_train_transforms(tuple(d.crop_size), tuple(d.scale), ignore_label)
    return T.coco_train_transforms(tuple(d.min_sizes), d.max_size)


def _synthetic_config(cfg: TrainConfig):
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
    synthetic_cfg = _synthetic_config(cfg) if d.name == "synthetic" else None
    if d.name == "synthetic":
        return build_dataset(d.name, d.root, split, transforms, synthetic_cfg=synthetic_cfg)
    return build_dataset(d.name, d.root, split, transforms)


def build_model_from_config(cfg: TrainConfig, description):
    from ..model import build_model

    return build_model(cfg.model.preset, description, overrides=list(cfg.model.overrides))


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    out = dict(batch)
    out["images"] = batch["images"].to(device, non_blocking=non_blocking)
    for key in ("semantic", "instance_masks", "boxes", "labels", "crowd_mask"):
        if key in batch:
            out[key] = [t.to(device, non_blocking=non_blocking) for t in batch[key]]
    return out


class _Logger:
    """Rank-0 logging: running means of the loss parts, tqdm postfix, TensorBoard scalars."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, start: int, history: list[dict[str, float]] = ()):
        self.cfg, self.info = cfg, info
        self.history: list[dict[str, float]] = list(history) if info.is_main else []
        self.sums: dict[str, float] = {}
        self.count = 0
        self.t_last = time.perf_counter()
        self.step_last = start
        self.bar = None
        self.writer = None
        if info.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.schedule.max_steps, initial=start, desc="train", unit="step",
                            disable=not cfg.runtime.progress, dynamic_ncols=True)
            if cfg.runtime.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(log_dir=str(Path(cfg.runtime.output_dir) / "tb"))
                except ImportError as exc:  # tensorboard is optional
                    warnings.warn(f"runtime.tensorboard is set but TensorBoard cannot be imported ({exc})", stacklevel=2)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def flush(self, step: int, lr: float) -> dict[str, float] | None:
        if self.count == 0:
            return None
        keys = sorted(self.sums)
        means = torch.tensor([self.sums[k] / self.count for k in keys])
        means = all_reduce_tensor_mean(means, self.info).tolist()  # every rank takes part
        record = {"step": step, "lr": lr, **dict(zip(keys, means))}
        now = time.perf_counter()
        steps = step - self.step_last
        record["sec_per_step"] = (now - self.t_last) / max(steps, 1)
        record["images_per_sec"] = steps * self.cfg.runtime.batch_size * self.info.world_size / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        self.sums, self.count = {}, 0
        if self.info.is_main:
            self.history.append(record)
            if self.bar is not None:
                post = {k: f"{record[k]:.3f}" for k in ("total",) + LOSS_NAMES if k in record}
                post["img/s"] = f"{record['images_per_sec']:.1f}"
                self.bar.set_postfix(post, refresh=False)
            if self.writer is not None:
                for k, v in record.items():
                    if k != "step":
                        self.writer.add_scalar(f"train/{k}", v, step)
        return record

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.info.is_main:
            self.history.append({"step": step, **{f"eval/{k}": float(v) for k, v in metrics.items()}})
            if self.writer is not None:
                for k, v in metrics.items():
                    self.writer.add_scalar(f"eval/{k}", float(v), step)
            if self.bar is not None:
                self.bar.write(f"step {step}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items()))

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _check_finite(parts: dict[str, torch.Tensor], total: torch.Tensor, step: int, info: DistInfo) -> None:
    names = list(LOSS_NAMES) + ["total"]
    values = torch.stack([parts[n].detach().float() for n in LOSS_NAMES] + [total.detach().float()])
    bad = ~torch.isfinite(values)
    if info.distributed:  # every rank must stop at the same step, before any gradient exchange
        flags = all_reduce_tensor_mean(bad.to(torch.float64), info) > 0
    else:
        flags = bad
    if bool(flags.any()):
        culprits = [n for n, f in zip(names, flags.tolist()) if f and n != "total"] or ["total"]
        local = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values.tolist()))
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {', '.join(culprits)} (this rank: {local}); training "
            f"stopped before the update, checkpoints hold the last finite state"
        )


def train(
    cfg: TrainConfig,
    *,
    model: torch.nn.Module | None = None,
    train_set=None,
    evaluator: Evaluator | None = None,
) -> TrainResult:
    """Train the panoptic network described by ``cfg`` (see :mod:`rtpanoptic.engine.config`).

    Args:
        cfg: a :class:`TrainConfig` (e.g. ``train_preset("synthetic")`` with overrides).
        model: a network to train instead of ``build_model(cfg.model...)`` (it must return
            :class:`~rtpanoptic.model.HeadOutputs` and have ``normalize``, ``strides``,
            ``levelness_stride``, ``semantic_stride``).
        train_set: a dataset of CONTRACT.md samples (with ``.description``) instead of
            ``cfg.data``'s.
        evaluator: ``evaluator(model, step) -> {name: value}``, run on rank 0 every
            ``runtime.eval_every`` steps and after the last step.  None with ``eval_every > 0``:
            :class:`~rtpanoptic.engine.evaluate.PanopticEvaluator` on ``cfg.data.val_split``
            (``runtime.eval_max_images`` images).

    Resumes from ``runtime.resume`` ("auto": ``output_dir/last.pt``): weights, optimiser, RNG
    states and the log history; temporaries of saves killed mid-write are removed first.  Raises
    :class:`NonFiniteLossError` (naming the loss part and step) if a loss becomes NaN/inf and
    :class:`~rtpanoptic.engine.checkpoint.CheckpointError` (one line) for a checkpoint that cannot
    be read, fitted or written.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train: cfg must be a TrainConfig, got {type(cfg).__name__}")
    validate_train_config(cfg)
    r = cfg.runtime
    info = init_distributed(r.device, r.dist_backend)
    logger = None
    threads_before = torch.get_num_threads()
    try:
        if r.threads is not None and info.device.type == "cpu":
            torch.set_num_threads(int(r.threads))
        torch.manual_seed(r.seed)  # same initial weights on every rank (DDP also broadcasts them)
        out_dir = Path(r.output_dir)

        if train_set is None:
            if info.is_main:  # rank 0 generates / indexes the data first
                train_set = build_dataset_from_config(cfg, cfg.data.train_split)
            barrier(info)
            if not info.is_main:
                train_set = build_dataset_from_config(cfg, cfg.data.train_split)
        description = train_set.description
        if model is None:
            model = build_model_from_config(cfg, description)
            if info.is_main:
                from ..weights import warn_frozen_random_layers

                warn_frozen_random_layers(model.cfg.backbone)
        model.to(info.device)
        channels_last = r.channels_last and info.device.type == "cuda"
        if channels_last:
            model.to(memory_format=torch.channels_last)
        amp_dtype = resolve_amp(r.amp, info.device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

        optimizer = build_optimizer(model, cfg, info.world_size)
        scheduler = build_scheduler(optimizer, cfg)
        start = 0
        history: list[dict[str, float]] = []  # the log records of the steps before a resume
        if info.is_main:
            remove_stale_temporaries(out_dir)  # of saves killed mid-write
        resume_path = find_resume(r.resume, out_dir)
        if resume_path is not None:
            state = load_checkpoint(resume_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler, map_location=info.device)
            start = int(state["step"])
            history = [h for h in (state.get("extra") or {}).get("history", []) if h.get("step", 0) <= start]
            _reapply_schedule(optimizer, scheduler, cfg, info.world_size)
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out_dir / "config.yaml")

        net = model
        if info.distributed and r.sync_bn and info.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = model
        if info.distributed:
            ddp_kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
            net = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

        criterion = PanopticCriterion(
            cfg.loss, model.strides, model.levelness_stride, model.semantic_stride,
            description.ignore_label, reduce_mean=partial(all_reduce_mean, info=info) if info.distributed else None,
        )
        from ..data import collate

        sampler = StepSampler(train_set, info.rank, info.world_size, seed=r.seed, start=start * r.batch_size)
        loader = torch.utils.data.DataLoader(
            SeededDataset(train_set), batch_size=r.batch_size, sampler=sampler,
            collate_fn=partial(collate, ignore_label=description.ignore_label),
            num_workers=cfg.data.num_workers, pin_memory=info.device.type == "cuda",
        )
        batches = iter(loader)

        if evaluator is None and r.eval_every > 0 and info.is_main:
            from .evaluate import PanopticEvaluator

            val_set = build_dataset_from_config(cfg, cfg.data.val_split, train=False)
            evaluator = PanopticEvaluator(val_set, max_images=r.eval_max_images, batch_size=r.batch_size)
        # every rank must agree on whether evaluation (and its barrier) happens
        any_evaluator = all_reduce_mean(float(evaluator is not None), info) > 0
        logger = _Logger(cfg, info, start, history)
        metrics: dict[str, float] = {}
        last_ckpt: Path | None = None
        t0 = time.perf_counter()
        net.train()
        for step in range(start + 1, cfg.schedule.max_steps + 1):
            batch = _to_device(next(batches), info.device)
            images = unwrap(net).normalize(batch["images"])
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            autocast = (torch.autocast(info.device.type, dtype=amp_dtype) if amp_dtype is not None
                        else contextlib.nullcontext())
            with autocast:
                outputs = net(images)
            total, parts = criterion(outputs, batch)  # float32 (the criterion upcasts)
            _check_finite(parts, total, step, info)

            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
            else:
                total.backward()
            if cfg.optim.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()

            logger.add({"total": float(total.detach()), **{n: float(parts[n].detach()) for n in LOSS_NAMES},
                        "num_fg": parts["num_fg"], "num_queries": parts["num_queries"]})
            logger.update()
            last = step == cfg.schedule.max_steps
            if r.time_limit_s is not None and not last:
                over = float(time.perf_counter() - t0 > r.time_limit_s)
                last = all_reduce_mean(over, info) > 0  # every rank stops at the same step
                if last and info.is_main and logger.bar is not None:
                    logger.bar.write(f"runtime.time_limit_s={r.time_limit_s} reached: stopping after step {step}")
            if step % r.log_every == 0 or last:
                logger.flush(step, lr)
            if last:
                broadcast_buffers(model, info)  # identical replicas at the end (BN statistics)
            if step % r.checkpoint_every == 0 or last:
                if info.is_main:
                    extra = {"history": logger.history}
                    last_ckpt = save_checkpoint(out_dir / LAST, model=model, optimizer=optimizer,
                                                scheduler=scheduler, scaler=scaler, step=step,
                                                config=to_dict(cfg), extra=extra)
                    if r.keep_checkpoints:
                        save_checkpoint(out_dir / f"step_{step:07d}.pt", model=model, optimizer=optimizer,
                                        scheduler=scheduler, scaler=scaler, step=step, config=to_dict(cfg),
                                        extra=extra)
                barrier(info)
            run_eval = (r.eval_every and step % r.eval_every == 0) or last
            if run_eval and any_evaluator:
                if info.is_main and evaluator is not None:
                    model.eval()
                    with torch.no_grad():
                        metrics = dict(evaluator(model, step))
                    model.train()
                    logger.metrics(step, metrics)
                barrier(info)
            if last:
                break
        else:
            step = start
        seconds = time.perf_counter() - t0
        if last_ckpt is None and info.is_main and (out_dir / LAST).is_file():
            last_ckpt = out_dir / LAST
        return TrainResult(model=model, step=step, history=logger.history,
                           metrics=metrics, checkpoint=last_ckpt, seconds=seconds)
    finally:
        if logger is not None:
            logger.close()
        torch.set_num_threads(threads_before)
        cleanup(info)
