"""InferenceConfig.mask_mode: "grid" (default) or "release" (ops.panoptic_from_dense_release)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model
from rtpanoptic.model.config import InferenceConfig

HAS_CPP = "cpp" in ops.available_backends("cpu")["panoptic_from_dense_release"]


def test_default_is_grid():
    assert InferenceConfig().mask_mode == "grid"


def test_unknown_mask_mode_is_one_line_error():
    model = build_model("tri-cityscapes-r50").eval()
    with pytest.raises(ValueError, match=r"^model config: inference.mask_mode must be one of \('grid', 'release'\), "
                                         r"got 'bilinear'$"):
        Predictor(model, mask_mode="bilinear")


@pytest.mark.skipif(not HAS_CPP, reason="no C++ kernel built")
def test_release_mode_on_the_released_preset():
    torch.manual_seed(0)
    model = build_model("tri-cityscapes-r50").eval()
    image = np.random.default_rng(0).integers(0, 256, (150, 203, 3), dtype=np.uint8)
    kw = dict(pre_nms_thresh=0.0, post_nms_top_n=20, sigma=-0.01)  # random weights: small boxes, tri < 0
    (grid,) = Predictor(model, backend="cpp", **kw)(image)
    (fused,) = Predictor(model, backend="cpp", mask_mode="release", **kw)(image)
    (plain,) = Predictor(model, backend="reference", mask_mode="release", **kw)(image)
    assert fused.panoptic.shape == (150, 203)
    assert torch.equal(fused.panoptic, plain.panoptic)
    assert fused.segments_info == plain.segments_info
    assert torch.equal(fused.detections.boxes, grid.detections.boxes)  # the queries do not depend on mask_mode
    assert any(s["isthing"] for s in fused.segments_info)
    assert not torch.equal(fused.panoptic, grid.panoptic)  # bilinear masks at 1/1 differ from grid masks


@pytest.mark.skipif(not HAS_CPP, reason="no C++ kernel built")
def test_one_cell_of_padding_is_all_the_upsampling_reads():
    """The Predictor passes the image's grid plus one row and column: equal to the whole padded grid."""
    g = torch.Generator().manual_seed(3)
    hg, wg, h, w = 32, 40, 103, 121  # image cells: ceil(103 / 4) = 26, ceil(121 / 4) = 31
    dense = torch.rand(4, hg, wg, generator=g) * 60
    dense[2:] += dense[:2] + 20
    probs = torch.randn(4, hg, wg, generator=g).softmax(0)
    qb = dense[:, ::7, ::9].reshape(4, -1).t()[:12].contiguous()
    args = (torch.randint(0, 2, (12,), generator=g), torch.rand(12, generator=g), torch.tensor([True, True, False, False]))
    kw = dict(stride=4, size=(h, w), sigma=0.2, score="iou")
    full = ops.panoptic_from_dense_release(dense, probs, qb, *args, **kw)
    cut = ops.panoptic_from_dense_release(dense[:, :27, :32].contiguous(), probs[:, :27, :32].contiguous(), qb,
                                          *args, **kw)
    assert torch.equal(full.segment_map, cut.segment_map) and torch.equal(full.areas, cut.areas)
    assert int(full.queries.ge(0).sum()) >= 2
