"""Evaluation of a model on a dataset: COCO-panoptic prediction files, PQ / SQ / RQ from them,
mIoU, mask AP, overlays and ``metrics.json``."""
from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..engine.evaluate import pq_metrics
from ..safe_io import begin_run, check_outputs, locks_output, write_json, write_text
from ..usage import UsageError
from .predict import output_names


def _thing_index(description) -> dict[int, int]:
    return {t: k for k, t in enumerate(description.thing_train_ids)}


def _crowd_instances(sample, description) -> tuple[np.ndarray, np.ndarray]:
    """Crowd regions of a sample as one mask per thing class present in them."""
    crowd = sample["crowd_mask"].numpy().astype(bool)
    h, w = crowd.shape
    if not crowd.any():
        return np.zeros((0, h, w), bool), np.zeros(0, np.int64)
    sem = sample["semantic"].numpy()
    masks, labels = [], []
    for k, t in enumerate(description.thing_train_ids):
        m = crowd & (sem == t)
        if m.any():
            masks.append(m)
            labels.append(k)
    if not masks:
        return np.zeros((0, h, w), bool), np.zeros(0, np.int64)
    return np.stack(masks), np.array(labels, np.int64)


def write_subset_gt(dataset, image_ids: Sequence, path: Path) -> Path:
    """A COCO-panoptic ground-truth JSON holding only ``image_ids`` of ``dataset``'s JSON."""
    with open(dataset.panoptic_json) as f:
        data = json.load(f)
    keep = set(image_ids)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    data["images"] = [im for im in data.get("images", []) if im["id"] in keep]
    write_text(path, json.dumps(data))
    return path


def dataset_files(dataset) -> list[tuple[str, str]]:
    """What an evaluation reads of ``dataset``, as ``(what, path)`` pairs for
    :func:`rtpanoptic.safe_io.check_outputs`: its image folder, annotation PNG folder and JSON."""
    return [("the dataset's images", getattr(dataset, "image_root", None)),
            ("the dataset's annotation PNGs", getattr(dataset, "panoptic_root", None)),
            ("the dataset's annotations", getattr(dataset, "panoptic_json", None))]


