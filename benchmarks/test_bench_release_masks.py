"""ops.panoptic_from_dense_release: the reference (every soft mask upsampled to 1024x2048, [Q, H, W]
floats) and the fused cpp kernel side by side, time and peak memory (``extra_info["peak_mem_mb"]``,
see conftest.py), Q in {20, 100} on the 256x512 grid of a 1024x2048 Cityscapes image."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference

from .test_bench_ops import _scene

IMPLS = [("reference", "cpu"), ("cpp", "cpu")]


@pytest.mark.parametrize("q", [20, 100])
@pytest.mark.parametrize("impl,device", IMPLS, ids=[i for i, _ in IMPLS])
def test_panoptic_from_dense_release(benchmark, bench_run, need, impl, device, q):
    need(device, impl, ops.available_backends(device)["panoptic_from_dense_release"])
    h, w = 256, 512
    dense, sem, queries, classes, scores, is_thing = _scene(q, h, w, device)
    benchmark.group = f"panoptic_from_dense_release Q={q} 1024x2048"
    benchmark.extra_info["q_h_w_float32_mb"] = round(q * h * w * 16 * 4 / 2**20, 1)
    kw = dict(stride=4, size=(4 * h, 4 * w), sigma=0.4, score="tri", stuff_area_limit=1024)
    out = bench_run(benchmark, lambda: ops.panoptic_from_dense_release(
        dense, sem, queries, classes, scores, is_thing, backend=impl, **kw), device, max_rounds=5)
    if impl != "reference":
        ref = reference.panoptic_from_dense_release(dense, sem, queries, classes, scores, is_thing, 4, 4 * h, 4 * w,
                                                    0.4, "tri", 0.0, 0.5, 1024, True)
        assert torch.equal(out.segment_map, ref[0])
