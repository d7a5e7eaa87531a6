"""In-process timings: one timer (CUDA events on a GPU, wall clock on the CPU) used by
``rtpanoptic benchmark``, the pytest-benchmark suite (benchmarks/conftest.py) and the GPU check
(benchmarks/gpu_check.py): the network per stage, the post-processing, and the pipeline's ops per
backend on the same inputs.  See ``make bench`` and benchmarks/RESULTS.md."""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from .execution import NetworkRunner, RunMode, capture_cuda_graph, outputs_as_fp32

FP32 = RunMode()  # the network in float32, NCHW, eager


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def time_ms(fn: Callable[[], object], iters: int, device: torch.device | str) -> float:
    """Median milliseconds of one call of ``fn`` over ``iters`` calls, after one warm-up call.

    On CUDA each call sits between two CUDA events and is waited for before the next one starts,
    so a call's time is its latency: kernels, launch gaps and the host work in between (what one
    image costs at batch 1), not the throughput of calls queued back to back.  On the CPU: wall clock.
    """
    device = _device(device)
    fn()  # warm-up: lazy initialisation, kernel compilation, allocator growth
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(max(1, iters)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(max(1, iters)):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def cuda_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes ``torch.cuda.max_memory_allocated`` grew by during one call of ``fn``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def heavy_postprocess_load(model) -> None:
    """Bias a randomly initialised head so that every location passes ``pre_nms_thresh`` (class
    probability ~0.12) with ~64 px boxes: the post-processing then handles as many candidates as
    the options allow (``pre_nms_top_n`` per level into NMS, ``post_nms_top_n`` queries)."""
    with torch.no_grad():
        model.panoptic_head.box_cls_logits.bias.fill_(-2.0)
        model.panoptic_head.bbox_pred.bias.fill_(math.log(32.0))


def stage_timings(model, image_size: Sequence[int], mode: RunMode = FP32, iters: int = 10,
                  backend: str | None = None) -> dict:
    """Median ms of each stage for one random uint8 ``[1, 3, H, W]`` image held on the host.

    Stages: ``backbone_fpn_ms``, ``head_ms`` (network under ``mode``), ``postprocess_ms``
    (:meth:`Predictor.postprocess` on float32 outputs, results copied to the host),
    ``end_to_end_ms`` (upload + normalise + network + post-processing); also ``fps``,
    ``first_call_s`` (compilation included), ``peak_mem_mb`` (CUDA only) and ``queries``.
    ``model`` is copied, not changed.
    """
    from .inference import Predictor

    device = next(model.parameters()).device
    model = copy.deepcopy(model).eval()
    if mode.compile:  # per stage, so that each stage is timed alone
        model.backbone.compile()
        model.panoptic_head.compile()
    predictor = Predictor(model, backend=backend, precision=mode.precision, channels_last=mode.channels_last)
    runner = predictor.network
    h, w = int(image_size[0]), int(image_size[1])
    image = torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)

    def prep():
        x, sizes = predictor.preprocess(image)
        return runner.prepare(x), sizes

    def backbone(x):
        with runner.autocast(device.type):
            return model.backbone(x)

    def head(feats, hw):
        with runner.autocast(device.type):
            return outputs_as_fp32(model.panoptic_head(feats, hw))

    def end_to_end():
        x, sizes = prep()
        return predictor.postprocess(head(backbone(x), tuple(x.shape[-2:])), sizes)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        t0 = time.perf_counter()
        result = end_to_end()
        sync()
        first_call_s = time.perf_counter() - t0
        x, sizes = prep()
        hw = tuple(x.shape[-2:])
        feats = backbone(x)
        outputs = head(feats, hw)
        report = {
            "backbone_fpn_ms": time_ms(lambda: backbone(x), iters, device),
            "head_ms": time_ms(lambda: head(feats, hw), iters, device),
            "postprocess_ms": time_ms(lambda: predictor.postprocess(outputs, sizes), iters, device),
            "end_to_end_ms": time_ms(end_to_end, iters, device),
        }
        report["peak_mem_mb"] = cuda_peak_bytes(end_to_end) / 2**20 if device.type == "cuda" else None
    report["fps"] = 1e3 / report["end_to_end_ms"]
    report["first_call_s"] = first_call_s
    report["queries"] = int(result[0].detections.scores.numel())
    return report


def graph_timings(model, image_size: Sequence[int], mode: RunMode = FP32, iters: int = 20) -> dict:
    """CUDA graphs for one fixed-size image, each captured and replayed: the network +
    panoptic post-processing (:class:`rtpanoptic.export.PanopticProgram`, padded outputs: no semantic
    map at input size) ->
    ``{"end_to_end_ms", "fps"}``; the network alone -> ``network_ms``; the post-processing's device
    stage (:meth:`Predictor.capture_postprocess <rtpanoptic.inference.Predictor.capture_postprocess>`)
    -> ``postprocess_device_ms`` (the replay) and ``postprocess_ms`` (the replay and the host stage:
    results copied to the host, as :meth:`Predictor.postprocess` returns them).  Where a capture
    fails, ``<key>_error`` holds the reason instead.  CUDA only; ``mode.compile`` is ignored."""
    from .export import PanopticProgram
    from .inference import Predictor

    device = next(model.parameters()).device
    net = copy.deepcopy(model).eval()
    runner = NetworkRunner(net, mode.precision, mode.channels_last)
    h, w = int(image_size[0]), int(image_size[1])
    image = torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    image = image.to(device)
    program = PanopticProgram(net, network=runner, padded=True).eval()
    x = runner.prepare(net.normalize(image))
    report: dict = {}
    with torch.no_grad():
        for key, fn in (("end_to_end", lambda: program(image)), ("network", lambda: runner(x))):
            try:
                graph, _ = capture_cuda_graph(fn, device)
                report[f"{key}_ms"] = time_ms(graph.replay, iters, device)
            except Exception as exc:  # the reason is the result
                report[f"{key}_error"] = exception_summary(exc)
                torch.cuda.synchronize(device)
        try:
            predictor = Predictor(net, precision=mode.precision, channels_last=mode.channels_last)
            outputs = runner(x)
            captured = predictor.capture_postprocess(outputs, [(h, w)])
            report["postprocess_device_ms"] = time_ms(captured.graph.replay, iters, device)
            report["postprocess_ms"] = time_ms(lambda: captured(outputs), iters, device)
        except Exception as exc:
            report["postprocess_error"] = exception_summary(exc)
            torch.cuda.synchronize(device)
    if "end_to_end_ms" in report:
        report["fps"] = 1e3 / report["end_to_end_ms"]
    return report


