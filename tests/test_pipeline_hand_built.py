"""End-to-end expectations that share no glue with the pipeline (issue 28): hand-built head outputs
whose panoptic result follows from the paper's / release's formulas written out here, so a change in
:func:`rtpanoptic.inference.semantic_probs_on` (the resampling of stride-8 semantics to the levelness
grid), :meth:`Predictor.detect` or :meth:`DevicePostprocess._fuse` (the crop of the grid, the release
mode's padding cell) changes a number below.  tests/test_inference.py holds the semantic-stride-4 scene."""
import math

import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.data.description import Category, DatasetDescription
from rtpanoptic.inference import Predictor
from rtpanoptic.model import HeadOutputs, build_model
from rtpanoptic.ops import reference

# train ids: 0 = road (stuff, id 3), 1 = sky (stuff, id 5), 2 = car (thing, id 7)
DESC = DatasetDescription(
    "hand-built", (Category(3, "road", False, (0, 0, 0)), Category(5, "sky", False, (0, 0, 255)),
                   Category(7, "car", True, (255, 0, 0))),
)
BIG = 10.0
CAR = (16.0, 16.0, 56.0, 56.0)


def _model(**kw):
    torch.manual_seed(0)
    return build_model("r18-fpn", description=DESC, channels=16, **kw).eval()


