"""Writers for :class:`~rtpanoptic.inference.PanopticResult`: COCO-panoptic PNG + JSON, overlays."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data.panoptic_format import id2rgb


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
    from PIL import Image

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id2rgb(result.panoptic.numpy())).save(png_path)
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
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = [{"id": a["image_id"], "file_name": a["file_name"]} for a in annotations]
    data = {"annotations": list(annotations), "categories": description.coco_categories(), "images": list(images)}
    json_path.write_text(json.dumps(data))


def _instance_color(color, k: int) -> np.ndarray:
    """The category colour shifted a little per instance, so neighbours of a class differ."""
    rng = np.random.default_rng(k + 1)
    return np.clip(np.asarray(color, dtype=np.int64) + rng.integers(-60, 61, size=3), 0, 255)


def colorize(result) -> np.ndarray:
    """``[H, W, 3]`` uint8: stuff in its category colour, each thing a variant of it, void black."""
    colors = result.description.colors
    lut = np.zeros((len(result.segments_info) + 1, 3), dtype=np.uint8)
    for k, s in enumerate(result.segments_info):
        base = colors[s["train_id"]]
        lut[s["id"]] = _instance_color(base, k) if s["isthing"] else base
    return lut[result.panoptic.numpy()]


def boundaries(ids: np.ndarray) -> np.ndarray:
    """bool ``[H, W]``: pixels whose right or lower neighbour belongs to another segment."""
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def overlay(image, result, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised segmentation over the uint8 RGB ``image`` (HWC); white boundaries."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    image = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if image.shape[:2] != tuple(result.panoptic.shape):
        raise ValueError(f"overlay: image is {image.shape[:2]} but the result is {tuple(result.panoptic.shape)}")
    ids = result.panoptic.numpy()
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(result).astype(np.float32)
    blended[ids == 0] = image[ids == 0]
    blended[boundaries(ids)] = 255
    return blended.round().astype(np.uint8)


def write_overlay(image, result, path: str | Path, alpha: float = 0.5) -> None:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, result, alpha)).save(path)
