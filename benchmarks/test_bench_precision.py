"""Network speed per precision and memory format, side by side (``Predictor.network``: the code path
inference uses): fp32 NCHW, fp32 channels_last, bf16 autocast NCHW, bf16 autocast channels_last
(and fp16 channels_last on a GPU), for the ``tri-cityscapes-r50`` preset and ``r18-fpn`` at 512x1024,
batch 1, random weights.  The speed-up of each row over fp32 NCHW is in ``extra_info``.

On a shared machine, time the work rather than the wall clock:
``OMP_NUM_THREADS=1 python -m pytest benchmarks/test_bench_precision.py --benchmark-enable
--benchmark-timer time.process_time`` (one thread, CPU seconds of this process: other jobs on the
machine barely move it).  Results: benchmarks/RESULTS.md.
"""
import pytest
import torch

from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model

HAS_GPU = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])
ARCHS = ["tri-cityscapes-r50", "r18-fpn"]
VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True), ("fp16", True)]
SIZE = (512, 1024)
_MEDIANS: dict = {}


def _variant_id(v):
    return f"{v[0]}-{'channels_last' if v[1] else 'nchw'}"


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("device", DEVICES)
def test_network_precision(benchmark, device, arch, variant):
    precision, channels_last = variant
    if precision == "fp16" and device == "cpu":
        pytest.skip("fp16 on a CPU: ~4x slower than fp32 (no native fp16 convolutions); not a speed option")
    torch.manual_seed(0)
    model = build_model(arch).eval().to(device)
    pred = Predictor(model, precision=precision, channels_last=channels_last)
    image = torch.randint(0, 256, (1, 3, *SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x, _ = pred.preprocess(image)
    benchmark.group = f"network {device} {arch} {SIZE[0]}x{SIZE[1]}"

    def run():
        out = pred.network(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    rounds = 20 if device == "cuda" else 3
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1 if device == "cpu" else 3)
    median = benchmark.stats.stats.median
    _MEDIANS[(device, arch, variant)] = median
    base = _MEDIANS.get((device, arch, ("fp32", False)))
    benchmark.extra_info.update(precision=precision, channels_last=channels_last)
    if base is not None:
        benchmark.extra_info["speedup_vs_fp32_nchw"] = round(base / median, 3)
