"""The training loop: ``rtpanoptic.engine.train(cfg)``.

One process or many under ``torchrun`` (DDP; NCCL on GPU, gloo on CPU).  Per step: a batch from
a resumable sampler, ``model.normalize``, the forward pass (autocast on GPU), the losses of
eq. 19 (:class:`rtpanoptic.losses.PanopticCriterion`, always in float32), a finiteness check of
every loss part (all ranks agree before anything is applied), backward, optional gradient
clipping, SGD step, scheduler step.  Rank 0 alone logs (tqdm, optional TensorBoard) and writes
checkpoints (atomically); evaluation is a pluggable callable.

The loop is a :class:`TrainerBase` (steps, stopping) whose :class:`Trainer` defines the step; each
other concern is a hook that reads alone (as detectron2's ``TrainerBase`` + hooks):
:class:`LoggingHook`, :class:`BufferSyncHook`, :class:`CheckpointHook`, :class:`EvalHook`, run in
that order after every step.  :func:`train` sets them up (data and model from
:mod:`rtpanoptic.engine.factories`).
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
from ..distributed import (
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
from ..losses import LOSS_NAMES, PanopticCriterion
from ..safe_io import locks_output
from .checkpoint import LAST, find_resume, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import TrainConfig, validate_train_config
from .factories import build_dataset_from_config, build_model_from_config

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


def scaled_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The base learning rate of ``cfg.optim`` for ``world_size`` processes (linear scaling if asked)."""
    o = cfg.optim
    return o.lr * (world_size / o.reference_world_size if o.scale_lr_with_world_size else 1.0)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, world_size: int = 1) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters; norms and biases without weight decay
    when ``optim.no_decay_norm_bias``."""
    o = cfg.optim
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
    return torch.optim.SGD(groups, lr=scaled_lr(cfg, world_size), momentum=o.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, world_size: int = 1,
                    step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + multi-step schedule of ``cfg`` after ``step`` steps: every group's lr set to
    ``scaled_lr * WarmupMultiStep(step)``.  The schedule follows the config alone, so a resumed run
    follows the config it is resumed with (a longer schedule, another lr) and the same config
    continues exactly."""
    s = cfg.schedule
    for group in optimizer.param_groups:
        group["initial_lr"] = scaled_lr(cfg, world_size)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupMultiStep(s.warmup_steps, s.warmup_factor, s.milestones, s.gamma), last_epoch=step - 1
    )


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


class HookBase:
    """One concern of the training loop, run by :class:`TrainerBase` around its steps (as
    detectron2's hooks): ``before_train``, ``after_step`` (``self.trainer.step`` is the step just
    done, ``self.trainer.last`` whether it is the last one), ``after_train`` (also after an error)."""

    trainer: TrainerBase

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class TrainerBase:
    """Runs ``run_step`` for steps ``start + 1 .. max_steps`` and its hooks around them; stops early
    when :meth:`stop_now` says so.  Subclasses define the step."""

    def __init__(self, hooks: list[HookBase] = ()):
        self.hooks: list[HookBase] = []
        self.step = 0
        self.last = False
        self.register_hooks(hooks)

    def register_hooks(self, hooks) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def run_step(self) -> None:
        raise NotImplementedError

    def stop_now(self) -> bool:
        """Whether to stop after the current step although steps are left."""
        return False

    def train(self, start: int, max_steps: int) -> int:
        """Run steps ``start + 1 .. max_steps``; returns the last step done (``start`` if none)."""
        self.step = start
        for h in self.hooks:
            h.before_train()
        try:
            for step in range(start + 1, max_steps + 1):
                self.step = step
                self.run_step()
                self.last = step == max_steps or self.stop_now()
                for h in self.hooks:
                    h.after_step()
                if self.last:
                    break
        finally:
            for h in self.hooks:
                h.after_train()
        return self.step


