"""A procedurally generated panoptic dataset, written to disk in COCO panoptic format.

Scenes: three stuff classes (``sky`` with a vertical gradient, ``ground`` with noisy stripes, an
optional brick ``wall`` on one side above the horizon) and three thing classes told apart by shape
and colour (``circle`` reddish, ``rectangle`` yellowish, ``triangle`` purplish), with size and colour
jitter, occlusion (later objects cover earlier ones; each keeps a visible fraction), same-class
instances placed touching each other, an occasional crowd region (a cluster of small shapes of one
class, ``iscrowd=1``) and an occasional void blob (noise, segment id 0).

Everything is deterministic in ``SyntheticConfig.seed``; :func:`generate_synthetic` writes

    <root>/images/<split>/<split>_NNNNNN.png      RGB images
    <root>/panoptic/<split>/<split>_NNNNNN.png    segment ids, R + 256 G + 256^2 B
    <root>/annotations/panoptic_<split>.json      images / annotations / categories
    <root>/synthetic_config.json                  the marker: written first, holds the config once complete
    <root>/.synthetic_files.jsonl                 the record: each file written, with its size

and reuses an existing tree generated with the same config.  It writes only into an empty (or
missing) folder or into a tree it made itself (marker present, every other file recorded and of
its recorded size, no symbolic link anywhere): anything else raises :class:`DatasetError` naming
the folder and what is in it, and nothing is deleted.  Regenerating its own tree (another config,
an interrupted run) deletes only the files the record names, as recorded, inside the real
``root`` (:class:`rtpanoptic.safe_io.OwnedFiles`), never through a link and never by name alone.
Load a split with ``COCOPanopticDataset(*paths["train"], description=SYNTHETIC)`` or
:func:`synthetic_dataset`.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from ..safe_io import OwnedFiles, save_png, write_json
from .coco_panoptic import DatasetError
from .description import Category, DatasetDescription, register_description
from .panoptic_format import id2rgb

GENERATOR_VERSION = 1
SPLITS = ("train", "val")
MARKER = "synthetic_config.json"
RECORD = ".synthetic_files.jsonl"

CIRCLE, RECTANGLE, TRIANGLE, SKY, GROUND, WALL = 1, 2, 3, 4, 5, 6
SYNTHETIC = DatasetDescription(
    "synthetic",
    (
        Category(CIRCLE, "circle", True, (220, 60, 60)),
        Category(RECTANGLE, "rectangle", True, (235, 200, 40)),
        Category(TRIANGLE, "triangle", True, (160, 60, 220)),
        Category(SKY, "sky", False, (120, 180, 240)),
        Category(GROUND, "ground", False, (130, 95, 60)),
        Category(WALL, "wall", False, (150, 150, 150)),
    ),
    ignore_label=255,
)
register_description(SYNTHETIC)

# Base colours of the things (before per-instance jitter).
_THING_RGB = {CIRCLE: (215, 55, 50), RECTANGLE: (235, 205, 45), TRIANGLE: (150, 55, 215)}


@dataclass(frozen=True)
class SyntheticConfig:
    image_size: int = 128  # square images, side in pixels (a multiple of 128 avoids padding)
    num_train: int = 400
    num_val: int = 50
    seed: int = 0
    min_objects: int = 1  # non-crowd thing instances per image
    max_objects: int = 5
    min_object_size: int = 16  # extent (diameter / side) in pixels
    max_object_size: int = 44
    min_visible_fraction: float = 0.55  # of each object's own area, after occlusion and image borders
    touching_prob: float = 0.3  # chance an object is put against a same-class one
    crowd_prob: float = 0.15  # chance an image has one crowd region
    void_prob: float = 0.25  # chance an image has one void blob
    wall_prob: float = 0.6
    color_jitter: int = 25
    noise_std: float = 4.0

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"SyntheticConfig.image_size must be >= 32, got {self.image_size}")
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError("SyntheticConfig.num_train / num_val must be >= 0")
        if not 0 < self.min_objects <= self.max_objects:
            raise ValueError("SyntheticConfig: need 0 < min_objects <= max_objects")
        if not 4 <= self.min_object_size <= self.max_object_size <= self.image_size:
            raise ValueError("SyntheticConfig: need 4 <= min_object_size <= max_object_size <= image_size")


class SplitPaths(NamedTuple):
    """Arguments of :class:`COCOPanopticDataset` in order: ``COCOPanopticDataset(*paths)``."""

    image_root: str
    panoptic_json: str
    panoptic_root: str


def synthetic_paths(root: str) -> dict[str, SplitPaths]:
    root = str(root)
    return {
        split: SplitPaths(
            os.path.join(root, "images", split),
            os.path.join(root, "annotations", f"panoptic_{split}.json"),
            os.path.join(root, "panoptic", split),
        )
        for split in SPLITS
    }


def _config_record(cfg: SyntheticConfig) -> dict:
    return {"generator_version": GENERATOR_VERSION, "config": asdict(cfg)}


def _listing(root: str, entries: list[str], limit: int = 5) -> str:
    shown = [e + ("/" if os.path.isdir(os.path.join(root, e)) else "") for e in entries[:limit]]
    return ", ".join(shown) + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _read_marker(root: str) -> dict | None:
    try:
        with open(os.path.join(root, MARKER)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "generator_version" in data else None


def _write_marker(root: str, record: dict) -> None:
    write_json(os.path.join(root, MARKER), record)


def _clear_own_tree(root: str) -> None:
    """Make ``root`` empty, deleting only the files this generator recorded writing, still as
    written; anything else (a link, another file, a changed one) raises, and nothing is deleted."""
    if not os.listdir(root):
        return
    if _read_marker(root) is None:
        raise DatasetError(
            f"{root} is not empty and holds no synthetic dataset made by rtpanoptic (it holds "
            f"{_listing(root, sorted(os.listdir(root)))}); the synthetic set is written only into an empty folder "
            f"or its own earlier tree, so nothing was changed: choose another data.root"
        )
    owned = OwnedFiles(root, RECORD)
    meta = (MARKER, f".{MARKER}.tmp")
    foreign = owned.foreign(meta=meta)
    if foreign:
        unrecorded = "" if os.path.lexists(owned.record_path) else (
            f" (no {RECORD}: a tree of an earlier rtpanoptic, which kept no record of its files, is never deleted)")
        raise DatasetError(
            f"{root} holds a synthetic dataset but also files or links rtpanoptic did not write, or changed since "
            f"({_listing(root, foreign)}){unrecorded}; nothing was changed: move them away or choose another data.root"
        )
    owned.remove()
    for name in meta:  # regular files: foreign() listed anything else
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(root, name))
    for rel in [os.path.join(a, b) for a in ("images", "panoptic") for b in SPLITS] + ["images", "panoptic",
                                                                                     "annotations"]:
        path = os.path.join(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            with contextlib.suppress(OSError):  # only empty folders go
                os.rmdir(path)


def generate_synthetic(
    root: str, cfg: SyntheticConfig | None = None, progress: bool = True, overwrite: bool = False
) -> dict[str, SplitPaths]:
    """Write the synthetic dataset under ``root`` (reused when already generated with ``cfg``,
    unless ``overwrite``).

    ``root`` must be missing, empty, or a tree written here before: otherwise :class:`DatasetError`
    (naming ``root`` and its content) and nothing is deleted.  Returns
    ``{"train": SplitPaths, "val": SplitPaths}``.
    """
    cfg = SyntheticConfig() if cfg is None else cfg
    if not isinstance(cfg, SyntheticConfig):
        raise TypeError(f"cfg must be a SyntheticConfig, got {type(cfg).__name__}")
    root = str(root)
    paths = synthetic_paths(root)
    record = _config_record(cfg)
    if os.path.exists(root) and not os.path.isdir(root):
        raise DatasetError(f"synthetic dataset root {root} is not a folder")
    if not overwrite and os.path.isdir(root) and _read_marker(root) == record:
        return paths
    try:
        os.makedirs(root, exist_ok=True)
        _clear_own_tree(root)
        _write_marker(root, {**record, "complete": False})  # claims the folder before the first image
        with OwnedFiles(root, RECORD).recording():  # every file recorded with its size as it is written
            _write_tree(paths, cfg, progress)
        _write_marker(root, record)
    except OSError as exc:
        raise DatasetError(f"cannot write the synthetic dataset under {root} ({exc})") from None
    return paths


def _write_tree(paths: dict[str, SplitPaths], cfg: SyntheticConfig, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=cfg.num_train + cfg.num_val, desc="synthetic panoptic", unit="img", disable=not progress)
    for split_index, (split, count) in enumerate(zip(SPLITS, (cfg.num_train, cfg.num_val))):
        p = paths[split]
        os.makedirs(p.image_root, exist_ok=True)
        os.makedirs(p.panoptic_root, exist_ok=True)
        os.makedirs(os.path.dirname(p.panoptic_json), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([cfg.seed, split_index, i])
            image, ids, segments = render_scene(rng, cfg)
            stem = f"{split}_{i:06d}"
            save_png(os.path.join(p.image_root, stem + ".png"), image)
            save_png(os.path.join(p.panoptic_root, stem + ".png"), id2rgb(ids))
            images.append({"id": stem, "file_name": stem + ".png", "height": cfg.image_size, "width": cfg.image_size})
            annotations.append({"image_id": stem, "file_name": stem + ".png", "segments_info": segments})
            bar.update(1)
        write_json(p.panoptic_json,
                   {"images": images, "annotations": annotations, "categories": SYNTHETIC.coco_categories()})
    bar.close()


def synthetic_dataset(
    root: str,
    split: str = "train",
    cfg: SyntheticConfig | None = None,
    transforms: Callable[[dict], dict] | None = None,
    progress: bool = True,
):
    """Generate (if needed) and open one split as a :class:`COCOPanopticDataset`."""
    from .coco_panoptic import COCOPanopticDataset

    if split not in SPLITS:
        raise DatasetError(f"the synthetic dataset has the splits 'train' and 'val', not {split!r}")
    paths = generate_synthetic(root, cfg, progress=progress)
    return COCOPanopticDataset(*paths[split], description=SYNTHETIC, transforms=transforms)


# ---------------------------------------------------------------------------------------------
# Rendering


def _shape_mask(rng: np.random.Generator, cls: int, size: int, cx: float, cy: float, yy, xx) -> np.ndarray:
    r = size / 2.0
    if cls == CIRCLE:
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if cls == RECTANGLE:
        hw = r * rng.uniform(0.6, 1.0)
        hh = r * rng.uniform(0.6, 1.0)
        return (np.abs(xx - cx) <= hw) & (np.abs(yy - cy) <= hh)
    # Triangle: base and apex, pointing up or down, apex shifted sideways a little.
    sign = 1.0 if rng.random() < 0.7 else -1.0
    apex_x = cx + rng.uniform(-0.3, 0.3) * r
    apex_y, base_y = cy - sign * r, cy + sign * r
    t = (yy - apex_y) / (base_y - apex_y)  # 0 at apex, 1 at base
    half = r * t
    return (t >= 0) & (t <= 1) & (np.abs(xx - (apex_x + (cx - apex_x) * t)) <= half)


def _stuff(rng: np.random.Generator, s: int, yy, xx, wall_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Stuff category map [s, s] and background image [s, s, 3] float."""
    horizon = rng.uniform(0.3, 0.6) * s + rng.uniform(-0.2, 0.2) * (xx - s / 2)
    cat = np.where(yy >= horizon, GROUND, SKY)
    if rng.random() < wall_prob:
        width = rng.uniform(0.2, 0.5) * s
        top = rng.uniform(0.05, 0.3) * s
        side = xx < width if rng.random() < 0.5 else xx >= s - width
        cat = np.where(side & (yy >= top) & (yy < horizon), WALL, cat)
    img = np.zeros((s, s, 3), np.float64)
    # sky: vertical gradient
    top_c = np.array([80, 140, 220]) + rng.uniform(-15, 15, 3)
    bot_c = np.array([170, 210, 250]) + rng.uniform(-15, 15, 3)
    t = (yy / s)[..., None]
    sky = top_c * (1 - t) + bot_c * t
    # ground: brown with stripes and noise
    g = np.array([130, 95, 60]) + rng.uniform(-15, 15, 3)
    stripes = 12 * np.sin(yy * rng.uniform(0.4, 0.9) + rng.uniform(0, 6.3))[..., None]
    ground = g + stripes + rng.normal(0, 10, (s, s, 1))
    # wall: grey bricks with dark mortar lines
    w = np.array([150, 150, 150]) + rng.uniform(-15, 15, 3)
    brick_h = 8
    row = (yy // brick_h).astype(int)
    mortar = (yy % brick_h < 1) | (((xx + 8 * (row % 2)) % 16) < 1)
    wall = w - 60 * mortar[..., None]
    img = np.where((cat == SKY)[..., None], sky, img)
    img = np.where((cat == GROUND)[..., None], ground, img)
    img = np.where((cat == WALL)[..., None], wall, img)
    return cat, img


def render_scene(rng: np.random.Generator, cfg: SyntheticConfig):
    """One scene: ``(image uint8 [s, s, 3], segment ids int64 [s, s], segments_info)``."""
    s = cfg.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    stuff_cat, img = _stuff(rng, s, yy, xx, cfg.wall_prob)
    # Thing layer: owner index per pixel (-1 = none); owners are (category, iscrowd).
    owner = np.full((s, s), -1, np.int64)
    owners: list[tuple[int, int]] = []
    full_area: list[int] = []

    if rng.random() < cfg.crowd_prob:
        cls = int(rng.integers(1, 4))
        ccx, ccy = rng.uniform(0.2, 0.8, 2) * s
        crowd = np.zeros((s, s), bool)
        color = _jitter(rng, _THING_RGB[cls], cfg.color_jitter)
        for _ in range(int(rng.integers(4, 8))):
            size = int(rng.integers(8, 15))
            cx, cy = ccx + rng.uniform(-20, 20), ccy + rng.uniform(-14, 14)
            m = _shape_mask(rng, cls, size, cx, cy, yy, xx)
            crowd |= m
            img[m] = _jitter(rng, color, 12)
        if crowd.sum() >= 30:
            owner[crowd] = len(owners)
            owners.append((cls, 1))
            full_area.append(int(crowd.sum()))

    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[tuple[int, float, float, int]] = []  # (cls, cx, cy, size) of regular objects
    pad = cfg.max_object_size
    gy, gx = np.mgrid[-pad : s + pad, -pad : s + pad].astype(np.float64)
    for _ in range(n_obj):
        for _attempt in range(25):
            cls = int(rng.integers(1, 4))
            size = int(rng.integers(cfg.min_object_size, cfg.max_object_size + 1))
            same = [p for p in placed if p[0] == cls]
            if same and rng.random() < cfg.touching_prob:
                _, px, py, psize = same[int(rng.integers(len(same)))]
                ang = rng.uniform(0, 2 * np.pi)
                dist = (psize + size) / 2.0
                cx, cy = px + dist * np.cos(ang), py + dist * np.sin(ang)
            else:
                cx, cy = rng.uniform(0, s, 2)
            sub = np.random.default_rng(rng.integers(2**63))
            big = _shape_mask(sub, cls, size, cx + pad, cy + pad, gy + pad, gx + pad)
            area = int(big.sum())
            m = big[pad : pad + s, pad : pad + s]
            if area == 0 or m.sum() < cfg.min_visible_fraction * area:
                continue
            # previous owners must keep enough of themselves
            ok = True
            for j in range(len(owners)):
                if owners[j][1]:
                    continue
                left = np.count_nonzero((owner == j) & ~m)
                if left < cfg.min_visible_fraction * full_area[j] or left < 0.4 * cfg.min_object_size**2:
                    ok = False
                    break
            if not ok:
                continue
            color = _jitter(rng, _THING_RGB[cls], cfg.color_jitter)
            shade = 1.0 + 0.15 * ((xx - cx) * rng.uniform(-1, 1) + (yy - cy) * rng.uniform(-1, 1)) / max(size, 1)
            img[m] = (color[None, :] * shade[m][:, None])
            owner[m] = len(owners)
            owners.append((cls, 0))
            full_area.append(area)
            placed.append((cls, cx, cy, size))
            break

    void = np.zeros((s, s), bool)
    if rng.random() < cfg.void_prob:
        vcx, vcy = rng.uniform(0, s, 2)
        ax, ay = rng.uniform(6, 16, 2)
        blob = ((xx - vcx) / ax) ** 2 + ((yy - vcy) / ay) ** 2 <= 1 + 0.3 * np.sin(5 * np.arctan2(yy - vcy, xx - vcx))
        void = blob & (owner < 0)
        img[void] = rng.uniform(0, 255, (int(void.sum()), 3))

    img = img + rng.normal(0, cfg.noise_std, img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    ids = np.zeros((s, s), np.int64)
    segments = []
    next_id = 1
    for cat in (SKY, GROUND, WALL):
        m = (stuff_cat == cat) & (owner < 0) & ~void
        if m.any():
            ids[m] = next_id
            segments.append(_segment_info(next_id, cat, 0, m))
            next_id += 1
    for j, (cat, iscrowd) in enumerate(owners):
        m = owner == j
        if m.any():
            ids[m] = next_id
            segments.append(_segment_info(next_id, cat, iscrowd, m))
            next_id += 1
    return image, ids, segments


def _jitter(rng: np.random.Generator, rgb, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _segment_info(sid: int, cat: int, iscrowd: int, m: np.ndarray) -> dict:
    ys, xs = np.nonzero(m)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": sid,
        "category_id": cat,
        "iscrowd": int(iscrowd),
        "area": int(m.sum()),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
    }
