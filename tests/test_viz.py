"""Writers: COCO-panoptic PNG/JSON round trip, colours and overlays."""
import json

import numpy as np
import torch
from PIL import Image

from rtpanoptic.data.description import Category, DatasetDescription
from rtpanoptic.data.panoptic_format import rgb2id
from rtpanoptic.inference import Detections, PanopticResult
from rtpanoptic.viz import boundaries, colorize, overlay, write_coco_panoptic, write_coco_panoptic_json, write_overlay

DESC = DatasetDescription(
    "viz-test", (Category(5, "sky", False, (0, 0, 255)), Category(7, "car", True, (255, 0, 0)))
)


def _result():
    pan = torch.zeros(6, 8, dtype=torch.int32)
    pan[:, 4:] = 2  # sky
    pan[1:3, 1:3] = 1  # car
    infos = [
        {"id": 1, "category_id": 7, "train_id": 1, "isthing": True, "score": 0.9, "area": 4, "bbox": [1, 1, 2, 2]},
        {"id": 2, "category_id": 5, "train_id": 0, "isthing": False, "score": 1.0, "area": 24, "bbox": [4, 0, 4, 6]},
    ]
    det = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    return PanopticResult(pan, infos, torch.zeros(6, 8, dtype=torch.int64), det, DESC)


def test_coco_panoptic_round_trip(tmp_path):
    res = _result()
    ann = write_coco_panoptic(res, tmp_path / "pred" / "img1.png", image_id="img1")
    ids = rgb2id(np.asarray(Image.open(tmp_path / "pred" / "img1.png")))
    assert np.array_equal(ids, res.panoptic.numpy())
    assert ann["file_name"] == "img1.png" and ann["image_id"] == "img1"
    assert [(s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in ann["segments_info"]] == [
        (1, 7, 0, 4), (2, 5, 0, 24)
    ]
    write_coco_panoptic_json([ann], DESC, tmp_path / "pred.json")
    data = json.loads((tmp_path / "pred.json").read_text())
    assert data["annotations"][0]["segments_info"][1]["category_id"] == 5
    assert [c["id"] for c in data["categories"]] == [5, 7]
    assert data["images"] == [{"id": "img1", "file_name": "img1.png"}]


def test_colorize_and_overlay(tmp_path):
    res = _result()
    col = colorize(res)
    assert col.shape == (6, 8, 3) and col.dtype == np.uint8
    assert tuple(col[0, 5]) == (0, 0, 255)  # stuff: its category colour
    assert tuple(col[0, 0]) == (0, 0, 0)  # void
    assert tuple(col[1, 1]) != (0, 0, 0)
    image = np.full((6, 8, 3), 100, np.uint8)
    out = overlay(image, res, alpha=0.5)
    assert tuple(out[5, 0]) == (100, 100, 100)  # void, away from boundaries: untouched
    assert tuple(out[0, 6]) == (50, 50, 178)  # 0.5 * 100 + 0.5 * (0, 0, 255), rounded half to even
    write_overlay(image, res, tmp_path / "o.png")
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (6, 8, 3)


def test_boundaries():
    ids = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    assert boundaries(ids).tolist() == [[False, True, False], [True, True, True], [False, False, False]]
