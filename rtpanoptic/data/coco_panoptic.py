"""A dataset for the COCO panoptic format (COCO 2017 panoptic, Cityscapes panoptic, the synthetic set).

The format: a JSON with ``images`` (id, file_name, height, width), ``annotations`` (image_id,
file_name of the PNG, ``segments_info`` = [{id, category_id, iscrowd, area, bbox}]) and
``categories`` (id, name, isthing, color); one PNG per image whose pixels encode segment ids as
``R + 256 G + 256^2 B`` (0 = void / unlabelled).

Each sample is a dict (the sample format every dataset, transform and loss of the package uses):

- ``image`` uint8 ``[3, H, W]`` RGB;
- ``semantic`` int64 ``[H, W]`` contiguous train ids; void pixels (id 0, not in any segment) get
  ``description.ignore_label``. **Crowd regions keep their category's train id** (a "car group" is
  still car pixels for the semantic loss, as cityscapesScripts' and detectron2's semantic targets do);
  they are excluded from the instances and marked in ``crowd_mask`` so box/mask losses ignore them;
- ``instance_masks`` bool ``[N, H, W]`` the non-crowd thing segments, in ``segments_info`` order;
- ``boxes`` float32 ``[N, 4]`` xyxy tight boxes of the masks (``x2 = max_x + 1``);
- ``labels`` int64 ``[N]`` thing index ``0..K-1`` (see :class:`DatasetDescription`);
- ``crowd_mask`` bool ``[H, W]``; ``image_id`` str; ``file_name`` str (the image path).

Bad input raises :class:`DatasetError` (a ``ValueError``) naming the file and the problem.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .description import DatasetDescription, get_description
from .image_io import DEFAULT_MAX_PIXELS, ImageError, read_image, read_panoptic_png

ImagePathFn = Callable[[dict], str]


class DatasetError(ValueError):
    """Malformed or inconsistent dataset files."""


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """bool ``[N, H, W]`` -> float32 ``[N, 4]`` xyxy tight boxes, ``x2 = max_x + 1`` (empty mask -> zeros)."""
    if masks.ndim != 3:
        raise ValueError(f"masks_to_boxes: masks must be [N, H, W], got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    if n == 0:
        return boxes
    rows = masks.any(dim=2)  # [N, H]
    cols = masks.any(dim=1)  # [N, W]
    nonempty = rows.any(dim=1)
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    boxes[~nonempty] = 0
    return boxes


def load_panoptic_json(path: str) -> dict:
    """Read and check the top-level structure of a COCO-panoptic JSON."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: panoptic JSON file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at top level, got {type(data).__name__}")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or non-list {key!r}")
    if "images" in data and not isinstance(data["images"], list):
        raise DatasetError(f"{path}: 'images' must be a list")
    return data


class cityscapes_image_path:
    """Image path resolver for Cityscapes: ``<image_root>/<city>/<image_id>_leftImg8bit.png``.

    ``image_root`` is ``.../leftImg8bit/<split>``; the panoptic annotation of the same image is
    ``<image_id>_gtFine_panoptic.png`` (cityscapesScripts' createPanopticImgs). A class rather
    than a closure so datasets pickle into spawned DataLoader workers.
    """

    def __init__(self, image_root: str):
        self.image_root = str(image_root)

    def __call__(self, ann: dict) -> str:
        image_id = str(ann["image_id"])
        city = image_id.split("_")[0]
        return os.path.join(self.image_root, city, f"{image_id}_leftImg8bit.png")


