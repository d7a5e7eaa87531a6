"""A batch of mixed image sizes: ``Predictor`` (one forward pass per padded size, results
independent of the other images) against the former single pass on everything padded to the
largest image.  Untrained r18-fpn (the network's cost does not depend on its weights), fp32, CPU
(and GPU when present).  Run with ``make bench`` or
``python -m pytest benchmarks/test_bench_batching.py --benchmark-enable``.
"""
import pytest
import torch

from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIZES = [(128, 256)] * 2 + [(512, 1024)] * 2  # two small images next to two Cityscapes-like ones


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("mode", ["grouped", "pad-to-largest"])
@pytest.mark.parametrize("device", DEVICES)
def test_mixed_size_batch(benchmark, device, mode):
    torch.manual_seed(0)
    predictor = Predictor(build_model("r18-fpn").eval().to(device))
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in SIZES]

    def grouped():
        return predictor(images)

    @torch.no_grad()
    def pad_to_largest():
        batch, sizes = predictor.preprocess(images)
        return predictor.postprocess(predictor.model(batch), sizes)

    fn = grouped if mode == "grouped" else pad_to_largest

    def run():
        out = fn()
        _sync(device)
        return out

    benchmark.group = f"mixed-size batch {device} 2x128x256 + 2x512x1024"
    result = benchmark.pedantic(run, rounds=5 if device == "cuda" else 3, warmup_rounds=1)
    assert [tuple(r.panoptic.shape) for r in result] == SIZES
