"""Writers for :class:`~rtpanoptic.inference.PanopticResult`: COCO-panoptic PNG + JSON, overlays with
labels (class names and instance numbers at segment centroids, like detectron2's Visualizer)."""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.panoptic_format import id2rgb
from .safe_io import replacing, save_png, write_text


def coco_segments_info(result) -> list[dict]:
    """The ``segments_info`` of a COCO-panoptic annotation (dataset category ids)."""
    return [
        {
            "id": int(s["id"]),
            "category_id": int(s["category_id"]),
            "iscrowd": 0,
            "bbox": [int(v) for v in s["bbox"]],
            "area": int(s["area"]),
            "score": float(s["score"]),
        }
        for s in result.segments_info
    ]


def write_coco_panoptic(result, png_path: str | Path, image_id: str | int | None = None) -> dict:
    """Write the segment-id PNG (``id = R + 256 G + 256^2 B``) and return the JSON annotation."""
    png_path = Path(png_path)
    save_png(png_path, id2rgb(result.panoptic.numpy()))
    return {
        "image_id": image_id if image_id is not None else png_path.stem,
        "file_name": png_path.name,
        "segments_info": coco_segments_info(result),
    }


def write_coco_panoptic_json(
    annotations: Sequence[dict], description, json_path: str | Path, images: Sequence[dict] | None = None
) -> None:
    """Write a COCO-panoptic predictions JSON (``annotations``, ``categories``, ``images``)."""
    json_path = Path(json_path)
    if images is None:
        images = [{"id": a["image_id"], "file_name": a["file_name"]} for a in annotations]
    data = {"annotations": list(annotations), "categories": description.coco_categories(), "images": list(images)}
    write_text(json_path, json.dumps(data))


@functools.lru_cache(maxsize=1024)
def _instance_shift(k: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.random.default_rng(k + 1).integers(-60, 61, size=3))


def _instance_color(color, k: int) -> np.ndarray:
    """The category colour shifted a little per instance, so neighbours of a class differ."""
    return np.clip(np.asarray(color, dtype=np.int64) + np.asarray(_instance_shift(k)), 0, 255)


def colorize_table(result) -> np.ndarray:
    """uint8 ``[S + 1, 3]``: the colour of each segment id (row 0, void, black)."""
    colors = result.description.colors
    lut = np.zeros((len(result.segments_info) + 1, 3), dtype=np.uint8)
    for k, s in enumerate(result.segments_info):
        base = colors[s["train_id"]]
        lut[s["id"]] = _instance_color(base, k) if s["isthing"] else base
    return lut


def colorize(result) -> np.ndarray:
    """``[H, W, 3]`` uint8: stuff in its category colour, each thing a variant of it, void black."""
    return colorize_table(result)[result.panoptic.numpy()]


