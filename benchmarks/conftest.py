"""Benchmark inputs and measurement helpers: deterministic, built in-process.  Run with ``make bench``.

Time: pytest-benchmark's rounds (wall clock, synchronised on CUDA); on CUDA also the median of
CUDA-event timings (``benchmark.extra_info["cuda_ms"]``, :func:`rtpanoptic.benchmark.time_ms`).
``RTP_BENCH_BUDGET_S`` sets the seconds each benchmark's rounds aim at (default 1).
With ``RTP_BENCH_JSONL=<file>`` every benchmark of :func:`run` appends one JSON line to that file
as soon as it is measured (benchmarks/gpu_check.py reads it; nothing is lost if a run is cut short).

Peak memory (``benchmark.extra_info["peak_mem_mb"]``): on CUDA, ``torch.cuda.max_memory_allocated``
above what was allocated before the call; on the CPU, the growth of the process's resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) during one call, with glibc
told, for that call only, to serve every allocation above 64 KiB by mmap so that freed memory is
returned and re-counted.  (``tracemalloc`` only sees Python's allocator, not torch's or the C++
kernels'.)  The timed rounds run with glibc's thresholds at the values its dynamic threshold
converges to in a long-running process (32 MiB mmap, 64 MiB trim): a 64 KiB mmap threshold there
would page-fault every large buffer afresh on every call (it made ``Predictor.postprocess`` at
1024x2048 look ~1.6x slower than it is).
"""
import ctypes
import gc
import json
import os
import re
import time

import pytest
import torch

from rtpanoptic.benchmark import cuda_peak_bytes, time_ms


def _clusters(n: int, seed: int, image: float, spread: float):
    """``n`` boxes around ``n // 20`` objects: (boxes, scores, owner object of each box)."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, n // 20)
    centres = torch.rand(k, 2, generator=g) * image
    sizes = 16 + torch.rand(k, 2, generator=g) * 200
    owner = torch.randint(0, k, (n,), generator=g)
    jitter = 1 + spread * torch.randn(n, 4, generator=g)
    c, s = centres[owner], sizes[owner]
    boxes = torch.cat([c - s / 2 * jitter[:, :2], c + s / 2 * jitter[:, 2:]], 1)
    scores = torch.rand(n, generator=g)
    return boxes, scores, owner


def clustered_boxes(n: int, seed: int = 0, image: float = 1024.0, device="cpu"):
    """``n`` boxes around ``n // 20`` objects (like dense detections before NMS)."""
    boxes, scores, _ = _clusters(n, seed, image, 0.15)
    return boxes.to(device), scores.to(device)


# Label distributions of the NMS / select_queries benchmarks: today's random labels over the
# clustered boxes, and the two worst cases for a greedy scan that stops at top_n kept: tight
# clusters (3 % jitter) with one class per object (what a street scene looks like: class NMS
# keeps about one box per object, so every box is visited) and one class for everything.
LABELS = {"random-19": 19, "random-8": 8, "per-object-tight": None, "one-class-tight": 1}


def labelled_boxes(n: int, labels: str, seed: int = 0, device="cpu"):
    """(boxes [n, 4], scores [n], int64 labels [n]) on ``device`` for a :data:`LABELS` distribution."""
    if labels.startswith("random"):
        boxes, scores = clustered_boxes(n, seed)
        lab = torch.randint(0, LABELS[labels], (n,), generator=torch.Generator().manual_seed(seed))
    else:
        boxes, scores, owner = _clusters(n, seed, 1024.0, 0.03)
        lab = owner if labels == "per-object-tight" else torch.zeros(n, dtype=torch.int64)
    return boxes.to(device), scores.to(device), lab.to(device)


@pytest.fixture
def make_clustered_boxes():
    return clustered_boxes


@pytest.fixture
def make_labelled_boxes():
    return labelled_boxes


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MEASURE_THRESHOLDS = (64 << 10, 64 << 10)  # (mmap, trim): large blocks unmapped on free
TIMING_THRESHOLDS = (32 << 20, 64 << 20)  # glibc's ceiling for its dynamic mmap threshold on 64-bit, 2x for trim


def _set_thresholds(mmap_bytes: int, trim_bytes: int) -> None:
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, trim_bytes)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) * 1024


def cpu_peak_bytes(fn) -> int | None:
    """Extra resident memory at the peak of one call of ``fn`` (None where not measurable)."""
    _set_thresholds(*MEASURE_THRESHOLDS)
    try:
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_bytes("VmRSS")
        fn()
        return max(0, _status_bytes("VmHWM") - base)
    except (OSError, AttributeError):
        return None
    finally:
        _set_thresholds(*TIMING_THRESHOLDS)


def skip_unless(device: str, impl: str, backends):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    if impl not in ("torchvision",) and impl not in backends:
        pytest.skip(f"backend {impl!r} not available on {device}")


def run(benchmark, fn, device: str, budget_s: float | None = None, max_rounds: int = 20):
    """Benchmark ``fn()`` (synchronised on CUDA) and record its peak memory in extra_info.

    The number of rounds is fitted to ``budget_s`` (default: ``$RTP_BENCH_BUDGET_S``, else 1 s)
    from one timed warm-up call (at least 3), which keeps the whole suite to a few minutes on a
    small CPU."""
    if budget_s is None:
        budget_s = float(os.environ.get("RTP_BENCH_BUDGET_S", "1.0"))
    if device == "cuda":
        def call():
            out = fn()
            torch.cuda.synchronize()
            return out
    else:
        call = fn
    t0 = time.perf_counter()
    call()  # warm-up (also loads kernels / caches)
    once = time.perf_counter() - t0
    peak = cuda_peak_bytes(fn) if device == "cuda" else cpu_peak_bytes(fn)
    benchmark.extra_info["device"] = device
    benchmark.extra_info["peak_mem_mb"] = None if peak is None else round(peak / 2**20, 2)
    fitted = max(3, budget_s / max(once, 1e-6))
    rounds = int(min(max_rounds, fitted))
    if device == "cuda":  # CUDA events resolve microseconds: up to 200 calls in the same budget
        benchmark.extra_info["cuda_ms"] = time_ms(fn, int(min(200, fitted)), device)
    result = benchmark.pedantic(call, rounds=rounds, iterations=1)
    _record(benchmark, rounds)
    return result


def _record(benchmark, rounds: int) -> None:
    path = os.environ.get("RTP_BENCH_JSONL")
    stats = getattr(benchmark, "stats", None)
    if not path or stats is None:  # not asked for, or pytest-benchmark disabled (nothing was timed)
        return
    line = {"group": benchmark.group, "name": benchmark.name, "params": {k: str(v) for k, v in
            (benchmark.params or {}).items()}, "wall_median_ms": 1e3 * stats.stats.median, "rounds": rounds,
            **benchmark.extra_info}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


@pytest.fixture
def bench_run():
    """``bench_run(benchmark, fn, device)``: see :func:`run`."""
    return run


@pytest.fixture
def need():
    """``need(device, impl, backends)``: skip unless ``impl`` can run on ``device``."""
    return skip_unless
