"""COCO-panoptic loader on a tiny dataset written here, and its error cases."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rtpanoptic.data import (
    CITYSCAPES,
    COCO_PANOPTIC,
    COCOPanopticDataset,
    DatasetError,
    cityscapes_image_path,
    collate,
    masks_to_boxes,
)
from rtpanoptic.data.panoptic_format import id2rgb

CATS = [
    {"id": 7, "name": "ball", "isthing": 1, "color": [200, 0, 0]},
    {"id": 3, "name": "grass", "isthing": 0, "color": [0, 200, 0]},
    {"id": 9, "name": "box", "isthing": 1, "color": [0, 0, 200]},
]


def _scene():
    """6x8 id map: grass (id 1000), void 0, two balls (id 5, 300000), one box crowd (id 77)."""
    ids = np.full((6, 8), 1000, np.int64)
    ids[0, :] = 0  # void row
    ids[1:3, 1:3] = 5  # ball A
    ids[3:6, 5:8] = 300000  # ball B (needs the B channel)
    ids[4:6, 0:2] = 77  # crowd box
    segs = [
        {"id": 1000, "category_id": 3, "iscrowd": 0},
        {"id": 5, "category_id": 7, "iscrowd": 0},
        {"id": 300000, "category_id": 7, "iscrowd": 0},
        {"id": 77, "category_id": 9, "iscrowd": 1},
    ]
    return ids, segs


def write_dataset(root, ids=None, segs=None, cats=CATS, image_hw=None, write_image=True):
    ids0, segs0 = _scene()
    ids = ids0 if ids is None else ids
    segs = segs0 if segs is None else segs
    os.makedirs(root / "img", exist_ok=True)
    os.makedirs(root / "pan", exist_ok=True)
    h, w = image_hw or ids.shape
    rgb = (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    if write_image:
        Image.fromarray(rgb).save(root / "img" / "a.jpg.png")
    Image.fromarray(id2rgb(ids)).save(root / "pan" / "a.png")
    data = {
        "images": [{"id": 42, "file_name": "a.jpg.png", "height": h, "width": w}],
        "annotations": [{"image_id": 42, "file_name": "a.png", "segments_info": segs}],
        "categories": cats,
    }
    with open(root / "pan.json", "w") as f:
        json.dump(data, f)
    return rgb


def open_ds(root, **kw):
    return COCOPanopticDataset(root / "img", root / "pan.json", root / "pan", **kw)


def test_sample_contents(tmp_path):
    rgb = write_dataset(tmp_path)
    ds = open_ds(tmp_path)
    assert len(ds) == 1 and ds.description.num_classes == 3
    # train ids in JSON order: ball 0, grass 1, box 2; things: ball -> 0, box -> 1
    s = ds[0]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 6, 8)
    assert torch.equal(s["image"], torch.from_numpy(rgb).permute(2, 0, 1))
    sem = s["semantic"]
    assert sem.dtype == torch.int64
    assert (sem[0] == 255).all()  # void
    assert sem[1, 1] == 0 and sem[4, 6] == 0 and sem[1, 6] == 1
    assert sem[4, 0] == 2  # crowd keeps its class
    assert s["instance_masks"].shape == (2, 6, 8) and s["instance_masks"].dtype == torch.bool
    assert s["instance_masks"][0].sum() == 4 and s["instance_masks"][1].sum() == 9
    assert s["labels"].tolist() == [0, 0]
    assert s["boxes"].tolist() == [[1, 1, 3, 3], [5, 3, 8, 6]]
    assert s["crowd_mask"].sum() == 4 and s["crowd_mask"][4:6, 0:2].all()
    assert s["image_id"] == "42" and s["file_name"].endswith("a.jpg.png")


def test_description_preset_remaps_ids(tmp_path):
    ids, segs = _scene()
    # Use Cityscapes ids: 26 car (thing), 7 road (stuff), 24 person (thing)
    remap = {7: 26, 3: 7, 9: 24}
    segs = [dict(s, category_id=remap[s["category_id"]]) for s in segs]
    write_dataset(tmp_path, ids, segs, cats=CITYSCAPES.coco_categories())
    s = open_ds(tmp_path, description="cityscapes")[0]
    assert s["semantic"][1, 1] == 13 and s["semantic"][1, 6] == 0 and s["semantic"][4, 0] == 11
    assert s["labels"].tolist() == [2, 2]  # car is thing index 2


def test_coco_preset():
    assert COCO_PANOPTIC.num_classes == 133 and COCO_PANOPTIC.num_things == 80
    assert COCO_PANOPTIC.thing_train_ids == list(range(80))
    assert COCO_PANOPTIC.categories[0].name == "person" and COCO_PANOPTIC.categories[-1].id == 200


def test_cityscapes_image_path(tmp_path):
    ids, segs = _scene()
    write_dataset(tmp_path, ids, segs)
    city = tmp_path / "leftImg8bit" / "val" / "frankfurt"
    os.makedirs(city)
    os.rename(tmp_path / "img" / "a.jpg.png", city / "frankfurt_000000_000294_leftImg8bit.png")
    data = json.load(open(tmp_path / "pan.json"))
    data["annotations"][0]["image_id"] = "frankfurt_000000_000294"
    data["images"] = []
    json.dump(data, open(tmp_path / "pan.json", "w"))
    ds = COCOPanopticDataset(
        "", tmp_path / "pan.json", tmp_path / "pan",
        image_path_fn=cityscapes_image_path(str(tmp_path / "leftImg8bit" / "val")),
    )
    assert ds[0]["image"].shape == (3, 6, 8)


def test_cityscapes_layout(tmp_path):
    from rtpanoptic.data import build_dataset

    ids, segs = _scene()
    remap = {7: 26, 3: 7, 9: 24}
    segs = [dict(s, category_id=remap[s["category_id"]]) for s in segs]
    name = "aachen_000001_000019"
    write_dataset(tmp_path, ids, segs, cats=CITYSCAPES.coco_categories())
    os.makedirs(tmp_path / "cs" / "leftImg8bit" / "train" / "aachen")
    os.makedirs(tmp_path / "cs" / "gtFine" / "cityscapes_panoptic_train")
    os.rename(tmp_path / "img" / "a.jpg.png", tmp_path / "cs" / "leftImg8bit" / "train" / "aachen" / f"{name}_leftImg8bit.png")
    os.rename(tmp_path / "pan" / "a.png", tmp_path / "cs" / "gtFine" / "cityscapes_panoptic_train" / f"{name}_gtFine_panoptic.png")
    data = json.load(open(tmp_path / "pan.json"))
    data["images"] = [{"id": name, "file_name": f"{name}_gtFine_leftImg8bit.png", "height": 6, "width": 8}]
    data["annotations"][0].update(image_id=name, file_name=f"{name}_gtFine_panoptic.png")
    json.dump(data, open(tmp_path / "cs" / "gtFine" / "cityscapes_panoptic_train.json", "w"))
    ds = build_dataset("cityscapes", tmp_path / "cs", "train")
    import pickle

    ds = pickle.loads(pickle.dumps(ds))
    s = ds[0]
    assert ds.description == CITYSCAPES and s["image_id"] == name and s["labels"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("kitti", tmp_path, "train")


def test_masks_to_boxes_empty_and_edges():
    m = torch.zeros(2, 4, 5, dtype=torch.bool)
    m[0, 3, 4] = True
    assert masks_to_boxes(m).tolist() == [[4, 3, 5, 4], [0, 0, 0, 0]]
    assert masks_to_boxes(torch.zeros(0, 4, 5, dtype=torch.bool)).shape == (0, 4)


def test_collate_pads(tmp_path):
    write_dataset(tmp_path)
    s = open_ds(tmp_path)[0]
    b = collate([s, s])
    assert b["images"].shape == (2, 3, 128, 128) and b["image_sizes"] == [(6, 8), (6, 8)]
    assert (b["images"][:, :, 6:, :] == 0).all() and (b["images"][:, :, :, 8:] == 0).all()
    assert torch.equal(b["images"][0, :, :6, :8], s["image"])
    assert b["semantic"][0].shape == (128, 128) and (b["semantic"][0][6:] == 255).all()
    assert b["instance_masks"][1].shape == (2, 128, 128) and b["instance_masks"][1].sum() == 13
    assert b["crowd_mask"][0].sum() == 4 and len(b["labels"]) == 2 and b["image_id"] == ["42", "42"]


# ------------------------------------------------------------------ bad input
def test_missing_image(tmp_path):
    write_dataset(tmp_path, write_image=False)
    with pytest.raises(DatasetError, match=r"a\.jpg\.png.*image file not found"):
        open_ds(tmp_path)[0]


def test_missing_png(tmp_path):
    write_dataset(tmp_path)
    os.remove(tmp_path / "pan" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png.*panoptic PNG file not found"):
        open_ds(tmp_path)[0]


def test_png_id_not_in_segments_info(tmp_path):
    ids, segs = _scene()
    write_dataset(tmp_path, ids, [s for s in segs if s["id"] != 300000])
    with pytest.raises(DatasetError, match=r"a\.png.*\[300000\].*not in its segments_info"):
        open_ds(tmp_path)[0]


def test_segment_without_pixels(tmp_path):
    ids, segs = _scene()
    write_dataset(tmp_path, ids, segs + [{"id": 9999, "category_id": 7, "iscrowd": 0}])
    with pytest.raises(DatasetError, match=r"a\.png.*\[9999\].*no pixels"):
        open_ds(tmp_path)[0]


def test_unknown_category(tmp_path):
    ids, segs = _scene()
    segs[1]["category_id"] = 123
    write_dataset(tmp_path, ids, segs)
    with pytest.raises(DatasetError, match=r"pan\.json.*a\.png.*unknown category id 123"):
        open_ds(tmp_path)


def test_malformed_json(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "pan.json").write_text('{"annotations": [')
    with pytest.raises(DatasetError, match=r"pan\.json: malformed JSON"):
        open_ds(tmp_path)
    (tmp_path / "pan.json").write_text('{"annotations": []}')
    with pytest.raises(DatasetError, match=r"pan\.json: missing or non-list 'categories'"):
        open_ds(tmp_path)


def test_size_mismatch(tmp_path):
    write_dataset(tmp_path, image_hw=(7, 8))
    with pytest.raises(DatasetError, match="differs from its panoptic PNG"):
        open_ds(tmp_path)[0]


def test_corrupt_png(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "pan" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"a\.png: cannot read panoptic PNG"):
        open_ds(tmp_path)[0]
