"""Writers: COCO-panoptic PNG/JSON round trip, colours and overlays."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rtpanoptic.data.description import Category, DatasetDescription
from rtpanoptic.data.panoptic_format import rgb2id
from rtpanoptic.inference import Detections, PanopticResult
from rtpanoptic.viz import (
    boundaries,
    colorize,
    label_font_size,
    overlay,
    segment_labels,
    write_coco_panoptic,
    write_coco_panoptic_json,
    write_overlay,
)

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
    out = overlay(image, res, alpha=0.5, labels=False)
    assert tuple(out[5, 0]) == (100, 100, 100)  # void, away from boundaries: untouched
    assert tuple(out[0, 6]) == (50, 50, 178)  # 0.5 * 100 + 0.5 * (0, 0, 255), rounded half to even
    write_overlay(image, res, tmp_path / "o.png", labels=False)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), out)


def test_boundaries():
    ids = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    assert boundaries(ids).tolist() == [[False, True, False], [True, True, True], [False, False, False]]


# ----------------------------------------------------------------------------------- labels
def _scene():
    """120x200: sky (top band), two cars (rectangles), one U-shaped car whose centroid lies outside it."""
    h, w = 120, 200
    pan = torch.zeros(h, w, dtype=torch.int32)
    pan[:30] = 4  # sky
    pan[50:90, 10:50] = 1  # car 1
    pan[45:70, 80:110] = 2  # car 2
    u = torch.zeros(h, w, dtype=torch.bool)
    u[60:110, 130:190] = True
    u[60:95, 145:175] = False  # a U open at the top: its centroid falls in the hole
    pan[u] = 3
    infos = [{"id": k, "category_id": 7, "train_id": 1, "isthing": True, "score": 0.9, "area": 0, "bbox": [0, 0, 0, 0]}
             for k in (1, 2, 3)]
    infos.append({"id": 4, "category_id": 5, "train_id": 0, "isthing": False, "score": 1.0, "area": 0,
                  "bbox": [0, 0, 0, 0]})
    det = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    return PanopticResult(pan, infos, torch.zeros(h, w, dtype=torch.int64), det, DESC)


def test_segment_labels_texts_and_anchors():
    res = _scene()
    ids = res.panoptic.numpy()
    labels = segment_labels(res)
    assert [(lab.segment_id, lab.text) for lab in labels] == [(1, "car 1"), (2, "car 2"), (3, "car 3"), (4, "sky")]
    for lab in labels:
        x, y = lab.anchor
        assert ids[y, x] == lab.segment_id  # always on the segment
        ys, xs = np.nonzero(ids == lab.segment_id)
        cx, cy = xs.mean(), ys.mean()
        if ids[int(np.floor(cy + 0.5)), int(np.floor(cx + 0.5))] == lab.segment_id:
            assert (x, y) == (int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5)))  # the centroid itself
        else:  # the U: its pixel nearest to the centroid
            assert lab.segment_id == 3
            assert (x - cx) ** 2 + (y - cy) ** 2 == pytest.approx(((xs - cx) ** 2 + (ys - cy) ** 2).min())
    # the instance numbers are those of instance_map
    for lab in labels[:3]:
        x, y = lab.anchor
        assert lab.text == f"car {int(res.instance_map[y, x])}"
    assert tuple(labels[3].color) == (0, 0, 255)  # stuff: its category colour


def test_labels_drawn_only_near_each_anchor():
    res = _scene()
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    plain = overlay(image, res, labels=False)
    labelled = overlay(image, res)
    assert np.array_equal(labelled, overlay(image, res))  # deterministic
    changed = np.any(labelled != plain, axis=2)
    size = label_font_size(120, 200)
    near = np.zeros_like(changed)
    for lab in segment_labels(res):
        x, y = lab.anchor
        half_w = len(lab.text) * size // 2 + size  # glyphs are narrower than 1 em, plus padding
        half_h = size
        box = np.zeros_like(changed)
        box[max(y - half_h, 0) : y + half_h + 1, max(x - half_w, 0) : x + half_w + 1] = True
        assert changed[y - 2 : y + 3, x - 5 : x + 6].all()  # every segment gets its label, centred on its anchor
        near |= box
    assert changed.any() and not changed[~near].any()


def test_label_font_size():
    assert label_font_size(128, 128) == 10  # at least 10 px
    assert label_font_size(512, 1024) == 12
    assert label_font_size(1024, 2048) == 24


def test_labels_on_an_empty_result():
    res = _result()
    res.segments_info.clear()
    res.panoptic.zero_()
    image = np.full((6, 8, 3), 100, np.uint8)
    assert np.array_equal(overlay(image, res), image)


def test_crowded_labels_do_not_cover_each_other():
    """Two segments whose centroids nearly coincide: the second label moves off the first, nearby."""
    pan = torch.zeros(60, 100, dtype=torch.int32)
    pan[20:40, 20:80] = 1
    pan[28:32, 45:55] = 2  # a small car inside the big one's box, same centroid
    infos = [{"id": k, "category_id": 7, "train_id": 1, "isthing": True, "score": 0.9, "area": 0, "bbox": [0, 0, 0, 0]}
             for k in (1, 2)]
    det = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    res = PanopticResult(pan, infos, torch.zeros(60, 100, dtype=torch.int64), det, DESC)
    a, b = segment_labels(res)
    assert abs(a.anchor[1] - b.anchor[1]) <= 3 and abs(a.anchor[0] - b.anchor[0]) <= 3  # would overlap
    image = np.zeros((60, 100, 3), np.uint8)
    out = overlay(image, res, alpha=0.0)  # only boundaries and labels on black
    dark = overlay(image, res, alpha=0.0, labels=False)
    rows = np.nonzero(np.any(out != dark, axis=(1, 2)))[0]
    # two label boxes stacked: the changed rows span about two text heights, not one
    size = label_font_size(60, 100)
    assert rows.max() - rows.min() + 1 >= int(1.6 * size)
    assert rows.min() >= a.anchor[1] - 2 * size and rows.max() <= a.anchor[1] + 2 * size
