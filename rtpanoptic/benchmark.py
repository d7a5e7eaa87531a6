"""In-process timings for ``rtpanoptic benchmark``: the network, the post-processing, and the
pipeline's ops per backend on the same inputs.  Wall-clock medians; see ``make bench`` and
benchmarks/RESULTS.md for the full pytest-benchmark suite."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def _median_ms(fn: Callable[[], object], iters: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def run_benchmark(model, image_size: Sequence[int] = (256, 512), batch: int = 1, iters: int = 5,
                  backend: str | None = None, ops_too: bool = True, echo=print,
                  predictor_options: dict | None = None) -> dict:
    """Time ``model`` (a PanopticNet) end to end on random uint8 images; returns the timings (ms).
    ``predictor_options``: Predictor keyword arguments (``precision``, ``channels_last``, ``compile``)."""
    from .inference import Predictor

    if iters < 1 or batch < 1:
        raise ValueError(f"run_benchmark: iters and batch must be >= 1, got {iters}, {batch}")
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    h, w = int(image_size[0]), int(image_size[1])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
    predictor = Predictor(model, backend=backend, **(predictor_options or {}))
    with torch.no_grad():
        x, sizes = predictor.preprocess(images)
        outputs = predictor.network(x)
        report: dict = {"device": device.type, "image_size": [h, w], "batch": batch, "backend": backend or "auto",
                        **predictor.network.describe()}
        report["network_ms"] = _median_ms(lambda: predictor.network(x), iters, sync)
        report["postprocess_ms"] = _median_ms(lambda: predictor.postprocess(outputs, sizes), iters, sync)
        report["end_to_end_ms"] = _median_ms(lambda: predictor(images), iters, sync)
    report["fps"] = 1e3 * batch / report["end_to_end_ms"]
    layout = " channels_last" if report["channels_last"] else ""
    echo(f"device {device.type}, batch {batch} x {h}x{w}, {report['precision']}{layout}"
         f"{' compiled' if report['compile'] else ''}, ops backend {report['backend']}, median of {iters}:")
    echo(f"  network        {report['network_ms']:9.1f} ms")
    echo(f"  post-process   {report['postprocess_ms']:9.1f} ms")
    echo(f"  end to end     {report['end_to_end_ms']:9.1f} ms  ({report['fps']:.1f} images/s)")
    if ops_too:
        report["ops"] = _op_timings(model, outputs, predictor, device, iters, sync, echo)
    return report


def _op_timings(model, outputs, predictor, device, iters, sync, echo) -> dict[str, dict[str, float]]:
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
                row[be] = _median_ms(lambda fn=fn, be=be: fn(be), iters, sync)
            table[name] = row
            echo(f"  {name:28s} " + "  ".join(f"{be} {ms:8.2f} ms" for be, ms in row.items()))
    return table
