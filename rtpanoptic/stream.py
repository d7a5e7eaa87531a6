"""Streams of frames through a :class:`~rtpanoptic.inference.Predictor` (``Predictor.stream``),
and the per-stage latency statistics of such a stream (:class:`StageTimer`).

The loop, per batch of up to ``batch_size`` consecutive frames of one padded size::

    network(batch i)                  # launched; asynchronous on a GPU
    read + pad + upload batch i + 1   # CPU work and the host->device copy overlap the network
    postprocess(batch i) -> results   # waits for the network

On CUDA the upload is a ``non_blocking`` copy from pinned memory on a separate copy stream, and
the network can be replayed from a CUDA graph (:class:`~rtpanoptic.execution.CUDAGraphRunner`).
On the CPU the same loop runs the stages one after the other.  The results equal
``predictor(batch)`` for the same batches of frames (a video's frames all have one size: batches
of ``batch_size``).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from .images import pad_batch, padded_size, to_image_tensors

# stages that a video prediction reports, in pipeline order
STAGES = ("decode", "preprocess", "network", "postprocess", "overlay", "encode")


class StageTimer:
    """Per-frame times (ms) of named stages.  A stage that handles a batch of n frames at once
    adds its time / n for each of them."""

    def __init__(self):
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add(self, stage: str, seconds: float, frames: int = 1) -> None:
        if frames > 0:
            self.samples[stage].extend([1e3 * seconds / frames] * frames)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"mean", "p50", "p95", "frames"}}`` in milliseconds per frame, in :data:`STAGES`
        order first."""
        order = [s for s in STAGES if s in self.samples] + sorted(set(self.samples) - set(STAGES))
        out = {}
        for stage in order:
            v = np.asarray(self.samples[stage], dtype=np.float64)
            out[stage] = {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
                          "p95": float(np.percentile(v, 95)), "frames": int(v.size)}
        return out


class _Span:
    """Wall time on the CPU; CUDA events on a GPU (read once the work is done, e.g. after the
    post-processing has copied its results to the host)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> _Span:
        if self.cuda:
            self._end.record()
        else:
            self._t1 = time.perf_counter()
        return self

    def seconds(self) -> float:
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3
        return self._t1 - self._t0


class _Loader:
    """Reads up to ``batch_size`` frames of one padded size (a frame of another padded size starts
    the next batch, so no frame is padded to a larger neighbour's size: results do not depend on
    the neighbours), pads them (CPU) and puts the uint8 batch on the device."""

    def __init__(self, frames: Iterable, batch_size: int, predictor, timer: StageTimer | None):
        self.frames = iter(frames)
        self.batch_size = batch_size
        self.predictor = predictor
        self.divisor = predictor.model.size_divisibility
        self.timer = timer
        self.device = predictor.device
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.index = 0
        self.carried: Tensor | None = None  # the first frame of the next batch

    def _read(self) -> Tensor | None:
        t0 = time.perf_counter()
        try:
            frame = next(self.frames)
        except StopIteration:
            return None
        if self.timer is not None:
            self.timer.add("decode", time.perf_counter() - t0)
        converted = to_image_tensors(frame)
        if len(converted) != 1:
            raise ValueError(f"frames[{self.index}]: expected one image, got a batch of {len(converted)}")
        image = converted[0]
        if min(image.shape[1:]) == 0:
            raise ValueError(f"frames[{self.index}]: every frame needs a positive size, got {tuple(image.shape[1:])}")
        self.index += 1
        return image

    def _padded(self, image: Tensor) -> tuple[int, int]:
        return padded_size(image.shape[1], image.shape[2], self.divisor)

    def next(self) -> tuple[Tensor, list[tuple[int, int]], torch.cuda.Event | None] | None:
        first = self.carried if self.carried is not None else self._read()
        self.carried = None
        if first is None:
            return None
        images = [first]
        while len(images) < self.batch_size:
            image = self._read()
            if image is None:
                break
            if self._padded(image) != self._padded(first):
                self.carried = image
                break
            images.append(image)
        t0 = time.perf_counter()
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        batch = pad_batch(images, self.divisor)
        ready = None
        if self.copy_stream is not None and batch.device.type == "cpu":
            batch = batch.pin_memory()
            with torch.cuda.stream(self.copy_stream):
                batch = batch.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        else:
            batch = batch.to(self.device)
        if self.timer is not None:
            self.timer.add("preprocess", time.perf_counter() - t0, len(images))
        return batch, sizes, ready


def stream_results(predictor, frames: Iterable, batch_size: int = 1, cuda_graph: bool = False,
                   timer: StageTimer | None = None) -> Iterator:
    """The generator behind :meth:`Predictor.stream <rtpanoptic.inference.Predictor.stream>`."""
    from .execution import CUDAGraphRunner

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"stream: batch_size must be an int >= 1, got {batch_size!r}")
    network = CUDAGraphRunner(predictor.network) if cuda_graph else predictor.network
    return _stream(predictor, network, _Loader(frames, batch_size, predictor, timer), timer)


def _stream(predictor, network, loader: _Loader, timer: StageTimer | None) -> Iterator:
    device = loader.device
    pending = loader.next()
    while pending is not None:
        batch, sizes, ready = pending
        if ready is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(ready)
            batch.record_stream(current)  # the copy stream's memory is now used here
        net = _Span(device)
        with torch.no_grad():  # not around the yield: the caller's grad mode stays its own
            outputs = network(predictor.model.normalize(batch))
        net.stop()
        pending = loader.next()  # overlaps the network on a GPU
        post = _Span(device)
        results = predictor.postprocess(outputs, sizes)
        post.stop()
        if timer is not None:
            timer.add("network", net.seconds(), len(sizes))
            timer.add("postprocess", post.seconds(), len(sizes))
        yield from results


def latency_report(timer: StageTimer, frames: int, wall_s: float) -> dict:
    """``{"frames", "wall_s", "fps", "latency_ms": timer.summary()}`` (fps: frames / wall time)."""
    return {"frames": frames, "wall_s": wall_s, "fps": frames / wall_s if wall_s > 0 else math.nan,
            "latency_ms": timer.summary()}