def boundaries(ids: np.ndarray) -> np.ndarray:
    """bool ``[H, W]``: pixels whose right or lower neighbour belongs to another segment."""
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def overlay(image, result, alpha: float = 0.5, labels: bool = True, font_size: int | None = None) -> np.ndarray:
    """Blend the colourised segmentation over the uint8 RGB ``image`` (HWC); white boundaries; with
    ``labels``, each segment's class name (things: and instance number, ``"car 2"``) drawn at its
    centroid (:func:`segment_labels`, :func:`draw_labels`).  Returns uint8 ``[H, W, 3]``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    if hasattr(image, "convert"):  # PIL: any mode, 16-bit scaled to 8 bits
        from .data.image_io import to_rgb8

        image = to_rgb8(image)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if image.shape[:2] != tuple(result.panoptic.shape):
        raise ValueError(f"overlay: image is {image.shape[:2]} but the result is {tuple(result.panoptic.shape)}")
    ids = result.panoptic.numpy()
    table = colorize_table(result)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * table[ids].astype(np.float32)
    blended[ids == 0] = image[ids == 0]
    blended[boundaries(ids)] = 255
    out = blended.round().astype(np.uint8)
    if labels:
        out = draw_labels(out, segment_labels(result, table), font_size)
    return out


def write_overlay(image, result, path: str | Path, alpha: float = 0.5, labels: bool = True) -> None:
    """:func:`overlay` saved as an image file (format from the suffix)."""
    from PIL import Image

    with replacing(path) as tmp:
        Image.fromarray(overlay(image, result, alpha, labels)).save(tmp)


# ----------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class SegmentLabel:
    """Text drawn for one segment: ``anchor`` ``(x, y)`` is a pixel of the segment, the one nearest
    to its centroid (the centroid itself when it lies inside); ``color`` its overlay colour."""

    segment_id: int
    text: str
    anchor: tuple[int, int]
    color: tuple[int, int, int]


def segment_labels(result, colors: np.ndarray | None = None) -> list[SegmentLabel]:
    """One :class:`SegmentLabel` per segment of ``result`` with pixels, in ``segments_info`` order:
    ``"<class name>"`` for stuff, ``"<class name> <k>"`` for the k-th thing segment (1-based, the
    numbering of ``result.instance_map``).  ``colors``: :func:`colorize_table` when already computed."""
    ids = result.panoptic.numpy()
    h, w = ids.shape
    n = len(result.segments_info)
    flat = ids.reshape(-1).astype(np.int64)
    area = np.bincount(flat, minlength=n + 1)
    ys, xs = np.divmod(np.arange(h * w), w)
    cx = np.bincount(flat, weights=xs, minlength=n + 1) / np.maximum(area, 1)
    cy = np.bincount(flat, weights=ys, minlength=n + 1) / np.maximum(area, 1)
    names = result.description.class_names
    colors = colorize_table(result) if colors is None else colors
    out, things = [], 0
    for s in result.segments_info:
        k = s["id"]
        text = names[s["train_id"]]
        if s["isthing"]:
            things += 1
            text = f"{text} {things}"
        if area[k] == 0:
            continue
        x, y = min(math.floor(cx[k] + 0.5), w - 1), min(math.floor(cy[k] + 0.5), h - 1)
        if ids[y, x] != k:  # a concave segment: its pixel nearest to the centroid
            py, px = np.nonzero(ids == k)
            j = int(np.argmin((px - cx[k]) ** 2 + (py - cy[k]) ** 2))
            x, y = int(px[j]), int(py[j])
        out.append(SegmentLabel(k, text, (x, y), tuple(int(c) for c in colors[k])))
    return out


def label_font_size(height: int, width: int) -> int:
    """Text height in pixels for an image: ~1/60 of its geometric-mean side, at least 10."""
    return max(10, round(math.sqrt(height * width) / 60))


@functools.lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:  # DejaVu Sans Bold ships with matplotlib (a dependency): the same glyphs everywhere
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans-Bold.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def draw_labels(image: np.ndarray, labels: Sequence[SegmentLabel], font_size: int | None = None) -> np.ndarray:
    """``image`` (uint8 ``[H, W, 3]``) with each label's text in a lightened segment colour on a
    translucent black box, centred on its anchor, or moved up / down by one or two box heights when
    that place is taken by an earlier label (crowded scenes); always inside the image.  Returns a
    new array."""
    from PIL import Image, ImageDraw

    if not labels:
        return image
    h, w = image.shape[:2]
    font = _font(int(font_size or label_font_size(h, w)))
    canvas = Image.fromarray(np.ascontiguousarray(image))  # a copy: the caller's array is not written
    draw = ImageDraw.Draw(canvas, "RGBA")  # RGBA fills are blended onto the RGB image
    pad = max(1, font.size // 6)
    placed: list[tuple[int, int, int, int]] = []
    for lab in labels:
        left, top, right, bottom = draw.textbbox((0, 0), lab.text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        x0 = min(max(lab.anchor[0] - tw // 2, 0), max(w - tw, 0))
        spots = [min(max(lab.anchor[1] - th // 2 + dy, 0), max(h - th, 0)) for dy in (0, -th, th, -2 * th, 2 * th)]
        free = [y for y in spots if not any(x0 < b[2] and b[0] < x0 + tw and y < b[3] and b[1] < y + th for b in placed)]
        y0 = free[0] if free else spots[0]
        placed.append((x0, y0, x0 + tw, y0 + th))
        draw.rectangle((x0, y0, x0 + tw - 1, y0 + th - 1), fill=(0, 0, 0, 170))
        light = tuple(int(255 - 0.35 * (255 - c)) for c in lab.color)
        draw.text((x0 + pad - left, y0 + pad - top), lab.text, font=font, fill=(*light, 255))
    return np.asarray(canvas)
