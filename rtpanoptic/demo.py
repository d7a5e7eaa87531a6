"""The built-in demo (``rtpanoptic demo`` / ``make demo``): from nothing to an evaluated model.

1. generate the synthetic panoptic dataset (:mod:`rtpanoptic.data.synthetic`) under ``<out>/data``;
2. train the ``synthetic`` preset's small network on it (:func:`rtpanoptic.engine.train`; CPU, or
   the GPU when one is visible) into ``<out>/train``;
3. evaluate on the held-out split (:func:`rtpanoptic.pipeline.evaluate_model`): PQ / SQ / RQ from
   COCO-panoptic files, mIoU, mask AP, overlays, into ``<out>/eval``;
4. write ``<out>/demo.png`` (loss curve, per-class PQ) and ``<out>/results.json``; print a table.

Default budget: <= 15 minutes on a 2-core CPU (the preset's 800 steps, capped by its 10-minute
training time limit).  ``quick=True``: a smoke run of about a minute (few images and steps; the PQ
it reaches is low and means only that every stage ran).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from .safe_io import check_outputs, locks_output, write_json

# Settings of ``--quick`` (applied before the user's overrides, which win).
QUICK_OVERRIDES = (
    "data.synthetic_num_train=128",
    "data.synthetic_num_val=20",
    "schedule.max_steps=150",
    "schedule.warmup_steps=20",
    "schedule.milestones=[120]",
    "runtime.time_limit_s=75",
    "runtime.checkpoint_every=1000",
)


def demo_overrides(output_dir: str | Path, quick: bool, device: str) -> list:
    out = Path(output_dir)
    base = [
        f"data.root={out / 'data'}",
        f"runtime.output_dir={out / 'train'}",
        "runtime.resume=null",  # the demo starts from nothing every time
        f"runtime.device={device}",
    ]
    return base + (list(QUICK_OVERRIDES) if quick else [])


@locks_output(lambda output_dir, **_: output_dir, "--output-dir")
def run_demo(
    output_dir: str | Path = "runs/demo",
    quick: bool = False,
    preset: str = "synthetic",
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    backend: str | None = None,
    device: str = "auto",
    num_overlays: int = 8,
    progress: bool = True,
    echo=print,
) -> dict:
    """Run the demo; returns ``results.json``'s content (metrics in percent, wall times in s)."""
    from .engine import train
    from .pipeline import build_dataset, check_backend, resolve_device, train_config
    from .report import format_table, write_figure

    t_start = time.perf_counter()
    out = Path(output_dir)
    check_outputs([(f"--output-dir's {name}", out / name) for name in ("train/config.yaml", "results.json", "demo.png")],
                  [("--config", config_path)])
    dev = resolve_device(device)
    cfg = train_config(preset, config_path, demo_overrides(out, quick, device) + list(overrides))
    resolve_device(cfg.runtime.device)  # an override may ask for cuda too
    check_backend(backend, dev)
    if not progress:
        cfg.runtime.progress = False
    echo(f"[demo] output: {out}  preset: {preset}{' (quick)' if quick else ''}  device: {dev.type}")

    t = time.perf_counter()
    train_set = build_dataset(cfg, cfg.data.train_split, train=True, progress=progress)
    val_set = build_dataset(cfg, cfg.data.val_split, train=False, progress=progress)
    data_s = time.perf_counter() - t
    echo(f"[demo] dataset: {len(train_set)} train / {len(val_set)} held-out images ({data_s:.1f} s)")

    t = time.perf_counter()
    result = train(cfg, train_set=train_set)
    train_s = time.perf_counter() - t
    echo(f"[demo] trained {result.step} steps in {train_s:.1f} s -> {result.checkpoint}")

    model = result.model.eval()
    t = time.perf_counter()
    from .pipeline import evaluate_model, torch_threads

    # the training's CPU thread count (1 in the synthetic preset: much faster on a loaded small CPU)
    with torch_threads(cfg.runtime.threads if dev.type == "cpu" else None):
        metrics = evaluate_model(model, val_set, out / "eval", backend=backend, num_overlays=num_overlays,
                                 progress=progress)
    eval_s = time.perf_counter() - t
    figure = write_figure(result.history, metrics, out / "demo.png")
    total_s = time.perf_counter() - t_start
    results = {
        "preset": preset,
        "quick": quick,
        "device": dev.type,
        "steps": result.step,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "seconds": {"data": data_s, "train": train_s, "evaluate": eval_s, "total": total_s},
        "metrics": metrics,
        "history": result.history,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "figure": str(figure),
    }
    write_json(out / "results.json", results, indent=2)
    echo(format_table(metrics, title=f"\nResults on the synthetic held-out split ({len(val_set)} images):"))
    echo(f"\nwall time: {total_s:.0f} s (data {data_s:.0f} s, training {train_s:.0f} s, evaluation {eval_s:.0f} s)")
    echo(f"wrote {out / 'results.json'}, {figure}, {out / 'eval'}/predictions.json + predictions/, overlays/")
    return results
