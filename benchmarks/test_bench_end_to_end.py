"""End-to-end inference speed: FPS and per-stage time (backbone+FPN, head, post-processing).

Random weights with a synthetic but heavy post-processing load: the thing-class bias is
raised so that every location passes ``pre_nms_thresh`` (1000 candidates per level reach
NMS) and boxes are ~64 px, so ``post_nms_top_n = 100`` queries reach mask construction.
Sizes: 512x1024 and 1024x2048 on every device (1024x2048 on a small CPU: ~20 s per R-50 call), batch 1.
Modes side by side (``MODES``): fp32 NCHW, bf16 autocast + channels_last, and ``Predictor(fast=True)``
(the fastest path: bf16 where native, channels_last, ``torch.compile`` with weight freezing).
``fast`` compiles, which is benchmarked on GPU, and on CPU only with ``RTP_BENCH_COMPILE_CPU=1`` (minutes
to compile on a small CPU; the first call's seconds are in ``extra_info["first_call_s"]``).  Run with
``make bench`` or ``python -m pytest benchmarks/test_bench_end_to_end.py --benchmark-enable``.
"""
import os
import time

import numpy as np
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.benchmark import heavy_postprocess_load
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model

HAS_GPU = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])
SIZES = [(512, 1024), (1024, 2048)]
ARCHS = ["r18-fpn", "r50-fpn", "tri-cityscapes-r50"]
# Predictor options of each mode (fast: rtpanoptic.execution.run_options)
MODES = {"fp32": dict(channels_last=False), "bf16-cl": dict(precision="bf16", channels_last=True),
         "fast": dict(fast=True)}
_CACHE = {}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _setup(arch, size, device, mode="fp32"):
    key = (arch, size, device, mode)
    if key not in _CACHE:
        torch.manual_seed(0)
        model = build_model(arch).eval().to(device)
        heavy_postprocess_load(model)
        predictor = Predictor(model, **MODES[mode])
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        _CACHE.clear()
        _CACHE[key] = (model, predictor, image)
    return _CACHE[key]


def _rounds(device, arch):
    return (20, 3) if device == "cuda" else ((3, 1) if arch == "r18-fpn" else (2, 1))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("device", DEVICES)
def test_end_to_end(benchmark, device, arch, size, mode):
    if mode == "fast" and device == "cpu" and os.environ.get("RTP_BENCH_COMPILE_CPU") != "1":
        pytest.skip("torch.compile on CPU: set RTP_BENCH_COMPILE_CPU=1")
    _model, predictor, image = _setup(arch, size, device, mode)
    benchmark.group = f"end-to-end {device} {arch} {size[0]}x{size[1]}"

    def run():
        out = predictor(image)
        _sync(device)
        return out

    start = time.perf_counter()
    run()  # the first call (compilation included)
    benchmark.extra_info["first_call_s"] = round(time.perf_counter() - start, 2)
    rounds, warmup = _rounds(device, arch)
    result = benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup)
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


# ------------------------------------------------------------ post-processing stages, old vs new
# CPU, batch 1, the TRI preset's head (semantic logits at stride 8, 19 classes) with the heavy
# load (~100 queries carry masks), at both sizes; "old" is benchmarks/previous_postprocess.py.
# Run with 2 threads (OMP_NUM_THREADS=2) to compare with benchmarks/RESULTS.md.
_SETUP = None


def _previous():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("previous_postprocess",
                                                  Path(__file__).with_name("previous_postprocess.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stage_setup(size):
    """(predictor, head outputs, sizes, stage inputs) for one size, cached."""
    global _SETUP
    if _SETUP is None or _SETUP[0] != size:
        import rtpanoptic.inference as inference

        torch.manual_seed(0)
        model = build_model("tri-cityscapes-r50").eval()
        heavy_postprocess_load(model)
        predictor = Predictor(model, channels_last=False)
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        with torch.no_grad():
            batch, sizes = predictor.preprocess(image)
            outputs = predictor.network(batch)
        captured = {}
        real = inference.nms_queries

        def capture(*args, **kwargs):
            captured["args"] = (args, kwargs)
            return real(*args, **kwargs)

        inference.nms_queries = capture
        try:
            (det,) = predictor.stage.queries(outputs, sizes)  # the padded queries
        finally:
            inference.nms_queries = real
        ls = model.levelness_stride
        dense, _ = ops.gather_levelness(list(outputs.box_offsets), outputs.levelness, out_stride=ls)
        probs = inference.semantic_probs_on(outputs.semantic, dense.shape[-2:])
        dense, probs = dense[0], probs[0]  # the padded grid: _fuse crops it to the image
        seg, _ = predictor.stage._fuse(dense, probs, det, size)
        _SETUP = (size, predictor, batch, outputs, sizes, captured["args"], det, dense, probs, seg)
    return _SETUP


@pytest.mark.parametrize("impl", ["old", "new"])
@pytest.mark.parametrize("stage", ["network", "detect", "queries", "panoptic_from_dense", "semantic",
                                   "segment_stats", "postprocess"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_postprocess_stage_cpu(benchmark, bench_run, size, stage, impl):
    from rtpanoptic.inference import nms_queries, segment_stats, upsample_ids

    if impl == "old" and stage in ("network", "detect", "queries", "panoptic_from_dense"):
        pytest.skip("unchanged: the same code in both")
    _size, predictor, batch, outputs, sizes, q_args, det, dense, probs, seg = _stage_setup(size)
    prev = _previous()
    model = predictor.model
    ls, ss = model.levelness_stride, model.semantic_stride
    h, w = size
    sem = outputs.semantic
    grid, n = seg.segment_map, int(seg.classes.numel())  # n: the Q + C segment slots
    fns = {
        ("network", "new"): lambda: predictor.network(batch),
        ("detect", "new"): lambda: predictor.detect(outputs, sizes),
        ("queries", "new"): lambda: nms_queries(*q_args[0], **q_args[1]),
        ("panoptic_from_dense", "new"): lambda: predictor.stage._fuse(dense, probs, det, size),
        ("semantic", "old"): lambda: prev.old_upsample_argmax(sem[0], ss, size),
        ("semantic", "new"): lambda: ops.upsample_argmax(sem, (sem.shape[2] * ss, sem.shape[3] * ss), size),
        ("segment_stats", "old"): lambda: prev.old_areas_and_boxes(
            grid.repeat_interleave(ls, 0).repeat_interleave(ls, 1)[:h, :w], n),
        ("segment_stats", "new"): lambda: (segment_stats(grid, n, ls, size), upsample_ids(grid, ls, size)),
        ("postprocess", "old"): lambda: prev.old_postprocess(predictor, outputs, sizes),
        ("postprocess", "new"): lambda: predictor.postprocess(outputs, sizes),
    }
    benchmark.group = f"postprocess stages cpu {h}x{w} {stage}"
    fn = torch.no_grad()(fns[(stage, impl)])
    if stage == "network":  # seconds per call on a small CPU
        benchmark.pedantic(fn, rounds=1, warmup_rounds=0)
    else:  # median of >= 3 rounds; peak extra memory of one call in extra_info["peak_mem_mb"]
        bench_run(benchmark, fn, "cpu")