def _car_outputs(size: int, car=CAR, semantic_stride: int = 4) -> HeadOutputs:
    """Head outputs of a ``size x size`` padded image with one car box ``car`` predicted at the P3 cell of
    its centre (offsets exact at every P3 cell, clamped to >= 1), levelness P3 inside the car; semantic
    logits (stride ``semantic_stride``) all 0 (the tests set them)."""
    x0, y0, x1, y1 = car
    offsets, centerness, logits = [], [], []
    for s in (8, 16, 32, 64, 128):
        n = size // s
        c = torch.arange(n, dtype=torch.float32) * s + s // 2
        y, x = torch.meshgrid(c, c, indexing="ij")
        offsets.append(torch.stack([x - x0, y - y0, x1 - x, y1 - y]).clamp(min=1.0)[None])
        centerness.append(torch.full((1, 1, n, n), BIG))
        cl = torch.full((1, 1, n, n), -BIG)
        if s == 8:
            cl[0, 0, int((y0 + y1) / 2) // 8, int((x0 + x1) / 2) // 8] = BIG
        logits.append(cl)
    g = size // 4
    c4 = torch.arange(g, dtype=torch.float32) * 4 + 2
    inside = ((c4 >= y0) & (c4 < y1))[:, None] & ((c4 >= x0) & (c4 < x1))[None, :]
    levelness = torch.full((1, 6, g, g), -BIG)
    levelness[0, 0][~inside] = BIG
    levelness[0, 1][inside] = BIG
    gs = size // semantic_stride
    return HeadOutputs(offsets, centerness, logits, levelness, torch.zeros(1, 3, gs, gs))


def test_stride_8_semantics_are_resampled_with_half_pixel_centres():
    """Semantic stride 8 (the release's), levelness stride 4, a 128 x 128 image, no car (stuff only).
    Sky's logit is the semantic column index minus 5.29, road's 0: at levelness column j the resampled
    logit is ``clamp(j / 2 - 0.25, 0, 15) - 5.29`` (align_corners=False: source column (j + 0.5) / 2 - 0.5;
    a linear logit stays linear) -- sky from j = 12 (5.75 > 5.29; j = 11 gives 5.25) on.  With
    align_corners=True the source column would be 15 j / 31 and sky would start at j = 11 (5.32).  So road
    is input columns 0-47 (48 x 128 = 6144 pixels), sky 48-127 (10240)."""
    out = _car_outputs(128, semantic_stride=8)
    out.class_logits[0].fill_(-BIG)  # no candidate
    out.semantic[0, 1] = torch.arange(16, dtype=torch.float32) - 5.29
    out.semantic[0, 2] = -BIG
    (res,) = Predictor(_model(semantic_stride=8)).postprocess(out, [(128, 128)])
    want = torch.ones(128, 128, dtype=torch.int32)
    want[:, 48:] = 2
    assert torch.equal(res.panoptic, want)
    assert [(s["category_id"], s["area"], s["bbox"]) for s in res.segments_info] == [
        (3, 6144, [0, 0, 48, 128]), (5, 10240, [48, 0, 80, 128])]


def test_stride_8_scene_with_a_car():
    """The scene above with the car (16, 16, 56, 56) (semantic cells 2-5 say car, +10): the query is the
    car's box with score sigmoid(10)^2 (the P3 cell of its centre, centerness 10), its mask the 10 x 10
    levelness cells inside the box (1600 pixels); road keeps its columns 0-47 minus the car's
    (6144 - 40 * 32 = 4864), sky 10240 - 40 * 8 = 9920."""
    out = _car_outputs(128, semantic_stride=8)
    out.semantic[0, 1] = torch.arange(16, dtype=torch.float32) - 5.29
    out.semantic[0, 2] = -BIG
    out.semantic[0, 2, 2:7, 2:7] = BIG
    pred = Predictor(_model(semantic_stride=8))
    (det,) = pred.detect(out, [(128, 128)])
    assert det.boxes.tolist() == [list(CAR)] and det.labels.tolist() == [0]
    assert math.isclose(det.scores.item(), 1 / (1 + math.exp(-BIG)) ** 2, rel_tol=1e-6)
    (res,) = pred.postprocess(out, [(128, 128)])
    want = torch.full((128, 128), 2, dtype=torch.int32)
    want[:, 48:] = 3
    want[16:56, 16:56] = 1
    assert torch.equal(res.panoptic, want)
    assert [(s["category_id"], s["area"]) for s in res.segments_info] == [(7, 1600), (3, 4864), (5, 9920)]


def _release_car_mask(out: HeadOutputs, box, size, sigma: float, score: str, rows: int) -> torch.Tensor:
    """The release's mask of one query written out: its soft mask ``score(B, box) * P_sem(car)`` on the
    first ``rows`` rows and columns of the levelness grid, x4 bilinear (half-pixel centres), cropped to
    ``size``, ``>= sigma``.  The release upsampled its whole padded feature map: ``rows`` = the grid."""
    dense, _ = ops.gather_levelness(list(out.box_offsets), out.levelness, out_stride=4, backend="reference")
    probs = out.semantic.softmax(1)[0, 2]
    soft = reference._score_map(dense[0], torch.tensor([box]), score)[0] * probs
    up = F.interpolate(soft[None, None, :rows, :rows], scale_factor=4, mode="bilinear", align_corners=False)
    return up[0, 0, : size[0], : size[1]] >= sigma


@pytest.mark.parametrize("backend", [None, "reference"])
def test_release_masks_read_the_padding_cell(backend):
    """mask_mode="release" on a 100 x 100 image (padded to 128: a 32 x 32 levelness grid, 25 cells
    cover the image): the car (16, 60, 56, 100) ends at the image's last row, its box is clipped to
    (16, 60, 56, 99) (the release's [0, W-1] x [0, H-1]).  Levelness row 24 (centre 98) is inside the
    car, row 25 (centre 102, in the padding) is not: the bilinear upsampling of input rows 98 and 99
    reads row 25 as the release (which upsampled its padded map) did.  The soft mask is 0.93-0.975 on
    the car's cells (rows 15-24, columns 4-13) and < 1e-4 elsewhere, so with sigma 0.7 a pixel is in
    where both its bilinear weights on car cells are 7/8 or more: rows 61-98 (row 60: 0.625 x cell 15,
    row 99: 0.625 x cell 24 + 0.375 x padding cell 25), columns 17-54, 38 x 38 = 1444 pixels (without
    the padding cell row 99 would be in: 1482).  Road (semantic stride 4, argmax of the grid, nearest)
    everywhere outside the car's cells; the car's cells outside the mask are void."""
    out = _car_outputs(128, car=(16.0, 60.0, 56.0, 100.0))
    out.semantic[0, 1] = -BIG
    out.semantic[0, 2] = -BIG
    out.semantic[0, 2, 15:25, 4:14] = BIG
    pred = Predictor(_model(), backend=backend, mask_mode="release", sigma=0.7, score="iou")
    (det,) = pred.detect(out, [(100, 100)])
    assert det.boxes.tolist() == [[16.0, 60.0, 56.0, 99.0]]
    (res,) = pred.postprocess(out, [(100, 100)])
    mask = _release_car_mask(out, [16.0, 60.0, 56.0, 99.0], (100, 100), 0.7, "iou", rows=32)
    without_padding = _release_car_mask(out, [16.0, 60.0, 56.0, 99.0], (100, 100), 0.7, "iou", rows=25)
    rectangle = torch.zeros(100, 100, dtype=torch.bool)
    rectangle[61:99, 17:55] = True
    assert torch.equal(mask, rectangle) and int(without_padding.sum()) == 1482  # the scene tells them apart
    car_cells = torch.zeros(100, 100, dtype=torch.bool)
    car_cells[60:100, 16:56] = True
    want = torch.zeros(100, 100, dtype=torch.int32)
    want[mask] = 1
    want[~mask & ~car_cells] = 2
    assert torch.equal(res.panoptic, want)
    assert [(s["category_id"], s["area"]) for s in res.segments_info] == [
        (7, 1444), (3, 100 * 100 - 40 * 40)]
