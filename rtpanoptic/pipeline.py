"""Building blocks of the command line: config and model loading, dataset evaluation, prediction.

:class:`UsageError` is what a user can fix (a missing folder, a checkpoint of another
architecture, CUDA without a GPU, an unknown preset); the CLI prints it as one line and exits 2.

- :func:`train_config` -> a :class:`~rtpanoptic.engine.TrainConfig` from a preset, a YAML file and
  ``key.sub=value`` overrides;
- :func:`load_model` -> the network of a weights file (training checkpoint, state dict, released file);
- :func:`evaluate_model` -> PQ / SQ / RQ (from COCO-panoptic files written next to the
  ground truth), mIoU and mask AP of a model on a dataset, with overlays;
- :func:`predict_images` -> panoptic PNG + JSON and overlays for image files.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .usage import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------------- config
def train_config(preset: str, config_path: str | None = None, overrides: Sequence[str] = ()):
    """``engine.make_config`` with the user-facing errors turned into :class:`UsageError`."""
    from .config import ConfigError
    from .engine import TRAIN_PRESETS, make_config

    if preset not in TRAIN_PRESETS:
        raise UsageError(f"unknown preset {preset!r}; known presets: {', '.join(sorted(TRAIN_PRESETS))}")
    if config_path is not None and not Path(config_path).is_file():
        raise UsageError(f"config file {config_path} does not exist")
    try:
        return make_config(preset, config_path, list(overrides))
    except ConfigError as exc:
        raise UsageError(f"bad config: {exc}") from None
    except ValueError as exc:  # validate_train_config
        raise UsageError(str(exc)) from None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when a GPU is visible, else cpu; ``"cuda"`` without a GPU is a UsageError."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported; use auto, cpu or cuda")
    return dev


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise UsageError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_backend(backend: str | None, device: torch.device) -> None:
    from . import ops
    from .inference import PIPELINE_OPS

    if backend is None:
        return
    if backend not in ops.BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; known: {', '.join(ops.BACKENDS)}")
    avail = ops.available_backends(device.type)
    missing = [op for op in PIPELINE_OPS if backend not in avail[op]]
    if missing:
        raise UsageError(f"backend {backend!r} cannot run {', '.join(missing)} on {device.type} here "
                         f"(see rtpanoptic.ops.available_backends()); leave --backend out for the fastest")


def check_data_root(cfg) -> None:
    """The dataset folder of ``cfg.data`` must exist (the synthetic set is generated on demand)."""
    d = cfg.data
    if d.name != "synthetic" and not Path(d.root).is_dir():
        raise UsageError(f"dataset folder {d.root} (data.root, dataset {d.name!r}) does not exist; "
                         f"set data.root=PATH to where the dataset lies")


def build_dataset(cfg, split: str, train: bool = False, progress: bool = True):
    """The (un-augmented unless ``train``) dataset of ``cfg.data`` for ``split``; UsageError if missing.
    The synthetic set is generated first when needed (with a progress bar if ``progress``)."""
    from .data import DatasetError, generate_synthetic
    from .engine.trainer import _synthetic_config, build_dataset_from_config

    check_data_root(cfg)
    try:
        if cfg.data.name == "synthetic":
            generate_synthetic(cfg.data.root, _synthetic_config(cfg), progress=progress)
        return build_dataset_from_config(cfg, split, train=train)
    except (DatasetError, FileNotFoundError) as exc:
        raise UsageError(f"cannot open dataset {cfg.data.name!r} split {split!r}: {exc}") from None


# ----------------------------------------------------------------------------------- models
def checkpoint_config(state: dict, path: str):
    """The TrainConfig saved in a checkpoint."""
    from .config import ConfigError, from_dict
    from .engine import TrainConfig

    if not isinstance(state.get("config"), dict):
        raise UsageError(f"{path} holds no training config; name its network with --model NAME (e.g. "
                         f"tri-cityscapes-r50) or --preset / --config")
    try:
        return from_dict(TrainConfig, state["config"], where=f"{path} config")
    except ConfigError as exc:
        raise UsageError(f"{path}: cannot read its training config ({exc})") from None


def build_network(cfg, description=None):
    from .data import get_description
    from .engine.trainer import build_model_from_config

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
    from .weights import WeightsError, load_weights, read_weights

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


# ----------------------------------------------------------------------------------- evaluation
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


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
) -> dict:
    """Predict every image of ``dataset`` (CONTRACT.md samples, un-augmented) and score it.

    Writes under ``out_dir``: ``predictions/<stem>.png`` + ``predictions.json`` (COCO panoptic),
    ``gt.json`` (the ground truth of the evaluated images), ``overlays/<stem>.png`` (the first
    ``num_overlays``) and ``metrics.json``.  PQ / SQ / RQ are computed by
    :func:`rtpanoptic.evaluation.pq_compute` from those files; mIoU from the semantic maps;
    mask AP (pycocotools) from the thing segments of the panoptic output, scored by their
    query score (NaN, with a warning, when pycocotools is not installed).  ``predictor_options``:
    Predictor keyword arguments (``precision``, ``channels_last``, ``compile``).  Returns the metrics (percent).

    In an initialised process group (``torchrun``; :mod:`rtpanoptic.evaluation.sharded`) each rank
    predicts its share of the images and rank 0 writes every file and computes the metrics, equal
    to one process's; every rank returns them.
    """
    from tqdm import tqdm

    from .evaluation import InstanceAPEvaluator, SemanticEvaluator, has_pycocotools, pq_compute
    from .evaluation.sharded import Shard
    from .inference import Predictor
    from .viz import write_coco_panoptic, write_coco_panoptic_json, write_overlay

    out = Path(out_dir)
    pred_dir = out / "predictions"
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
    t0 = time.perf_counter()
    infer_s = 0.0
    shard = Shard.current()  # under torchrun: this rank's images, its files staged, gathered on rank 0
    indices = shard.indices(n)
    bar = tqdm(total=len(indices), desc="evaluate", unit="img", disable=not progress)
    with shard.output_dir(out) as staging:
        with shard.guard("evaluation"):
            for start in range(0, len(indices), batch_size):
                batch = indices[start:start + batch_size]
                samples = [dataset[i] for i in batch]
                t1 = time.perf_counter()
                results = predictor([s["image"] for s in samples])
                infer_s += time.perf_counter() - t1
                for index, sample, result in zip(batch, samples, results):
                    image_id = sample["image_id"]
                    stem = Path(str(sample.get("file_name") or image_id)).stem
                    records.append({"index": index, "image_id": image_id, "annotation": write_coco_panoptic(
                        result, staging / "predictions" / f"{stem}.png", image_id=image_id)})
                    if index < num_overlays:
                        write_overlay(sample["image"].permute(1, 2, 0).numpy(), result,
                                      staging / "overlays" / f"{stem}.png")
                    sem_eval.update(result.semantic, sample["semantic"])
                    if ap_eval is not None:
                        things = result.thing_segments
                        crowd_masks, crowd_labels = _crowd_instances(sample, description)
                        ap_eval.update(
                            sample["instance_masks"], sample["labels"], result.instance_masks,
                            [thing_index[s["train_id"]] for s in things], [s["score"] for s in things],
                            crowd_masks, crowd_labels,
                        )
                bar.update(len(samples))
            bar.close()
        records = shard.gather(staging, out, records, sem_eval, ap_eval)
    if not shard.is_main:
        return shard.share(None)
    annotations, image_ids = [r["annotation"] for r in records], [r["image_id"] for r in records]
    pred_json = out / "predictions.json"
    write_coco_panoptic_json(annotations, description, pred_json)
    gt_json = write_subset_gt(dataset, image_ids, out / "gt.json")
    pq = pq_compute(gt_json, pred_json, gt_folder=dataset.panoptic_root, pred_folder=pred_dir,
                    workers=0, progress=False)
    sem = sem_eval.compute()
    ap = ap_eval.compute() if ap_eval is not None and ap_eval.gt else {"AP": float("nan"), "AP50": float("nan"), "per_class": {}}
    metrics = {"images": n}
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            metrics[f"{key.upper()}{suffix}"] = 100.0 * float(pq[group][key])
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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return shard.share(metrics)


# ----------------------------------------------------------------------------------- prediction
def list_images(inputs: Sequence[str]) -> list[Path]:
    """Image files of ``inputs`` (files, or folders scanned for image suffixes, sorted); a file
    reached twice (given twice, or given and inside a given folder) is listed once."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"folder {p} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"input {p} does not exist")
    if not files:
        raise UsageError("no input image given")
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def output_names(files: Sequence[Path]) -> list[str]:
    """Distinct names (image ids, output stems) for ``files``: the stem; ``<stem>_<suffix>`` for
    files sharing a stem (``img.png``, ``img.jpg`` -> ``img_png``, ``img_jpg``); then ``_2``,
    ``_3``... for names still taken (same file name in two folders)."""
    from collections import Counter

    stems = Counter(p.stem for p in files)
    wanted = [p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in files]
    reserved = set(wanted)
    names: list[str] = []
    used: set[str] = set()
    for name in wanted:
        candidate, k = name, 1
        while candidate in used or (candidate != name and candidate in reserved):
            k += 1
            candidate = f"{name}_{k}"
        names.append(candidate)
        used.add(candidate)
    return names


