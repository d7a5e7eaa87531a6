"""Predictor.postprocess (fused: semantic map from ops.upsample_argmax, segment stats and the id map
from the grid) against the previous implementation (benchmarks/previous_postprocess.py): same panoptic
map, segments, semantic map and detections, on several seeds and image sizes (also sizes that
are not multiples of the strides) with both tested presets."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpanoptic.benchmark import heavy_postprocess_load
from rtpanoptic.inference import Predictor, segment_areas_and_boxes, segment_stats, upsample_ids
from rtpanoptic.model import build_model


def _previous():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "previous_postprocess.py"
    spec = importlib.util.spec_from_file_location("previous_postprocess", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PREVIOUS = _previous()


_MODELS = {}


def _predictor(preset):
    if preset not in _MODELS:
        torch.manual_seed(0)
        model = build_model(preset).eval()
        heavy_postprocess_load(model)
        _MODELS[preset] = model
    # a low sigma and stuff-area limit: many thing and stuff segments from random weights
    return Predictor(_MODELS[preset], channels_last=False, sigma=0.05, stuff_area_limit=16)


@pytest.mark.parametrize("preset", ["r18-fpn", "tri-cityscapes-r50"])
@pytest.mark.parametrize("seed,sizes", [(0, [(128, 256)]), (1, [(121, 203)]), (2, [(97, 130), (100, 127)])])
def test_postprocess_equals_previous_implementation(preset, seed, sizes):
    pred = _predictor(preset)
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1) for h, w in sizes]
    with torch.no_grad():
        batch, got_sizes = pred.preprocess(images)
        outputs = pred.network(batch)
        got = pred.postprocess(outputs, got_sizes)
        want = PREVIOUS.old_postprocess(pred, outputs, got_sizes)
    assert sum(len(r.thing_segments) for r in got) > 1 and sum(len(r.segments_info) for r in got) > 3
    for res, (panoptic, semantic, seg, areas, boxes, det) in zip(got, want):
        assert torch.equal(res.panoptic, panoptic)
        assert torch.equal(res.semantic, semantic)
        assert torch.equal(res.detections.boxes, det.boxes) and torch.equal(res.detections.scores, det.scores)
        assert [s["area"] for s in res.segments_info] == areas
        assert [s["bbox"] for s in res.segments_info] == boxes
        assert [s["train_id"] for s in res.segments_info] == seg.classes.tolist()
        assert [s["score"] for s in res.segments_info] == seg.scores.tolist()


@pytest.mark.parametrize("stride,size", [(4, (13, 9)), (4, (16, 16)), (8, (1, 1)), (3, (7, 20))])
def test_segment_stats_from_grid_equal_full_resolution_scan(stride, size):
    g = torch.Generator().manual_seed(stride * 100 + size[1])
    hv, wv = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
    grid = torch.randint(0, 5, (hv, wv), generator=g, dtype=torch.int32)  # segment 5 is absent
    full = upsample_ids(grid, stride, size)
    assert full.shape == size
    assert torch.equal(full, grid.repeat_interleave(stride, 0).repeat_interleave(stride, 1)[: size[0], : size[1]])
    assert segment_areas_and_boxes(grid, 5, stride, size) == PREVIOUS.old_areas_and_boxes(full, 5)


def _stride_one_maps():
    """Full-resolution id maps (mask_mode="release"): random ids (noise: runs of one pixel), blobs, a
    map with nothing, single-pixel segments in the corners (first / last row and column), one row,
    one column, one pixel; segments n - 1 and n absent."""
    g = torch.Generator().manual_seed(7)
    noise = torch.randint(0, 6, (37, 70), generator=g, dtype=torch.int32)
    blobs = torch.zeros(50, 131, dtype=torch.int32)
    blobs[3:20, 5:70] = 1
    blobs[10:49, 60:131] = 2
    blobs[0:50, 100:101] = 3
    blobs[49, 130] = 4
    corners = torch.zeros(9, 65, dtype=torch.int32)
    corners[0, 0], corners[0, 64], corners[8, 0], corners[8, 64] = 1, 2, 3, 4
    corners[4, 63:65] = 5
    return [noise, blobs, corners, torch.zeros(5, 5, dtype=torch.int32),
            torch.randint(0, 6, (1, 200), generator=g, dtype=torch.int32),
            torch.randint(0, 6, (130, 1), generator=g, dtype=torch.int32), torch.full((1, 1), 4, dtype=torch.int32)]


@pytest.mark.parametrize("index", range(7))
def test_segment_stats_at_stride_one_equal_full_resolution_scan(index):
    """The runs path of segment_stats (stride 1) against the scatter over every pixel."""
    full = _stride_one_maps()[index]
    assert segment_areas_and_boxes(full, 7, 1, tuple(full.shape)) == PREVIOUS.old_areas_and_boxes(full, 7)
    h, w = full.shape  # a size smaller than the map: the map's top-left part, as upsample_ids crops
    crop = (max(1, h - 2), max(1, w - 3))
    assert segment_areas_and_boxes(full, 7, 1, crop) == PREVIOUS.old_areas_and_boxes(
        full[: crop[0], : crop[1]].contiguous(), 7)


def test_segment_stats_at_stride_one_hand_computed():
    m = torch.zeros(4, 6, dtype=torch.int32)
    m[0, 5] = 1  # one pixel, last column
    m[1:4, 0:2] = 2  # touches the last row
    m[1, 4], m[3, 5] = 3, 3  # two parts: the box spans both
    areas, boxes = segment_stats(m, 4, 1, (4, 6))
    assert areas.tolist() == [1, 6, 2, 0]
    assert boxes.tolist() == [[5, 0, 1, 1], [0, 1, 2, 3], [4, 1, 2, 3], [0, 0, 0, 0]]
    areas, boxes = segment_stats(m[:0], 2, 1, (0, 6))  # an empty map
    assert areas.tolist() == [0, 0] and boxes.tolist() == [[0, 0, 0, 0]] * 2


@pytest.mark.parametrize("semantic_dtype", ["uint8", "int16", "int32"])
def test_narrow_semantic_dtype_holds_the_same_map(semantic_dtype):
    """Predictor(semantic_dtype=...): the int64 map's values in the narrower dtype, the rest unchanged."""
    wide = _predictor("r18-fpn")
    narrow = Predictor(wide.model, channels_last=False, sigma=0.05, stuff_area_limit=16, semantic_dtype=semantic_dtype)
    rng = np.random.default_rng(3)
    images = [torch.from_numpy(rng.integers(0, 256, (121, 203, 3), dtype=np.uint8)).permute(2, 0, 1)]
    with torch.no_grad():
        batch, sizes = wide.preprocess(images)
        outputs = wide.network(batch)
        want, got = wide.postprocess(outputs, sizes)[0], narrow.postprocess(outputs, sizes)[0]
    assert want.semantic.dtype == torch.int64 and got.semantic.dtype == getattr(torch, semantic_dtype)
    assert torch.equal(got.semantic.long(), want.semantic) and want.semantic.unique().numel() > 1
    assert torch.equal(got.panoptic, want.panoptic) and got.segments_info == want.segments_info


def test_semantic_dtype_is_validated():
    with pytest.raises(ValueError, match=r"model config: inference.semantic_dtype must be one of \('int64', "
                                         r"'int32', 'int16', 'uint8'\), got 'int8'"):
        Predictor(_predictor("r18-fpn").model, semantic_dtype="int8")
