"""Panoptic quality (PQ, SQ, RQ; Kirillov et al., paper eq. 20) with the rules of COCO's panopticapi.

Per image and category, a predicted and a ground-truth segment match when their IoU > 0.5, where
the union leaves out the prediction's pixels on void (id 0) ground truth. Unmatched non-crowd
ground-truth segments are false negatives. An unmatched prediction is a false positive unless more
than half of it lies on void or on the image's crowd region of its category (panopticapi keeps one
crowd region per category and image: the last in ``segments_info`` order). Crowd ground truth is
never matched. ``PQ_c = sum IoU(TP) / (|TP| + |FP|/2 + |FN|/2)``; averages run over the categories
with ``TP + FP + FN > 0``.

Differences to panopticapi, both only on broken inputs: segment areas are counted in the PNGs
rather than read from the JSON ``area`` fields, and a ground-truth PNG id absent from its
``segments_info`` raises instead of being ignored. Results are fractions (panopticapi prints x100).

:func:`pq_compute` evaluates files (same arguments and result dict as panopticapi's); the
:class:`PanopticQualityEvaluator` accumulates in memory for trainers and demos.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.description import DatasetDescription


class PQError(ValueError):
    """Inconsistent ground truth / prediction files."""


@dataclass
class PQStat:
    """Per-category sums: IoU of true positives, TP, FP, FN (arrays over category index)."""

    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> PQStat:
        return cls(np.zeros(n, np.float64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64))

    def __iadd__(self, other: PQStat) -> PQStat:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def average(self, select: np.ndarray) -> tuple[dict, dict[int, dict]]:
        """``({"pq", "sq", "rq", "n"}, {index: {"pq", "sq", "rq"}})`` over the selected categories."""
        per_class: dict[int, dict] = {}
        pq = sq = rq = 0.0
        n = 0
        for k in np.flatnonzero(select):
            tp, fp, fn = int(self.tp[k]), int(self.fp[k]), int(self.fn[k])
            if tp + fp + fn == 0:
                per_class[int(k)] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denom = tp + 0.5 * fp + 0.5 * fn
            c_pq = float(self.iou[k]) / denom
            c_sq = float(self.iou[k]) / tp if tp else 0.0
            c_rq = tp / denom
            per_class[int(k)] = {"pq": c_pq, "sq": c_sq, "rq": c_rq}
            pq, sq, rq = pq + c_pq, sq + c_sq, rq + c_rq
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def _check_segments(segments, where: str) -> None:
    """``segments_info`` must be a list of objects with ``id`` and ``category_id``."""
    if not isinstance(segments, (list, tuple)):
        raise PQError(f"{where}: 'segments_info' must be a list, got {type(segments).__name__}")
    for j, s in enumerate(segments):
        if not isinstance(s, Mapping):
            raise PQError(f"{where}: segments_info[{j}] is not an object")
        for key in ("id", "category_id"):
            if key not in s:
                raise PQError(f"{where}: segments_info[{j}] lacks {key!r}")


def _dense_index(ids: np.ndarray, seg_ids: np.ndarray, what: str) -> np.ndarray:
    """Map pixel segment ids to ``0`` (void) / ``1 + position in seg_ids``; unknown non-zero ids raise."""
    table = np.concatenate([[0], seg_ids]).astype(np.int64)
    order = np.argsort(table, kind="stable")
    sorted_ids = table[order]
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    found = sorted_ids[pos] == ids
    if not found.all():
        bad = np.unique(ids[~found])[:10].tolist()
        raise PQError(f"{what}: segment ids {bad} are in the PNG but not in segments_info")
    return order[pos]


def pq_image(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping],
    cat_index: Mapping[int, int],
    where: str = "image",
    require_pred_pixels: bool = True,
) -> PQStat:
    """PQ statistics of one image.

    Args:
        gt_ids, pred_ids: ``[H, W]`` integer segment-id maps (0 = void).
        gt_segments, pred_segments: ``segments_info`` lists (``id``, ``category_id``, gt ``iscrowd``).
        cat_index: category id -> index into the returned arrays.
        where: names the image in error messages.
        require_pred_pixels: a predicted segment without pixels raises (panopticapi); if False it is skipped.
    """
    gt_ids = np.asarray(gt_ids)
    pred_ids = np.asarray(pred_ids)
    if gt_ids.shape != pred_ids.shape or gt_ids.ndim != 2:
        raise PQError(f"{where}: ground truth {gt_ids.shape} and prediction {pred_ids.shape} must be same-size 2-D maps")
    n_cat = len(cat_index)
    stat = PQStat.zeros(n_cat)

    def parse(segments, side):
        _check_segments(segments, f"{where} ({side})")
        ids, cats, crowd = [], [], []
        for s in segments:
            cid = s["category_id"]
            if cid not in cat_index:
                raise PQError(f"{where}: {side} segment {s['id']} has unknown category id {cid!r}")
            ids.append(int(s["id"]))
            cats.append(cat_index[cid])
            crowd.append(bool(s.get("iscrowd", 0)))
        if len(set(ids)) != len(ids):
            raise PQError(f"{where}: duplicate {side} segment ids")
        if any(i == 0 for i in ids):
            raise PQError(f"{where}: {side} segment id 0 is reserved for void")
        return np.array(ids, np.int64), np.array(cats, np.int64), np.array(crowd, bool)

    g_ids, g_cat, g_crowd = parse(gt_segments, "ground-truth")
    p_ids, p_cat, _ = parse(pred_segments, "predicted")
    gi = _dense_index(gt_ids.astype(np.int64), g_ids, f"{where} (ground truth)")
    pi = _dense_index(pred_ids.astype(np.int64), p_ids, f"{where} (prediction)")
    ng, npred = len(g_ids) + 1, len(p_ids) + 1
    inter = np.bincount((gi * npred + pi).ravel(), minlength=ng * npred).reshape(ng, npred)
    gt_area = inter.sum(axis=1)[1:]
    pred_area = inter.sum(axis=0)[1:]
    present = pred_area > 0
    if not present.all() and require_pred_pixels:
        raise PQError(
            f"{where}: predicted segments {p_ids[~present][:10].tolist()} are in segments_info but not in the PNG"
        )
    I = inter[1:, 1:].astype(np.float64)  # [G, P]
    pred_void = inter[0, 1:]
    union = pred_area[None, :] + gt_area[:, None] - I - pred_void[None, :]
    valid = (g_cat[:, None] == p_cat[None, :]) & ~g_crowd[:, None] & (I > 0)
    iou = np.where(valid, I / np.maximum(union, 1), 0.0)
    match = valid & (iou > 0.5)
    g_matched = match.any(axis=1)
    p_matched = match.any(axis=0)
    mg, mp = np.nonzero(match)
    np.add.at(stat.tp, g_cat[mg], 1)
    np.add.at(stat.iou, g_cat[mg], iou[mg, mp])
    fn = ~g_matched & ~g_crowd
    np.add.at(stat.fn, g_cat[fn], 1)
    # One crowd region per category: the last one listed (panopticapi's dict overwrite).
    crowd_of_cat = np.full(n_cat, -1, np.int64)
    for g in np.flatnonzero(g_crowd):
        crowd_of_cat[g_cat[g]] = g
    unmatched = np.flatnonzero(~p_matched & present)
    if len(unmatched):
        ignored = pred_void[unmatched].astype(np.float64)
        cg = crowd_of_cat[p_cat[unmatched]]
        has = cg >= 0
        ignored[has] += I[cg[has], unmatched[has]]
        fp = unmatched[ignored / pred_area[unmatched] <= 0.5]
        np.add.at(stat.fp, p_cat[fp], 1)
    return stat


def _results(stat: PQStat, isthing: np.ndarray, cat_ids: Sequence[int]) -> dict:
    results = {}
    for name, sel in (("All", np.ones_like(isthing)), ("Things", isthing), ("Stuff", ~isthing)):
        avg, per = stat.average(sel)
        results[name] = avg
        if name == "All":
            results["per_class"] = {int(cat_ids[k]): v for k, v in per.items()}
    return results


class PanopticQualityEvaluator:
    """In-memory PQ accumulation.

    Args:
        categories: a :class:`DatasetDescription` or a COCO ``categories`` list.
        use_train_ids: segments' ``category_id`` are contiguous train ids (needs a description);
            e.g. :meth:`rtpanoptic.ops.PanopticSegments.segments_info` output.
    """

    def __init__(self, categories, use_train_ids: bool = False):
        if isinstance(categories, DatasetDescription):
            cats = [(c.id, c.isthing) for c in categories.categories]
            if use_train_ids:
                self.cat_index = {k: k for k in range(len(cats))}
            else:
                self.cat_index = {cid: k for k, (cid, _) in enumerate(cats)}
            self.cat_ids = [cid for cid, _ in cats] if not use_train_ids else list(range(len(cats)))
        else:
            if use_train_ids:
                raise TypeError("use_train_ids=True needs a DatasetDescription")
            cats = [(int(c["id"]), bool(c["isthing"])) for c in categories]
            self.cat_index = {cid: k for k, (cid, _) in enumerate(cats)}
            self.cat_ids = [cid for cid, _ in cats]
        self.isthing = np.array([t for _, t in cats], bool)
        self.stat = PQStat.zeros(len(cats))
        self.num_images = 0

    def reset(self) -> None:
        self.stat = PQStat.zeros(len(self.isthing))
        self.num_images = 0

    def update(self, gt_ids, gt_segments, pred_ids, pred_segments, image_id: str = "image") -> PQStat:
        """Add one image; predicted segments without pixels are skipped. Returns its statistics."""
        s = pq_image(
            _to_numpy(gt_ids), gt_segments, _to_numpy(pred_ids), pred_segments, self.cat_index,
            where=str(image_id), require_pred_pixels=False,
        )
        self.stat += s
        self.num_images += 1
        return s

    def compute(self) -> dict:
        """``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category id: {...}}}``."""
        return _results(self.stat, self.isthing, self.cat_ids)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def sample_to_panoptic(sample: Mapping, description: DatasetDescription) -> tuple[np.ndarray, list[dict]]:
    """Ground-truth ``(ids [H, W], segments_info)`` (train-id categories) rebuilt from a dataset sample.

    Stuff: one segment per stuff class present; crowd: one segment per thing class inside
    ``crowd_mask``; things: one segment per instance mask. Thing-class pixels outside every mask and
    crowd region, and ``ignore_label`` pixels, are void.
    """
    sem = _to_numpy(sample["semantic"]).astype(np.int64)
    masks = _to_numpy(sample["instance_masks"]).astype(bool)
    crowd = _to_numpy(sample["crowd_mask"]).astype(bool)
    labels = _to_numpy(sample["labels"]).astype(np.int64)
    thing_train = description.thing_train_ids
    ids = np.zeros(sem.shape, np.int64)
    segments: list[dict] = []
    covered = crowd | masks.any(axis=0) if len(masks) else crowd.copy()
    for c, cat in enumerate(description.categories):
        if cat.isthing:
            m = crowd & (sem == c)
            iscrowd = 1
        else:
            m = (sem == c) & ~covered
            iscrowd = 0
        if m.any():
            ids[m] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": c, "iscrowd": iscrowd})
    for m, k in zip(masks, labels):
        if m.any():
            ids[m] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": thing_train[int(k)], "iscrowd": 0})
    return ids, segments


# ---------------------------------------------------------------------------------------------
# File-based evaluation (panopticapi's pq_compute)


def _load_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise PQError(f"{path}: {what} JSON not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PQError(f"{path}: malformed {what} JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PQError(f"{path}: {what} JSON lacks an 'annotations' list")
    seen = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise PQError(f"{where} is not an object")
        if "image_id" not in ann:
            raise PQError(f"{where} lacks 'image_id'")
        image_id = ann["image_id"]
        if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
            raise PQError(f"{where}: image_id must be a string or an integer, got {image_id!r}")
        where += f" (image_id {image_id!r})"
        if image_id in seen:
            raise PQError(f"{where} repeats an image_id of an earlier annotation")
        seen.add(image_id)
        for key in ("file_name", "segments_info"):
            if key not in ann:
                raise PQError(f"{where} lacks {key!r}")
        if not isinstance(ann["file_name"], str):
            raise PQError(f"{where}: file_name must be a string, got {ann['file_name']!r}")
        _check_segments(ann["segments_info"], where)
    return data


def _read_ids(path: str) -> np.ndarray:
    from ..data.image_io import ImageError, read_panoptic_png

    if not os.path.isfile(path):
        raise PQError(f"{path}: PNG not found")
    try:
        return read_panoptic_png(path, max_pixels=None, what="PNG")
    except ImageError as exc:
        raise PQError(str(exc)) from None


def _pq_file_pair(args) -> PQStat:
    gt_ann, pred_ann, gt_folder, pred_folder, cat_index = args
    gt_path = os.path.join(gt_folder, gt_ann["file_name"])
    pred_path = os.path.join(pred_folder, pred_ann["file_name"])
    return pq_image(
        _read_ids(gt_path), gt_ann["segments_info"], _read_ids(pred_path), pred_ann["segments_info"],
        cat_index, where=f"image {gt_ann['image_id']!r} ({pred_path})",
    )


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str | None = None,
    pred_folder: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Panoptic quality of COCO-panoptic prediction files against ground-truth files.

    Same arguments as panopticapi (``gt_folder`` / ``pred_folder`` default to the JSON path
    without ``.json``), plus ``workers`` (processes; default ``os.cpu_count()``, 0 or 1 = in-process; results are summed in image order,
    so they do not depend on ``workers``)
    and ``progress`` (tqdm bar). Every ground-truth image needs a prediction; a malformed
    annotation raises :class:`PQError` naming the file and the entry, and so does a ground truth
    without annotations (PQ is undefined there). Returns
    ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category id: {"pq", "sq", "rq"}}}``.
    """
    gt_json_file, pred_json_file = str(gt_json_file), str(pred_json_file)
    gt = _load_json(gt_json_file, "ground-truth")
    pred = _load_json(pred_json_file, "prediction")
    if not gt["annotations"]:
        raise PQError(f"{gt_json_file}: the ground truth has no annotations, so PQ is undefined")
    gt_folder = str(gt_folder) if gt_folder is not None else gt_json_file.rsplit(".json", 1)[0]
    pred_folder = str(pred_folder) if pred_folder is not None else pred_json_file.rsplit(".json", 1)[0]
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not os.path.isdir(folder):
            raise PQError(f"{folder}: {what} folder not found")
    if not isinstance(gt.get("categories"), list):
        raise PQError(f"{gt_json_file}: lacks a 'categories' list")
    try:
        cats = [(int(c["id"]), bool(c["isthing"])) for c in gt["categories"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PQError(f"{gt_json_file}: malformed 'categories' entry ({exc!r})") from None
    cat_index = {cid: k for k, (cid, _) in enumerate(cats)}
    pred_by_image = {ann["image_id"]: ann for ann in pred["annotations"]}
    jobs = []
    for ann in gt["annotations"]:
        if ann["image_id"] not in pred_by_image:
            raise PQError(f"{pred_json_file}: no prediction for the image with id {ann['image_id']!r}")
        jobs.append((ann, pred_by_image[ann["image_id"]], gt_folder, pred_folder, cat_index))

    from tqdm import tqdm

    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    stat = PQStat.zeros(len(cats))
    bar = tqdm(total=len(jobs), desc="PQ", unit="img", disable=not progress)
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            stat += _pq_file_pair(job)
            bar.update(1)
    else:
        import multiprocessing as mp

        chunk = max(1, len(jobs) // (workers * 8))
        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(min(workers, len(jobs))) as pool:
            for s in pool.imap(_pq_file_pair, jobs, chunksize=chunk):
                stat += s
                bar.update(1)
    bar.close()
    return _results(stat, np.array([t for _, t in cats], bool), [cid for cid, _ in cats])