class LoggingHook(HookBase):
    """Rank-0 logging: running means of the loss parts every ``runtime.log_every`` steps (and after
    the last), tqdm postfix, TensorBoard scalars, the evaluation metrics; the history of records."""

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

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)

    def after_step(self) -> None:
        t = self.trainer
        self.add(t.log_values)
        if self.bar is not None:
            self.bar.update(1)
        if t.last and t.step < self.cfg.schedule.max_steps:
            self.write(f"runtime.time_limit_s={self.cfg.runtime.time_limit_s} reached: stopping after step {t.step}")
        if t.step % self.cfg.runtime.log_every == 0 or t.last:
            self.flush(t.step, t.lr)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class BufferSyncHook(HookBase):
    """After the last step: every replica takes rank 0's buffers (BN statistics), so the model
    saved, evaluated and returned is the same on every rank."""

    def __init__(self, info: DistInfo):
        self.info = info

    def after_step(self) -> None:
        if self.trainer.last:
            broadcast_buffers(self.trainer.model, self.info)


class CheckpointHook(HookBase):
    """Every ``runtime.checkpoint_every`` steps and after the last: rank 0 writes ``last.pt`` (and
    ``step_<n>.pt`` with ``runtime.keep_checkpoints``) holding the model, optimiser, scheduler,
    scaler, config and the log history; every rank waits for it."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, out_dir: Path, history: Callable[[], list]):
        self.cfg, self.info, self.out_dir, self.history = cfg, info, out_dir, history
        self.written: Path | None = None

    def after_step(self) -> None:
        t, r = self.trainer, self.cfg.runtime
        if t.step % r.checkpoint_every and not t.last:
            return
        if self.info.is_main:
            state = dict(model=t.model, optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler,
                         step=t.step, config=to_dict(self.cfg), extra={"history": self.history()})
            self.written = save_checkpoint(self.out_dir / LAST, **state)
            if r.keep_checkpoints:
                save_checkpoint(self.out_dir / f"step_{t.step:07d}.pt", **state)
        barrier(self.info)


class EvalHook(HookBase):
    """Every ``runtime.eval_every`` steps and after the last: rank 0 runs ``evaluator(model, step)``
    on the unwrapped model in eval mode (``on_metrics`` gets the result); every rank waits for it.
    ``enabled``: whether any rank has an evaluator (all ranks agree, so all reach the barrier)."""

    def __init__(self, evaluator: Evaluator | None, every: int, info: DistInfo, enabled: bool,
                 on_metrics: Callable[[int, dict[str, float]], None]):
        self.evaluator, self.every, self.info, self.enabled = evaluator, every, info, enabled
        self.on_metrics = on_metrics
        self.metrics: dict[str, float] = {}

    def after_step(self) -> None:
        t = self.trainer
        if not self.enabled or not ((self.every and t.step % self.every == 0) or t.last):
            return
        if self.info.is_main and self.evaluator is not None:
            t.model.eval()
            with torch.no_grad():
                self.metrics = dict(self.evaluator(t.model, t.step))
            t.model.train()
            self.on_metrics(t.step, self.metrics)
        barrier(self.info)



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


class NonFiniteWeightsError(NonFiniteLossError):
    """The optimiser step made a weight NaN or infinite (a learning rate far too large); training
    stopped before that state could be checkpointed."""


def _check_finite_weights(model: torch.nn.Module, step: int, lr: float) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first non-finite parameter or buffer.  Every
    rank holds the same weights after a synchronised step, so every rank raises at the same step."""
    tensors = [(n, t) for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
    if bool(finite.all()):
        return
    bad = [n for (n, _), ok in zip(tensors, finite.tolist()) if not ok]
    raise NonFiniteWeightsError(
        f"non-finite weights after the optimiser step at step {step}: {len(bad)} of {len(tensors)} tensors "
        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) at lr {lr:.3g}; lower optim.lr (or set "
        f"optim.clip_grad_norm); not checkpointed, checkpoints hold the last finite state"
    )


class Trainer(TrainerBase):
    """The step of :func:`train`: a batch, ``normalize``, the forward pass (autocast), the losses
    (float32), a finiteness check every rank agrees on, backward, optional clipping, the optimiser
    and scheduler steps; the last step's lr and loss values are kept for the hooks.  After the last
    step the replicas' buffers are made identical (BN statistics)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, net, model, criterion, optimizer, scheduler, scaler,
                 batches, hooks: list[HookBase] = ()):
        super().__init__(hooks)
        self.cfg, self.info = cfg, info
        self.net, self.model, self.criterion = net, model, criterion
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.batches = batches
        self.amp_dtype = resolve_amp(cfg.runtime.amp, info.device)
        self.channels_last = cfg.runtime.channels_last and info.device.type == "cuda"
        self.lr = 0.0
        self.log_values: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def run_step(self) -> None:
        batch = _to_device(next(self.batches), self.info.device)
        images = unwrap(self.net).normalize(batch["images"])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.info.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            outputs = self.net(images)
        total, parts = self.criterion(outputs, batch)  # float32 (the criterion upcasts)
        _check_finite(parts, total, self.step, self.info)

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if self.cfg.optim.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr = self.optimizer.param_groups[0]["lr"]
        _check_finite_weights(self.model, self.step, self.lr)  # before any hook could save them
        self.scheduler.step()
        self.log_values = {"total": float(total.detach()), **{n: float(parts[n].detach()) for n in LOSS_NAMES},
                           "num_fg": parts["num_fg"], "num_queries": parts["num_queries"]}

    def stop_now(self) -> bool:
        limit = self.cfg.runtime.time_limit_s
        if limit is None:
            return False
        over = float(time.perf_counter() - self.t0 > limit)
        return all_reduce_mean(over, self.info) > 0  # every rank stops at the same step

    def train(self, start: int, max_steps: int) -> int:
        self.t0 = time.perf_counter()
        return super().train(start, max_steps)


@locks_output(lambda cfg, **_: cfg.runtime.output_dir if isinstance(cfg, TrainConfig) else None, "runtime.output_dir")
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
        train_set: sample dicts (:mod:`rtpanoptic.data.coco_panoptic`, with ``.description``) instead of
            ``cfg.data``'s.
        evaluator: ``evaluator(model, step) -> {name: value}``, run on rank 0 every
            ``runtime.eval_every`` steps and after the last step.  None with ``eval_every > 0``:
            :class:`~rtpanoptic.engine.evaluate.PanopticEvaluator` on ``cfg.data.val_split``
            (``runtime.eval_max_images`` images).

    Resumes from ``runtime.resume`` ("auto": ``output_dir/last.pt``): weights, optimiser, RNG
    states and the log history; temporaries of saves killed mid-write are removed first.  Raises
    :class:`NonFiniteLossError` (naming the loss part and step) if a loss becomes NaN/inf and
    :class:`~rtpanoptic.engine.checkpoint.CheckpointError` (one line) for a checkpoint that cannot
    be read, fitted or written.  The output folder is held for the whole run
    (:func:`rtpanoptic.safe_io.output_lock`, rank 0): a second run into it is a one-line
    :class:`~rtpanoptic.usage.UsageError` naming the first run's pid, raised before anything there is touched.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train: cfg must be a TrainConfig, got {type(cfg).__name__}")
    validate_train_config(cfg)
    r = cfg.runtime
    info = init_distributed(r.device, r.dist_backend)
    threads_before = torch.get_num_threads()
    try:
        if r.threads is not None and info.device.type == "cpu":
            torch.set_num_threads(int(r.threads))
        torch.manual_seed(r.seed)  # same initial weights on every rank (DDP also broadcasts them)
        out_dir = Path(r.output_dir)
        if train_set is None:
            train_set = _on_main_first(info, lambda: build_dataset_from_config(cfg, cfg.data.train_split))
        description = train_set.description
        if model is None:
            model = build_model_from_config(cfg, description)
            if info.is_main:
                from ..weights import warn_frozen_random_layers

                warn_frozen_random_layers(model.cfg.backbone)
        model.to(info.device)
        if r.channels_last and info.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        scaler = torch.amp.GradScaler("cuda") if resolve_amp(r.amp, info.device) == torch.float16 else None
        optimizer = build_optimizer(model, cfg, info.world_size)
        start, history = _resume(cfg, info, out_dir, model, optimizer, scaler)
        scheduler = build_scheduler(optimizer, cfg, info.world_size, step=start)
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out_dir / "config.yaml")
        model, net = _parallel(model, info, r.sync_bn)
        criterion = PanopticCriterion(
            cfg.loss, model.strides, model.levelness_stride, model.semantic_stride,
            description.ignore_label, reduce_mean=partial(all_reduce_mean, info=info) if info.distributed else None,
        )
        batches = _batches(cfg, info, train_set, start)
        if evaluator is None and r.eval_every > 0 and info.is_main:
            from .evaluate import PanopticEvaluator

            val_set = build_dataset_from_config(cfg, cfg.data.val_split, train=False)
            evaluator = PanopticEvaluator(val_set, max_images=r.eval_max_images, batch_size=r.batch_size)
        # every rank must agree on whether evaluation (and its barrier) happens
        any_evaluator = all_reduce_mean(float(evaluator is not None), info) > 0

        logging = LoggingHook(cfg, info, start, history)
        checkpoints = CheckpointHook(cfg, info, out_dir, lambda: logging.history)
        evaluation = EvalHook(evaluator, r.eval_every, info, any_evaluator, logging.metrics)
        trainer = Trainer(cfg, info, net, model, criterion, optimizer, scheduler, scaler,
                          batches, hooks=[logging, BufferSyncHook(info), checkpoints, evaluation])
        net.train()
        step = trainer.train(start, cfg.schedule.max_steps)
        seconds = time.perf_counter() - trainer.t0
        last_ckpt = checkpoints.written
        if last_ckpt is None and info.is_main and (out_dir / LAST).is_file():
            last_ckpt = out_dir / LAST
        return TrainResult(model=model, step=step, history=logging.history,
                           metrics=evaluation.metrics, checkpoint=last_ckpt, seconds=seconds)
    finally:
        torch.set_num_threads(threads_before)
        cleanup(info)


def _on_main_first(info: DistInfo, make):
    """``make()`` on rank 0 first (it generates or indexes the data), then on the other ranks."""
    if info.is_main:
        made = make()
    barrier(info)
    if not info.is_main:
        made = make()
    return made


def _resume(cfg: TrainConfig, info: DistInfo, out_dir: Path, model, optimizer, scaler) -> tuple[int, list[dict]]:
    """Load ``runtime.resume`` ("auto": ``output_dir/last.pt``) into the model, optimiser, scaler and
    RNG states, after removing temporaries of saves killed mid-write; returns ``(steps done, the log
    history up to them)`` (``(0, [])`` when there is nothing to resume).  The schedule is rebuilt
    from the config (:func:`build_scheduler`), not loaded."""
    if info.is_main:
        remove_stale_temporaries(out_dir)
    path = find_resume(cfg.runtime.resume, out_dir)
    if path is None:
        return 0, []
    state = load_checkpoint(path, model=model, optimizer=optimizer, scaler=scaler, map_location=info.device)
    start = int(state["step"])
    return start, [h for h in (state.get("extra") or {}).get("history", []) if h.get("step", 0) <= start]


def _parallel(model, info: DistInfo, sync_bn: bool):
    """``(model, net)``: the model (SyncBatchNorm on multi-GPU with ``sync_bn``) and what runs it
    (DistributedDataParallel when distributed, else the model)."""
    if info.distributed and sync_bn and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not info.distributed:
        return model, model
    ddp_kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
    return model, torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def _batches(cfg: TrainConfig, info: DistInfo, train_set, start: int):
    """The batches of this rank from step ``start + 1`` on (a resumable sampler, seeded samples)."""
    from ..data import collate

    r = cfg.runtime
    sampler = StepSampler(train_set, info.rank, info.world_size, seed=r.seed, start=start * r.batch_size)
    loader = torch.utils.data.DataLoader(
        SeededDataset(train_set), batch_size=r.batch_size, sampler=sampler,
        collate_fn=partial(collate, ignore_label=train_set.description.ignore_label),
        num_workers=cfg.data.num_workers, pin_memory=info.device.type == "cuda",
    )
    return iter(loader)