class COCOPanopticDataset(torch.utils.data.Dataset):
    """COCO-panoptic-format dataset producing the sample dict of the module docstring.

    Args:
        image_root: folder of the RGB images (``images[].file_name`` relative to it).
        panoptic_json: the annotation JSON.
        panoptic_root: folder of the annotation PNGs (``annotations[].file_name``).
        description: a :class:`DatasetDescription` or the name of a registered one; ``None`` builds
            one from the JSON's ``categories`` (train ids in JSON order). Every category id used
            by a segment must be in it.
        transforms: callable ``sample -> sample`` applied last (see :mod:`rtpanoptic.data.transforms`).
        image_path_fn: ``annotation -> image path`` overriding the default lookup
            (``image_root / images[image_id].file_name``), e.g. :func:`cityscapes_image_path`.
        max_pixels: larger images (and panoptic PNGs) are refused (:mod:`rtpanoptic.data.image_io`).

    The whole JSON is checked when the dataset is built, before any image is read (types included):
    unique ``images[].id``, ``annotations[].image_id`` and ``categories[].id``; ``iscrowd`` and
    ``isthing`` 0 / 1; segment ids ints in [1, 256^3), each segment's category listed in the
    JSON's ``categories`` and in the description.  A :class:`DatasetError` names the file and entry.
    Images are read by :func:`rtpanoptic.data.image_io.read_image` (EXIF orientation applied,
    16-bit scaled to 8 bits); an unreadable image stops the iteration with a :class:`DatasetError`.
    """

    def __init__(
        self,
        image_root: str,
        panoptic_json: str,
        panoptic_root: str,
        description: DatasetDescription | str | None = None,
        transforms: Callable[[dict], dict] | None = None,
        image_path_fn: ImagePathFn | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.max_pixels = max_pixels
        self.image_root = str(image_root)
        self.panoptic_json = str(panoptic_json)
        self.panoptic_root = str(panoptic_root)
        self.transforms = transforms
        data = load_panoptic_json(self.panoptic_json)
        json_categories = _check_categories(self.panoptic_json, data["categories"])
        if description is None:
            try:
                description = DatasetDescription.from_coco_categories(
                    os.path.basename(self.panoptic_json), data["categories"]
                )
            except ValueError as exc:
                raise DatasetError(f"{self.panoptic_json}: {exc}") from None
        elif isinstance(description, str):
            description = get_description(description)
        if not isinstance(description, DatasetDescription):
            raise TypeError(f"description must be a DatasetDescription, a name or None, got {type(description)}")
        self.description = description
        self._cat_to_train = description.category_to_train_id()
        thing_train = description.thing_train_ids
        self._train_to_thing = {t: k for k, t in enumerate(thing_train)}
        self._is_thing_cat = {c.id: c.isthing for c in description.categories}

        self._json_categories = json_categories
        self._images = _check_images(self.panoptic_json, data.get("images", []))
        self._image_path_fn = image_path_fn
        self.annotations: list[dict] = []
        annotated: dict = {}
        for i, ann in enumerate(data["annotations"]):
            self._check_annotation(i, ann)
            if ann["image_id"] in annotated:
                raise DatasetError(f"{self.panoptic_json}: annotations[{i}]: image_id {ann['image_id']!r} repeats "
                                   f"annotations[{annotated[ann['image_id']]}] (one annotation per image)")
            annotated[ann["image_id"]] = i
            self.annotations.append(ann)

    # ------------------------------------------------------------------ checks
    def _check_annotation(self, i: int, ann) -> None:
        where = f"{self.panoptic_json}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is not an object")
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise DatasetError(f"{where} lacks {key!r}")
        if not _is_id(ann["image_id"]):
            raise DatasetError(f"{where}: image_id must be an integer or a string, got {ann['image_id']!r}")
        if not isinstance(ann["file_name"], str) or not ann["file_name"]:
            raise DatasetError(f"{where}: file_name must be a non-empty string, got {ann['file_name']!r}")
        if not isinstance(ann["segments_info"], list):
            raise DatasetError(f"{where}: 'segments_info' must be a list")
        if self._image_path_fn is None and ann["image_id"] not in self._images:
            raise DatasetError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        seen = set()
        for j, seg in enumerate(ann["segments_info"]):
            if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
                raise DatasetError(f"{where}.segments_info[{j}] lacks 'id' or 'category_id'")
            sid, cat = seg["id"], seg["category_id"]
            if not isinstance(sid, int) or sid <= 0 or sid >= 256**3:
                raise DatasetError(f"{where}.segments_info[{j}]: segment id {sid!r} must be an int in [1, 256^3)")
            if sid in seen:
                raise DatasetError(f"{where}: duplicate segment id {sid}")
            seen.add(sid)
            if cat not in self._json_categories:
                raise DatasetError(f"{where} ({ann['file_name']}): segment {sid} has unknown category id {cat!r} "
                                   f"(not in the file's 'categories')")
            if cat not in self._cat_to_train:
                raise DatasetError(
                    f"{where} ({ann['file_name']}): segment {sid} has unknown category id {cat!r} "
                    f"(not in description {self.description.name!r})"
                )
            if seg.get("iscrowd", 0) not in (0, 1) or isinstance(seg.get("iscrowd", 0), float):
                raise DatasetError(f"{where}.segments_info[{j}]: iscrowd must be 0 or 1, got {seg['iscrowd']!r}")
            for key, ok in (("area", _is_number(seg.get("area", 0)) and seg.get("area", 0) >= 0),
                            ("bbox", _is_box(seg.get("bbox", [0, 0, 0, 0])))):
                if not ok:
                    raise DatasetError(f"{where}.segments_info[{j}]: {key} {seg[key]!r} is not "
                                       f"{'a number >= 0' if key == 'area' else '4 numbers [x, y, w, h]'}")

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.annotations)

    def image_path(self, index: int) -> str:
        ann = self.annotations[index]
        if self._image_path_fn is not None:
            return self._image_path_fn(ann)
        return os.path.join(self.image_root, self._images[ann["image_id"]]["file_name"])

    def load_panoptic(self, index: int):
        """``(ids int64 [H, W], segments_info)`` of annotation ``index``, checked against each other."""
        ann = self.annotations[index]
        path = os.path.join(self.panoptic_root, ann["file_name"])
        try:
            ids = read_panoptic_png(path, self.max_pixels)
        except ImageError as exc:
            raise DatasetError(str(exc)) from None
        present = np.unique(ids)
        listed = {s["id"] for s in ann["segments_info"]}
        unknown = [int(v) for v in present if v != 0 and int(v) not in listed]
        if unknown:
            raise DatasetError(f"{path}: segment ids {unknown[:10]} in the PNG are not in its segments_info")
        absent = sorted(listed - {int(v) for v in present})
        if absent:
            raise DatasetError(f"{path}: segments {absent[:10]} of segments_info have no pixels in the PNG")
        return ids, ann["segments_info"]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        ann = self.annotations[index]
        image_path = self.image_path(index)
        try:
            image = read_image(image_path, self.max_pixels)
        except ImageError as exc:
            raise DatasetError(str(exc)) from None
        ids, segments = self.load_panoptic(index)
        if image.shape[:2] != ids.shape:
            raise DatasetError(
                f"{image_path}: image size {image.shape[:2]} differs from its panoptic PNG "
                f"{ann['file_name']} size {ids.shape}"
            )
        sample = self._build_sample(ids, segments, image)
        sample["image_id"] = str(ann["image_id"])
        sample["file_name"] = image_path
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _build_sample(self, ids: np.ndarray, segments: Sequence[dict], image: np.ndarray) -> dict:
        h, w = ids.shape
        ignore = self.description.ignore_label
        # Dense lookup: segment id -> (train id), via sorted unique ids.
        seg_ids = np.array([0] + [s["id"] for s in segments], dtype=np.int64)
        order = np.argsort(seg_ids)
        pos = np.searchsorted(seg_ids[order], ids)
        index_map = order[pos]  # [H, W] index into [void] + segments
        train = np.array([ignore] + [self._cat_to_train[s["category_id"]] for s in segments], dtype=np.int64)
        semantic = train[index_map]
        crowd = np.zeros((h, w), dtype=bool)
        masks: list[np.ndarray] = []
        labels: list[int] = []
        for j, s in enumerate(segments, start=1):
            if not self._is_thing_cat[s["category_id"]]:
                continue
            m = index_map == j
            if s.get("iscrowd", 0):
                crowd |= m
            else:
                masks.append(m)
                labels.append(self._train_to_thing[int(train[j])])
        inst = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "semantic": torch.from_numpy(semantic),
            "instance_masks": inst,
            "boxes": masks_to_boxes(inst),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "crowd_mask": torch.from_numpy(crowd),
        }


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _is_box(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


def _check_images(path: str, images) -> dict:
    """``images[]`` of a panoptic JSON -> ``{id: entry}``; ids unique, file names strings."""
    out: dict = {}
    for i, img in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetError(f"{where} lacks 'id' or 'file_name'")
        if not _is_id(img["id"]):
            raise DatasetError(f"{where}: id must be an integer or a string, got {img['id']!r}")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DatasetError(f"{where}: file_name must be a non-empty string, got {img['file_name']!r}")
        for key in ("height", "width"):
            if key in img and (not isinstance(img[key], int) or isinstance(img[key], bool) or img[key] < 1):
                raise DatasetError(f"{where}: {key} must be a positive integer, got {img[key]!r}")
        if img["id"] in out:
            first = next(k for k, im in enumerate(images) if isinstance(im, dict) and im.get("id") == img["id"])
            raise DatasetError(f"{where}: id {img['id']!r} repeats images[{first}] "
                               f"({out[img['id']]['file_name']}); image ids must be unique")
        out[img["id"]] = img
    return out


def _check_categories(path: str, categories: list) -> set:
    """The ids of ``categories[]``: unique integers, with a string name and ``isthing`` 0 / 1."""
    ids: dict[int, int] = {}
    for i, c in enumerate(categories):
        where = f"{path}: categories[{i}]"
        if not isinstance(c, dict) or "id" not in c:
            raise DatasetError(f"{where} lacks 'id'")
        cid = c["id"]
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DatasetError(f"{where}: id must be an integer, got {cid!r}")
        if cid in ids:
            raise DatasetError(f"{where}: category id {cid} repeats categories[{ids[cid]}]")
        ids[cid] = i
        if "name" in c and not isinstance(c["name"], str):
            raise DatasetError(f"{where}: name must be a string, got {c['name']!r}")
        if "isthing" in c and (c["isthing"] not in (0, 1) or isinstance(c["isthing"], float)):
            raise DatasetError(f"{where}: isthing must be 0 or 1, got {c['isthing']!r}")
    return set(ids)


def collate(samples: list[dict], ignore_label: int = 255) -> dict:
    """Batch sample dicts (this module's docstring): ``images`` uint8 ``[B, 3, Hp, Wp]`` zero-padded bottom/right to a
    multiple of 128, ``image_sizes`` [(H, W)], and per-image lists of the other fields with
    ``semantic`` padded with the ignore label and masks padded with False.

    Use ``functools.partial(collate, ignore_label=...)`` for a description whose ignore label is not 255.
    """
    if not isinstance(samples, (list, tuple)) or not samples:
        raise ValueError("collate: samples must be a non-empty list of sample dicts")
    sizes = [tuple(s["image"].shape[-2:]) for s in samples]
    hp = -(-max(h for h, _ in sizes) // 128) * 128
    wp = -(-max(w for _, w in sizes) // 128) * 128
    images = samples[0]["image"].new_zeros((len(samples), 3, hp, wp))
    out: dict = {"images": images, "image_sizes": sizes}
    for key in ("semantic", "instance_masks", "boxes", "labels", "crowd_mask", "image_id", "file_name"):
        out[key] = []
    for b, s in enumerate(samples):
        h, w = sizes[b]
        images[b, :, :h, :w] = s["image"]
        sem = s["semantic"].new_full((hp, wp), ignore_label)
        sem[:h, :w] = s["semantic"]
        out["semantic"].append(sem)
        m = s["instance_masks"]
        mp = m.new_zeros((m.shape[0], hp, wp))
        mp[:, :h, :w] = m
        out["instance_masks"].append(mp)
        c = s["crowd_mask"].new_zeros((hp, wp))
        c[:h, :w] = s["crowd_mask"]
        out["crowd_mask"].append(c)
        out["boxes"].append(s["boxes"])
        out["labels"].append(s["labels"])
        out["image_id"].append(s.get("image_id", str(b)))
        out["file_name"].append(s.get("file_name", ""))
    return out
