"""Instance-segmentation mask AP via pycocotools' COCOeval (iouType="segm").

Ground truth and predictions are given per image as boolean masks; the evaluator builds the COCO
structures in memory (RLE-encoded), so nothing is written to disk. pycocotools is imported lazily.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def has_pycocotools() -> bool:
    """Whether pycocotools (needed by :class:`InstanceAPEvaluator`) can be imported."""
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        return False
    return True


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class InstanceAPEvaluator:
    """Accumulate images, then ``compute()`` -> ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", ...}``.

    Args:
        num_things: K; labels are thing indices ``0..K-1``.
        class_names: optional names for per-class AP (``compute()["per_class"]``).
        max_dets: COCOeval's maximum detections per image (last entry of ``maxDets``).
    """

    def __init__(self, num_things: int, class_names: Sequence[str] | None = None, max_dets: int = 100):
        if not has_pycocotools():
            raise ImportError("InstanceAPEvaluator needs pycocotools (pip install pycocotools)")
        self.num_things, self.class_names, self.max_dets = int(num_things), class_names, int(max_dets)
        self.reset()

    def reset(self) -> None:
        self.images: list[dict] = []
        self.gt: list[dict] = []
        self.dt: list[dict] = []

    def update(self, gt_masks, gt_labels, pred_masks, pred_labels, pred_scores, crowd_masks=None, crowd_labels=None):
        """One image. Masks bool ``[N, H, W]``; labels int thing indices; ``crowd_masks`` optional
        ``[M, H, W]`` crowd regions (``iscrowd=1``; detections on them are neither TP nor FP)."""
        gt_masks, gt_labels = _np(gt_masks).astype(bool), _np(gt_labels).astype(np.int64)
        pred_masks, pred_labels, pred_scores = _np(pred_masks).astype(bool), _np(pred_labels).astype(np.int64), _np(pred_scores)
        if gt_masks.ndim != 3 or pred_masks.ndim != 3:
            raise ValueError("InstanceAPEvaluator.update: masks must be [N, H, W]")
        if not (len(pred_masks) == len(pred_labels) == len(pred_scores)) or len(gt_masks) != len(gt_labels):
            raise ValueError("InstanceAPEvaluator.update: masks, labels and scores differ in length")
        h, w = gt_masks.shape[1:]
        if pred_masks.shape[0] and pred_masks.shape[1:] != (h, w):
            raise ValueError(f"InstanceAPEvaluator.update: prediction size {pred_masks.shape[1:]} != {(h, w)}")
        for lab in (gt_labels, pred_labels):
            if lab.size and (lab.min() < 0 or lab.max() >= self.num_things):
                raise ValueError(f"InstanceAPEvaluator.update: labels must lie in [0, {self.num_things})")
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": int(h), "width": int(w)})
        crowd = []
        if crowd_masks is not None:
            crowd = list(zip(_np(crowd_masks).astype(bool), _np(crowd_labels).astype(np.int64)))
        for m, lab, iscrowd in [(m, l, 0) for m, l in zip(gt_masks, gt_labels)] + [(m, l, 1) for m, l in crowd]:
            ys, xs = np.nonzero(m)
            if len(ys) == 0:
                continue
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            self.gt.append({
                "id": len(self.gt) + 1, "image_id": image_id, "category_id": int(lab) + 1,
                "segmentation": _rle(m), "area": float(len(ys)), "bbox": bbox, "iscrowd": iscrowd,
            })
        for m, lab, sc in zip(pred_masks, pred_labels, pred_scores):
            self.dt.append({
                "image_id": image_id, "category_id": int(lab) + 1, "segmentation": _rle(m), "score": float(sc),
            })

    def image_records(self) -> list[dict]:
        """What :meth:`update` stored, per image in order: ``{"image", "gt", "dt"}`` without the
        image and annotation ids; :meth:`extend` adds such records to another evaluator."""
        records = [{"image": {k: v for k, v in im.items() if k != "id"}, "gt": [], "dt": []} for im in self.images]
        for key in ("gt", "dt"):
            for entry in getattr(self, key):
                records[entry["image_id"] - 1][key].append({k: v for k, v in entry.items()
                                                            if k not in ("id", "image_id")})
        return records

    def extend(self, records: Sequence[dict]) -> None:
        """Add the images of :meth:`image_records` after those already here, numbered as
        :meth:`update` would have numbered them."""
        for rec in records:
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, **rec["image"]})
            for g in rec["gt"]:
                self.gt.append({"id": len(self.gt) + 1, "image_id": image_id, **g})
            self.dt.extend({"image_id": image_id, **d} for d in rec["dt"])

    def compute(self, verbose: bool = False) -> dict:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self.gt:
            raise ValueError("InstanceAPEvaluator.compute: no ground-truth instances were added")
        names = self.class_names or [str(k) for k in range(self.num_things)]
        quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
        with quiet:
            coco_gt = COCO()
            coco_gt.dataset = {
                "images": self.images, "annotations": self.gt,
                "categories": [{"id": k + 1, "name": names[k]} for k in range(self.num_things)],
            }
            coco_gt.createIndex()
            if not self.dt:
                return {name: 0.0 for name in _STAT_NAMES}
            coco_dt = coco_gt.loadRes([dict(d) for d in self.dt])
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.params.maxDets = [1, 10, self.max_dets]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out = {name: float(v) for name, v in zip(_STAT_NAMES, ev.stats)}
        prec = ev.eval["precision"]  # [T, R, K, A, M]
        per = {}
        for k in range(self.num_things):
            p = prec[:, :, k, 0, -1]
            p = p[p > -1]
            per[names[k]] = float(p.mean()) if p.size else float("nan")
        out["per_class"] = per
        return out
