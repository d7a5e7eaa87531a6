"""End-to-end inference speed: FPS and per-stage time (backbone+FPN, head, post-processing).

Random weights with a synthetic but heavy post-processing load: the thing-class bias is
raised so that every location passes ``pre_nms_thresh`` (1000 candidates per level reach
NMS) and boxes are ~64 px, so ``post_nms_top_n = 100`` queries reach mask construction.
Sizes: 512x1024 everywhere, 1024x2048 on GPU only.  fp32 NCHW (precisions and channels_last:
test_bench_precision.py), batch 1.  ``torch.compile`` of the network is benchmarked on GPU, and
on CPU only with ``RTP_BENCH_COMPILE_CPU=1`` (slow to compile on a small CPU).  Run with ``make bench`` or
``python -m pytest benchmarks/test_bench_end_to_end.py --benchmark-enable``.
"""
import os

import numpy as np
import pytest
import torch

from rtpanoptic.benchmark import heavy_postprocess_load
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model

HAS_GPU = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])
SIZES = [(512, 1024), (1024, 2048)]
ARCHS = ["r18-fpn", "r50-fpn"]
_CACHE = {}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _setup(arch, size, device, compiled=False):
    if size[0] > 512 and device != "cuda":
        pytest.skip("1024x2048 is benchmarked on GPU only")
    key = (arch, size, device, compiled)
    if key not in _CACHE:
        torch.manual_seed(0)
        model = build_model(arch).eval().to(device)
        heavy_postprocess_load(model)
        predictor = Predictor(model, channels_last=False, compile=compiled)
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        _CACHE.clear()
        _CACHE[key] = (model, predictor, image)
    return _CACHE[key]


def _rounds(device, arch):
    return (20, 3) if device == "cuda" else ((3, 1) if arch == "r18-fpn" else (2, 1))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("device", DEVICES)
def test_end_to_end(benchmark, device, arch, size, compiled):
    if compiled and device == "cpu" and os.environ.get("RTP_BENCH_COMPILE_CPU") != "1":
        pytest.skip("torch.compile on CPU: set RTP_BENCH_COMPILE_CPU=1")
    _model, predictor, image = _setup(arch, size, device, compiled)
    benchmark.group = f"end-to-end {device} {size[0]}x{size[1]}"

    def run():
        out = predictor(image)
        _sync(device)
        return out

    rounds, warmup = _rounds(device, arch)
    result = benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup + (2 if compiled else 0))
    assert result[0].panoptic.shape == size
    benchmark.extra_info["fps"] = 1.0 / benchmark.stats.stats.median
    benchmark.extra_info["queries"] = int(result[0].detections.scores.numel())


@pytest.mark.parametrize("stage", ["backbone+fpn", "head", "postprocess"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("device", DEVICES)
def test_stage(benchmark, device, arch, size, stage):
    model, predictor, image = _setup(arch, size, device)
    benchmark.group = f"stages {device} {arch} {size[0]}x{size[1]}"
    with torch.no_grad():
        batch, sizes = predictor.preprocess(image)
        feats = model.backbone(batch)
        outputs = model.panoptic_head(feats, tuple(batch.shape[-2:]))
    fns = {
        "backbone+fpn": lambda: model.backbone(batch),
        "head": lambda: model.panoptic_head(feats, tuple(batch.shape[-2:])),
        "postprocess": lambda: predictor.postprocess(outputs, sizes),
    }

    @torch.no_grad()
    def run():
        out = fns[stage]()
        _sync(device)
        return out

    rounds, warmup = _rounds(device, arch)
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup)
