"""Predictor: hand-built head outputs with a known answer, shapes, batching, backends."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rtpanoptic import ops
from rtpanoptic.data.description import Category, DatasetDescription
from rtpanoptic.inference import (
    PIPELINE_OPS,
    PanopticResult,
    Predictor,
    pad_batch,
    segment_areas_and_boxes,
    to_image_tensors,
)
from rtpanoptic.model import HeadOutputs, build_model

# train ids: 0 = sky (stuff, id 5), 1 = car (thing, id 7), 2 = person (thing, id 9)
DESC = DatasetDescription(
    "predictor-test",
    (Category(5, "sky", False, (0, 0, 255)), Category(7, "car", True, (255, 0, 0)),
     Category(9, "person", True, (0, 255, 0))),
)


def _tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("r18-fpn", description=DESC, channels=16, **kw).eval()


def _one_object_outputs(size=128):
    """Head outputs of a 128x128 image with one car at box (16, 16, 56, 56) predicted at P3 cell
    (4, 4) (centre (36, 36)); offsets exact for every P3 cell; levelness picks P3 inside the box."""
    big = 10.0
    offsets, centerness, logits = [], [], []
    for s in (8, 16, 32, 64, 128):
        n = size // s
        c = torch.arange(n, dtype=torch.float32) * s + s // 2
        y, x = torch.meshgrid(c, c, indexing="ij")
        o = torch.stack([x - 16, y - 16, 56 - x, 56 - y]).clamp(min=1.0)[None]
        offsets.append(o)
        centerness.append(torch.full((1, 1, n, n), big))
        cl = torch.full((1, 2, n, n), -big)
        if s == 8:
            cl[0, 0, 4, 4] = big  # a car at (36, 36)
            cl[0, 0, 4, 5] = 0.0  # a weaker duplicate (same box after NMS-irrelevant decode)
        logits.append(cl)
    g = size // 4
    c4 = torch.arange(g, dtype=torch.float32) * 4 + 2
    inside = ((c4 >= 16) & (c4 < 56))
    inside2d = inside[:, None] & inside[None, :]
    levelness = torch.full((1, 6, g, g), -big)
    levelness[0, 0][~inside2d] = big
    levelness[0, 1][inside2d] = big
    semantic = torch.zeros(1, 3, g, g)
    semantic[0, 0][~inside2d] = big
    semantic[0, 1][inside2d] = big
    return HeadOutputs(offsets, centerness, logits, levelness, semantic)


def test_hand_built_scene():
    pred = Predictor(_tiny_model())
    (res,) = pred.postprocess(_one_object_outputs(), [(128, 128)])
    assert isinstance(res, PanopticResult)
    det = res.detections
    assert det.boxes.shape == (1, 4)  # the duplicate is suppressed by NMS
    assert torch.allclose(det.boxes[0], torch.tensor([16.0, 16.0, 56.0, 56.0]))
    assert det.labels.tolist() == [0]
    assert math.isclose(det.scores[0].item(), torch.sigmoid(torch.tensor(10.0)).item() ** 2, rel_tol=1e-6)
    info = {s["id"]: s for s in res.segments_info}
    assert len(info) == 2
    car, sky = info[1], info[2]
    assert (car["category_id"], car["train_id"], car["isthing"]) == (7, 1, True)
    assert car["bbox"] == [16, 16, 40, 40] and car["area"] == 1600
    assert (sky["category_id"], sky["isthing"], sky["area"]) == (5, False, 128 * 128 - 1600)
    expected = torch.full((128, 128), 2, dtype=torch.int32)
    expected[16:56, 16:56] = 1
    assert torch.equal(res.panoptic, expected)
    assert torch.equal(res.instance_masks, (expected == 1)[None])
    assert res.category_map[20, 20] == 7 and res.category_map[0, 0] == 5
    assert res.instance_map.max() == 1 and res.instance_map[0, 0] == 0
    # semantic: the bilinearly upsampled logits' argmax; the edge may move by a pixel.
    assert res.semantic[17:55, 17:55].eq(1).all()
    outside = torch.ones(128, 128, dtype=torch.bool)
    outside[15:57, 15:57] = False
    assert res.semantic[outside].eq(0).all()


def test_detection_conventions():
    """Threshold on p before the centerness product; per-level top-k; class-aware then
    class-agnostic NMS."""
    out = _one_object_outputs()
    out.class_logits[0][0, 1, 4, 4] = 10.0  # the same location also says "person": same box
    out.centerness[0][0, 0, 4, 4] = -3.0  # low centerness: score sigmoid(-3) * p ~ 0.047
    # P3 candidates, all with the box (16, 16, 56, 56): car and person at (4, 4) with score 0.047,
    # car at (4, 5) with p = sigmoid(0) = 0.5 and score ~0.5.
    model = _tiny_model()
    # Class-aware NMS keeps both classes; the release's class-agnostic NMS (0.97) drops one.
    (det,) = Predictor(model, pre_nms_thresh=0.4).detect(out, [(128, 128)])
    assert sorted(det.labels.tolist()) == [0, 1]
    (det,) = Predictor(model, pre_nms_thresh=0.4, global_nms_thresh=0.97).detect(out, [(128, 128)])
    assert det.labels.numel() == 1
    # The person (p ~ 1, score 0.047 < 0.4) was kept: the threshold ignores centerness.
    (det,) = Predictor(model, pre_nms_thresh=0.4).detect(out, [(128, 128)])
    assert det.scores.min().item() < 0.05
    # Per-level top-k: with 1 candidate per level only the best of P3 survives.
    (det,) = Predictor(model, pre_nms_thresh=0.4, pre_nms_top_n=1).detect(out, [(128, 128)])
    assert det.labels.numel() == 1
    assert det.scores[0].item() > 0.9 * torch.sigmoid(torch.tensor(10.0)).item() * 0.5


def test_crop_to_input_size():
    pred = Predictor(_tiny_model())
    out = _one_object_outputs()
    out.class_logits[0][0, 1, 10, 4] = 10.0  # a person centred at (36, 84): in the padding, never a query
    (res,) = pred.postprocess(out, [(50, 37)])  # image in the top-left of the pad
    assert res.panoptic.shape == (50, 37) and res.semantic.shape == (50, 37)
    assert sum(s["area"] for s in res.segments_info) == 50 * 37
    car = next(s for s in res.segments_info if s["isthing"])
    assert car["bbox"] == [16, 16, 21, 34]
    assert res.detections.boxes.tolist() == [[16.0, 16.0, 37.0, 50.0]]  # clipped to the image


def test_no_query_gives_stuff_only():
    pred = Predictor(_tiny_model(), pre_nms_thresh=1.0)
    (res,) = pred.postprocess(_one_object_outputs(), [(128, 128)])
    assert res.detections.boxes.shape == (0, 4)
    assert [s["isthing"] for s in res.segments_info] == [False]
    assert res.instance_masks.shape == (0, 128, 128)
    (res,) = pred(np.zeros((64, 80, 3), np.uint8))
    assert not any(s["isthing"] for s in res.segments_info)


def test_image_formats_and_batch():
    model = _tiny_model()
    pred = Predictor(model, pre_nms_thresh=0.0, post_nms_top_n=10, sigma=0.01)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
    batch = pred([a, b])
    assert [r.panoptic.shape for r in batch] == [(100, 120), (128, 64)]
    for r in batch:
        assert sum(s["area"] for s in r.segments_info) == int((r.panoptic > 0).sum())
    alone = pred(Image.fromarray(a))[0]
    assert torch.equal(alone.panoptic, batch[0].panoptic)
    as_tensor = pred(torch.from_numpy(b).permute(2, 0, 1))[0]
    assert torch.equal(as_tensor.panoptic, batch[1].panoptic)
    assert len(pred(np.stack([a[:64, :64], a[:64, :64]]))) == 2


def test_input_errors():
    pred = Predictor(_tiny_model())
    with pytest.raises(TypeError, match="uint8"):
        pred(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        pred(np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match="unknown option"):
        Predictor(_tiny_model(), sigmaa=0.1)
    with pytest.raises(ValueError, match="inference.score"):
        Predictor(_tiny_model(), score="giou")
    with pytest.raises(ValueError, match="backend"):
        Predictor(_tiny_model(), backend="tpu")


def test_backend_must_cover_the_pipeline():
    avail = ops.available_backends("cpu")
    partial = [b for b in ops.BACKENDS if any(b not in avail[op] for op in PIPELINE_OPS)]
    for b in partial:
        with pytest.raises(ValueError, match="cannot run"):
            Predictor(_tiny_model(), backend=b)


def test_released_preset_pipeline():
    """tri-cityscapes-r50 (random weights): semantics at stride 8, "tri" score, sigma 0.4."""
    torch.manual_seed(0)
    model = build_model("tri-cityscapes-r50").eval()
    pred = Predictor(model, pre_nms_thresh=0.0, post_nms_top_n=10)
    assert (pred.options.score, pred.options.sigma) == ("tri", 0.4)
    (res,) = pred(np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8))
    assert res.panoptic.shape == (120, 200) and res.semantic.shape == (120, 200)
    assert len(res.detections.scores) == 10
    assert set(res.detections.labels.tolist()) <= set(range(8))
    ids = {c.id for c in model.description.categories}
    assert all(s["category_id"] in ids for s in res.segments_info)


def test_pad_and_convert():
    ims = to_image_tensors([np.zeros((5, 7, 3), np.uint8), torch.ones(3, 130, 2, dtype=torch.uint8)])
    out = pad_batch(ims)
    assert out.shape == (2, 3, 256, 128) and out[1, :, :130, :2].eq(1).all() and out[1, :, 130:].eq(0).all()


def test_segment_areas_and_boxes():
    m = torch.zeros(6, 8, dtype=torch.int32)
    m[1:3, 2:7] = 1
    m[5, 0] = 3
    areas, boxes = segment_areas_and_boxes(m, 3, 1, (6, 8))
    assert areas == [10, 0, 1]
    assert boxes == [[2, 1, 5, 2], [0, 0, 0, 0], [0, 5, 1, 1]]
    # stride 2, cropped to 11 x 15: the last row and column of cells hold one pixel
    areas, boxes = segment_areas_and_boxes(m, 3, 2, (11, 15))
    assert areas == [40, 0, 2]
    assert boxes == [[4, 2, 10, 4], [0, 0, 0, 0], [0, 10, 2, 1]]


def _common_backends():
    """Backends other than the reference that run the whole pipeline on CPU."""
    avail = ops.available_backends("cpu")
    return [b for b in ops.BACKENDS if b != "reference" and all(b in avail[op] for op in PIPELINE_OPS)]


@pytest.mark.parametrize("backend", _common_backends())
def test_backends_give_identical_panoptic_maps(backend):
    """Every backend that can run the whole pipeline on CPU, against the reference."""
    model = _tiny_model(seed=1)
    with torch.no_grad():  # push the random model to produce things
        model.panoptic_head.box_cls_logits.bias.fill_(0.0)
        model.panoptic_head.bbox_pred.bias.fill_(math.log(16.0))  # ~32 px boxes
        model.panoptic_head.bbox_pred.weight.mul_(50.0)  # that vary from place to place
        model.panoptic_head.cls_logits.bias.copy_(torch.tensor([0.0, 2.0, 2.0]))
    image = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    opts = dict(pre_nms_thresh=0.3, pre_nms_top_n=50, post_nms_top_n=20, sigma=0.02)
    want = Predictor(model, backend="reference", **opts)(image)[0]
    got = Predictor(model, backend=backend, **opts)(image)[0]
    assert sum(s["isthing"] for s in want.segments_info) >= 2
    assert torch.equal(got.panoptic, want.panoptic)
    assert got.segments_info == want.segments_info


@pytest.mark.parametrize("backend", sorted({b for op in PIPELINE_OPS for b in ops.available_backends("cpu")[op]}
                                           - {"reference"}))
def test_each_op_backend_in_pipeline(backend, monkeypatch):
    """Backends covering only some ops: route those ops to it, the rest to the reference."""
    import rtpanoptic.inference as inference

    avail = ops.available_backends("cpu")
    model = _tiny_model(seed=1)
    with torch.no_grad():
        model.panoptic_head.box_cls_logits.bias.fill_(0.0)
        model.panoptic_head.bbox_pred.bias.fill_(math.log(16.0))  # ~32 px boxes
        model.panoptic_head.bbox_pred.weight.mul_(50.0)  # that vary from place to place
        model.panoptic_head.cls_logits.bias.copy_(torch.tensor([0.0, 2.0, 2.0]))
    image = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    opts = dict(pre_nms_thresh=0.3, pre_nms_top_n=50, post_nms_top_n=20, sigma=0.02)
    want = Predictor(model, backend="reference", **opts)(image)[0]

    class Routed:
        def __getattr__(self, name):
            fn = getattr(ops, name)
            if name not in PIPELINE_OPS:
                return fn
            chosen = backend if backend in avail[name] else "reference"
            return lambda *a, backend=None, **k: fn(*a, backend=chosen, **k)

    monkeypatch.setattr(inference, "ops", Routed())
    got = Predictor(model, **opts)(image)[0]
    assert torch.equal(got.panoptic, want.panoptic)
    assert got.segments_info == want.segments_info
