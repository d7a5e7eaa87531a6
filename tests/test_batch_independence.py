"""A batch's results do not depend on the other images in it (issue 12): images of another padded
size are run apart, so the network sees each image exactly as it would alone."""
from __future__ import annotations

import torch

from rtpanoptic.data import SYNTHETIC
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model


def _model():
    torch.manual_seed(0)
    return build_model("r18-fpn", description=SYNTHETIC, channels=16).eval()


def _images():
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (3, 128, 128), generator=g, dtype=torch.uint8)
    big = torch.randint(0, 256, (3, 200, 300), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 256, (3, 100, 120), generator=g, dtype=torch.uint8)
    return small, big, other


def _same(a, b):
    assert torch.equal(a.panoptic, b.panoptic) and torch.equal(a.semantic, b.semantic)
    assert a.segments_info == b.segments_info
    assert torch.equal(a.detections.boxes, b.detections.boxes) and torch.equal(a.detections.scores, b.detections.scores)


def test_an_image_gives_the_same_result_alone_and_next_to_a_larger_one():
    predictor = Predictor(_model(), backend="reference")
    small, big, other = _images()
    alone = predictor(small)[0]
    big_alone = predictor(big)[0]
    batch = predictor([small, big, other])
    _same(batch[0], alone)
    _same(batch[1], big_alone)
    _same(batch[2], predictor(other)[0])
    _same(predictor([big, small])[1], alone)  # order does not matter either