def evaluation_outputs(out_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """The files and folders :func:`evaluate_model` writes under ``out_dir``, as ``(what, path)``."""
    out = Path(out_dir)
    return [(f"--output-dir's {name}", out / name)
            for name in ("predictions", "overlays", "predictions.json", "gt.json", "metrics.json")]


@locks_output(lambda out_dir, **_: out_dir, "--output-dir")
def evaluate_model(
    model,
    dataset,
    out_dir: str | os.PathLike,
    backend: str | None = None,
    max_images: int | None = None,
    num_overlays: int = 8,
    batch_size: int = 8,
    progress: bool = True,
    predictor_options: dict | None = None,
    reads: Sequence[tuple[str, str]] = (),
) -> dict:
    """Predict every image of ``dataset`` (un-augmented sample dicts of :mod:`rtpanoptic.data.coco_panoptic`) and score it
    (the loop: :func:`rtpanoptic.engine.evaluate.predict_samples`).

    Writes under ``out_dir``: ``predictions/<name>.png`` + ``predictions.json`` (COCO panoptic),
    ``gt.json`` (the ground truth of the evaluated images), ``overlays/<name>.png`` (the first
    ``num_overlays``) and ``metrics.json``; ``<name>`` is the image file's from
    :func:`rtpanoptic.pipeline.predict.output_names`, as predict names its outputs.  PQ / SQ / RQ are computed by
    :func:`rtpanoptic.evaluation.pq_compute` from those files; mIoU from the semantic maps;
    mask AP (pycocotools) from the thing segments of the panoptic output, scored by their
    query score (NaN, with a warning, when pycocotools is not installed).  ``predictor_options``:
    Predictor keyword arguments (``precision``, ``channels_last``, ``compile``).  Returns the metrics (percent).

    In an initialised process group (``torchrun``; :mod:`rtpanoptic.evaluation.sharded`) each rank
    predicts its share of the images and rank 0 writes every file and computes the metrics, equal
    to one process's; every rank returns them.

    ``out_dir`` holds one run, as with :func:`rtpanoptic.pipeline.predict_images`: locked against
    other runs (rank 0); an output that is a file or folder of the dataset (or of ``reads``, e.g.
    ``[("--checkpoint", path)]``) is a :class:`UsageError` before any work; the previous run's
    recorded files are removed first (``metrics.json`` first); ``metrics.json`` is written last.
    """
    from ..engine.evaluate import predict_samples
    from ..evaluation import InstanceAPEvaluator, SemanticEvaluator, has_pycocotools
    from ..evaluation.sharded import Shard
    from ..inference import Predictor
    from ..viz import write_coco_panoptic, write_overlay

    out = Path(out_dir)
    pred_dir = out / "predictions"
    if Shard.current().is_main:
        check_outputs(evaluation_outputs(out), dataset_files(dataset) + list(reads))
        begin_run(out, keep=[p for _, p in dataset_files(dataset) if p is not None])
    description = dataset.description
    predictor = Predictor(model, backend=backend, **(predictor_options or {}))
    sem_eval = SemanticEvaluator(description.num_classes, description.ignore_label, list(description.class_names))
    ap_eval = None
    if has_pycocotools():
        ap_eval = InstanceAPEvaluator(description.num_things,
                                      [description.class_names[t] for t in description.thing_train_ids])
    else:
        warnings.warn("mask AP not computed: pycocotools is not installed (pip install pycocotools)",
                      RuntimeWarning, stacklevel=2)
    thing_index = _thing_index(description)
    if max_images is not None and max_images < 1:
        raise ValueError(f"evaluate_model: max_images must be >= 1 or None, got {max_images}")
    n = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    if n == 0:
        raise UsageError("the evaluation dataset is empty")
    records = []
    shard = Shard.current()  # under torchrun: this rank's images, its files staged, gathered on rank 0
    indices = shard.indices(n)

    # distinct file names for every image (two a/frame.png, b/frame.png), the same on every rank
    names = output_names([Path(dataset.image_path(i)) for i in range(n)])

    def write(index: int, sample: dict, result) -> None:
        image_id, name = sample["image_id"], names[index]
        records.append({"index": index, "image_id": image_id, "annotation": write_coco_panoptic(
            result, staging / "predictions" / f"{name}.png", image_id=image_id)})
        if index < num_overlays:
            write_overlay(sample["image"].permute(1, 2, 0).numpy(), result, staging / "overlays" / f"{name}.png")

    def semantic(index: int, sample: dict, result) -> None:
        sem_eval.update(result.semantic, sample["semantic"])

    def mask_ap(index: int, sample: dict, result) -> None:
        things = result.thing_segments
        crowd_masks, crowd_labels = _crowd_instances(sample, description)
        ap_eval.update(
            sample["instance_masks"], sample["labels"], result.instance_masks,
            [thing_index[s["train_id"]] for s in things], [s["score"] for s in things],
            crowd_masks, crowd_labels,
        )

    t0 = time.perf_counter()
    consumers = [write, semantic] + ([mask_ap] if ap_eval is not None else [])
    with shard.output_dir(out) as staging:
        with shard.guard("evaluation"):
            infer_s = predict_samples(predictor, dataset, indices, consumers, batch_size, progress)
        records = shard.gather(staging, out, records, sem_eval, ap_eval)
    if not shard.is_main:
        return shard.share(None)
    annotations, image_ids = [r["annotation"] for r in records], [r["image_id"] for r in records]
    pred_json = out / "predictions.json"
    from ..evaluation import pq_compute
    from ..viz import write_coco_panoptic_json

    write_coco_panoptic_json(annotations, description, pred_json)
    gt_json = write_subset_gt(dataset, image_ids, out / "gt.json")
    pq = pq_compute(gt_json, pred_json, gt_folder=dataset.panoptic_root, pred_folder=pred_dir,
                    workers=0, progress=False)
    sem = sem_eval.compute()
    ap = ap_eval.compute() if ap_eval is not None and ap_eval.gt else {"AP": float("nan"), "AP50": float("nan"), "per_class": {}}
    metrics = {"images": n, **pq_metrics(pq)}
    metrics["mIoU"] = 100.0 * float(sem["miou"])
    metrics["AP"] = 100.0 * float(ap["AP"])
    metrics["AP50"] = 100.0 * float(ap["AP50"])
    names = {c.id: c.name for c in description.categories}
    metrics["per_class_pq"] = {names[int(cid)]: 100.0 * float(v["pq"]) for cid, v in pq["per_class"].items()}
    metrics["per_class_iou"] = {name: 100.0 * float(v) for name, v in zip(description.class_names, sem["iou"])}
    metrics["inference_ms_per_image"] = 1e3 * infer_s / len(indices)
    metrics["eval_seconds"] = time.perf_counter() - t0
    metrics["files"] = {"predictions_json": str(pred_json), "predictions_dir": str(pred_dir), "gt_json": str(gt_json),
                        "gt_dir": str(dataset.panoptic_root)}
    write_json(out / "metrics.json", metrics, indent=2)
    return shard.share(metrics)
