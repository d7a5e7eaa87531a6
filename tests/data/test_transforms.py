"""Transforms keep image, semantic, instance masks, boxes and crowd mask consistent."""
from __future__ import annotations

import torch

from rtpanoptic.data import masks_to_boxes
from rtpanoptic.data.transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ResizeShortestSide,
    crop,
    hflip,
    resize,
)


def make_sample(h=40, w=60):
    """Image colour encodes the class: R = 10 * semantic, so consistency can be checked after warps."""
    sem = torch.full((h, w), 1, dtype=torch.int64)
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 20:35, 30:50] = True
    masks[2, 36:40, 0:3] = True  # small, at the border
    crowd = torch.zeros(h, w, dtype=torch.bool)
    crowd[2:10, 40:55] = True
    sem[masks[0] | masks[1] | masks[2]] = 0
    sem[crowd] = 2
    sem[0:2, :] = 255
    img = torch.stack([(sem * 10).clamp(max=250), torch.zeros_like(sem), torch.zeros_like(sem)]).to(torch.uint8)
    return {
        "image": img,
        "semantic": sem,
        "instance_masks": masks,
        "boxes": masks_to_boxes(masks),
        "labels": torch.tensor([0, 1, 2]),
        "crowd_mask": crowd,
        "image_id": "x",
        "file_name": "x.png",
    }


def check_consistent(s):
    h, w = s["image"].shape[1:]
    assert s["semantic"].shape == (h, w) and s["crowd_mask"].shape == (h, w)
    assert s["semantic"].dtype == torch.int64 and s["crowd_mask"].dtype == torch.bool
    m = s["instance_masks"]
    assert m.shape[1:] == (h, w) and m.dtype == torch.bool
    assert m.flatten(1).any(1).all()  # empties dropped
    assert len(s["labels"]) == len(s["boxes"]) == m.shape[0]
    assert torch.equal(s["boxes"], masks_to_boxes(m))
    assert (s["semantic"][m.any(0)] == 0).all()
    assert (s["semantic"][s["crowd_mask"]] == 2).all()
    # Nearest-exact labels and bilinear image agree away from edges: check where label is uniform.
    other = (s["semantic"] != 1).float()[None, None]
    interior = torch.nn.functional.max_pool2d(other, 5, stride=1, padding=2)[0, 0] == 0
    assert (s["image"][0][interior].float() - 10).abs().max() <= 10


def test_hflip_exact():
    s = make_sample()
    f = hflip(s)
    check_consistent(f)
    assert torch.equal(f["image"], s["image"].flip(-1)) and torch.equal(f["semantic"], s["semantic"].flip(-1))
    assert f["boxes"][0].tolist() == [60 - 20, 5, 60 - 5, 15]
    assert torch.equal(hflip(f)["instance_masks"], s["instance_masks"])


def test_crop_drops_empty_and_recomputes_boxes():
    s = crop(make_sample(), 0, 10, 18, 30)
    check_consistent(s)
    assert s["labels"].tolist() == [0]  # instances 1 and 2 left the crop
    assert s["boxes"].tolist() == [[0, 5, 10, 15]] and s["image"].shape == (3, 18, 30)


def test_resize_double_then_half():
    s = make_sample()
    up = resize(s, (80, 120))
    check_consistent(up)
    assert up["instance_masks"][0].sum() == 4 * s["instance_masks"][0].sum()
    assert up["boxes"][1].tolist() == [60, 40, 100, 70]
    back = resize(up, (40, 60))
    assert torch.equal(back["semantic"], s["semantic"]) and torch.equal(back["instance_masks"], s["instance_masks"])


def test_random_pipeline_consistent_and_seeded():
    g = torch.Generator().manual_seed(0)
    t = Compose([RandomScale(0.7, 1.3, generator=g), RandomCrop((48, 48), generator=g), RandomHorizontalFlip(generator=g)])
    outs = []
    for _ in range(10):
        o = t(make_sample())
        check_consistent(o)
        assert o["image"].shape == (3, 48, 48)
        outs.append(o)
    g.manual_seed(0)
    again = t(make_sample())
    assert torch.equal(again["image"], outs[0]["image"])
    # padding area (crop larger than the scaled image) is ignore / False
    assert any((o["semantic"] == 255).float().mean() > 0.05 for o in outs)


def test_shortest_side():
    o = ResizeShortestSide([20], max_size=25)(make_sample())
    assert o["image"].shape[1:] == (17, 25)  # capped by max_size
    o = ResizeShortestSide(80)(make_sample())
    assert o["image"].shape[1:] == (80, 120)
    check_consistent(o)


def test_presets_run():
    from rtpanoptic.data.transforms import (
        cityscapes_train_transforms,
        coco_train_transforms,
        synthetic_train_transforms,
    )

    s = make_sample()
    o = cityscapes_train_transforms(crop_size=(30, 40))(s)
    check_consistent(o)
    assert 21 <= o["image"].shape[1] <= 39 and 28 <= o["image"].shape[2] <= 52
    check_consistent(coco_train_transforms(sizes=(32,), max_size=64)(s))
    assert synthetic_train_transforms(size=32)(s)["image"].shape == (3, 32, 32)