def predict_images(model, inputs: Sequence[str], out_dir: str | os.PathLike, backend: str | None = None,
                   overlays: bool = True, progress: bool = True, predictor_options: dict | None = None) -> dict:
    """Panoptic segmentation of image files: ``out_dir/panoptic/<name>.png`` + ``panoptic.json``
    (COCO panoptic, the model's dataset category ids) and ``out_dir/overlays/<name>.png``, with
    ``<name>`` from :func:`output_names` (distinct for every input, also the image id).
    ``predictor_options``: Predictor keyword arguments (``precision``, ``channels_last``, ``compile``)."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    from .inference import Predictor
    from .viz import write_coco_panoptic, write_coco_panoptic_json, write_overlay

    files = list_images(inputs)
    names = output_names(files)
    out = Path(out_dir)
    predictor = Predictor(model, backend=backend, **(predictor_options or {}))
    annotations, images = [], []
    seconds = 0.0
    for path, name in tqdm(list(zip(files, names)), desc="predict", unit="img", disable=not progress):
        try:
            with Image.open(path) as im:
                image = np.array(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise UsageError(f"cannot read image {path} ({type(exc).__name__})") from None
        t0 = time.perf_counter()
        result = predictor(image)[0]
        seconds += time.perf_counter() - t0
        annotations.append(write_coco_panoptic(result, out / "panoptic" / f"{name}.png", image_id=name))
        images.append({"id": name, "file_name": path.name, "height": image.shape[0], "width": image.shape[1]})
        if overlays:
            write_overlay(image, result, out / "overlays" / f"{name}.png")
    write_coco_panoptic_json(annotations, model.description, out / "panoptic.json", images=images)
    return {"images": len(files), "ms_per_image": 1e3 * seconds / len(files), "output_dir": str(out)}