def exception_summary(exc: BaseException) -> str:
    """``Type: first line`` of an exception and of the one it was raised from or during."""
    parts = []
    while exc is not None and len(parts) < 2:
        lines = str(exc).strip().splitlines() or [""]
        parts.append(f"{type(exc).__name__}: {lines[0][:300]}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def run_benchmark(model, image_size: Sequence[int] = (256, 512), batch: int = 1, iters: int = 5,
                  backend: str | None = None, ops_too: bool = True, echo=print,
                  predictor_options: dict | None = None) -> dict:
    """Time ``model`` (a PanopticNet) end to end on random uint8 images; returns the timings (ms).
    ``predictor_options``: Predictor keyword arguments (``precision``, ``channels_last``, ``compile``)."""
    from .inference import Predictor

    if iters < 1 or batch < 1:
        raise ValueError(f"run_benchmark: iters and batch must be >= 1, got {iters}, {batch}")
    device = next(model.parameters()).device
    h, w = int(image_size[0]), int(image_size[1])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
    predictor = Predictor(model, backend=backend, **(predictor_options or {}))
    with torch.no_grad():
        x, sizes = predictor.preprocess(images)
        outputs = predictor.network(x)
        report: dict = {"device": device.type, "image_size": [h, w], "batch": batch, "backend": backend or "auto",
                        **predictor.network.describe()}
        report["network_ms"] = time_ms(lambda: predictor.network(x), iters, device)
        report["postprocess_ms"] = time_ms(lambda: predictor.postprocess(outputs, sizes), iters, device)
        report["end_to_end_ms"] = time_ms(lambda: predictor(images), iters, device)
    report["fps"] = 1e3 * batch / report["end_to_end_ms"]
    layout = " channels_last" if report["channels_last"] else ""
    echo(f"device {device.type}, batch {batch} x {h}x{w}, {report['precision']}{layout}"
         f"{' compiled' if report['compile'] else ''}, ops backend {report['backend']}, median of {iters}:")
    echo(f"  network        {report['network_ms']:9.1f} ms")
    echo(f"  post-process   {report['postprocess_ms']:9.1f} ms")
    echo(f"  end to end     {report['end_to_end_ms']:9.1f} ms  ({report['fps']:.1f} images/s)")
    if ops_too:
        report["ops"] = _op_timings(model, outputs, predictor, device, iters, echo)
    return report


def _op_timings(model, outputs, predictor, device, iters, echo) -> dict[str, dict[str, float]]:
    """Each pipeline op on this network's outputs, per backend that runs here."""
    from . import ops

    avail = ops.available_backends(device.type)
    ls = model.levelness_stride
    dense, _ = ops.gather_levelness(list(outputs.box_offsets), outputs.levelness, out_stride=ls)
    g = torch.Generator().manual_seed(1)
    n = 2000
    xy = torch.rand(n, 2, generator=g) * 400
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 60], 1).to(device)
    scores = torch.rand(n, generator=g).to(device)
    q = 50
    qboxes = boxes[:q]
    sem = outputs.semantic
    if sem.shape[-2:] != dense.shape[-2:]:
        sem = torch.nn.functional.interpolate(sem, size=dense.shape[-2:], mode="bilinear", align_corners=False)
    probs = sem[0].softmax(0).contiguous()
    is_thing = torch.tensor(model.description.is_thing, device=device)
    qclasses = torch.tensor(model.description.thing_train_ids, device=device)[torch.arange(q, device=device) % model.num_things]
    cases = {
        f"nms N={n}": lambda be: ops.nms(boxes, scores, 0.5, backend=be),
        "decode_boxes level 0": lambda be: ops.decode_boxes(outputs.box_offsets[0], model.strides[0], backend=be),
        "gather_levelness": lambda be: ops.gather_levelness(list(outputs.box_offsets), outputs.levelness, out_stride=ls,
                                                            backend=be),
        f"panoptic_from_dense Q={q}": lambda be: ops.panoptic_from_dense(
            dense[0].contiguous(), probs, qboxes, qclasses, scores[:q], is_thing, backend=be),
    }
    op_of = {f"nms N={n}": "nms", "decode_boxes level 0": "decode_boxes", "gather_levelness": "gather_levelness",
             f"panoptic_from_dense Q={q}": "panoptic_from_dense"}
    table: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, fn in cases.items():
            row = {}
            for be in avail[op_of[name]]:
                row[be] = time_ms(lambda fn=fn, be=be: fn(be), iters, device)
            table[name] = row
            echo(f"  {name:28s} " + "  ".join(f"{be} {ms:8.2f} ms" for be, ms in row.items()))
    return table
