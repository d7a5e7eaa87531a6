"""Human-readable results: the metrics table and the demo figure (loss curve, per-class PQ)."""
from __future__ import annotations

import math
from pathlib import Path

METRIC_ROWS = (
    ("PQ", "PQ", "PQ_th", "PQ_st"),
    ("SQ", "SQ", "SQ_th", "SQ_st"),
    ("RQ", "RQ", "RQ_th", "RQ_st"),
)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "  n/a"
    return f"{float(v):5.1f}"


def format_table(metrics: dict, title: str | None = None) -> str:
    """A plain-text table of PQ/SQ/RQ (all, things, stuff), mIoU, mask AP and per-class PQ."""
    lines = []
    if title:
        lines.append(title)
    lines.append("          all  things  stuff")
    for name, a, t, s in METRIC_ROWS:
        lines.append(f"  {name:4s}  {_fmt(metrics.get(a))}   {_fmt(metrics.get(t))}  {_fmt(metrics.get(s))}")
    lines.append(f"  mIoU  {_fmt(metrics.get('mIoU'))}")
    lines.append(f"  AP    {_fmt(metrics.get('AP'))}   (mask AP@[.5:.95]; AP50 {_fmt(metrics.get('AP50')).strip()})")
    per = metrics.get("per_class_pq") or {}
    if per:
        lines.append("  per-class PQ: " + ", ".join(f"{k} {_fmt(v).strip()}" for k, v in per.items()))
    if "images" in metrics:
        lines.append(f"  on {metrics['images']} images, {_fmt(metrics.get('inference_ms_per_image')).strip()} ms/image inference")
    return "\n".join(lines)


def write_figure(history: list[dict], metrics: dict, path: str | Path) -> Path:
    """Two panels: the training loss parts against the step, and per-class PQ (bar chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_pq) = plt.subplots(1, 2, figsize=(11, 4))
    records = [r for r in history if "total" in r]
    if records:
        steps = [r["step"] for r in records]
        for key in ("total", "box_reg", "centerness", "box_cls", "levelness", "semantic", "mask"):
            if key in records[0]:
                ax_loss.plot(steps, [r[key] for r in records], label=key, lw=2 if key == "total" else 1)
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=7)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss")
    per = metrics.get("per_class_pq") or {}
    names = list(per)
    ax_pq.bar(names, [per[n] for n in names], color="tab:blue")
    ax_pq.set_ylim(0, 100)
    ax_pq.set_ylabel("PQ")
    ax_pq.set_title(f"per-class PQ (all {metrics.get('PQ', float('nan')):.1f})")
    ax_pq.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    from .safe_io import replacing

    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
