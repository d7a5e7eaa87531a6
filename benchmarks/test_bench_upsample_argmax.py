"""ops.upsample_argmax on the CPU side by side: the reference (F.interpolate + argmax, the whole
[1, C, H, W] resized tensor), the C++ kernel's plain path (every class at every pixel; the
previous kernel, RTPANOPTIC_UPSAMPLE_PLAIN=1), and its corner shortcut (csrc/upsample_math.h) with
an int64 and a uint8 output.

19 classes at stride 8, outputs 512x1024 and 1024x2048, on two logit maps: "blobby" (smooth, large
class regions, as a trained semantic head's) and "boundaries" (independent noise per cell: a class
boundary in nearly every cell, the shortcut's worst case)."""
import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.ops import reference

N_CLASSES, STRIDE = 19, 8
SIZES = {"512x1024": (512, 1024), "1024x2048": (1024, 2048)}
IMPLS = ["reference", "plain", "shortcut", "shortcut-uint8"]


def logit_map(kind: str, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """[1, 19, h, w] float32 logits: "blobby" (bicubic of a grid 8x coarser) or "boundaries"."""
    g = torch.Generator().manual_seed(seed)
    if kind == "boundaries":
        return 3 * torch.randn(1, N_CLASSES, h, w, generator=g)
    coarse = torch.randn(1, N_CLASSES, h // 8, w // 8, generator=g)
    return 4 * F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)


@pytest.mark.parametrize("kind", ["blobby", "boundaries"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", IMPLS)
def test_upsample_argmax(benchmark, bench_run, need, monkeypatch, impl, size, kind):
    need("cpu", "reference" if impl == "reference" else "cpp", ops.available_backends("cpu")["upsample_argmax"])
    out_h, out_w = SIZES[size]
    logits = logit_map(kind, out_h // STRIDE, out_w // STRIDE)
    benchmark.group = f"upsample_argmax 19 classes -> {size} {kind}"
    if impl == "reference":
        fn = lambda: reference.upsample_argmax(logits, [out_h, out_w], [out_h, out_w])
    else:
        if impl == "plain":
            monkeypatch.setenv("RTPANOPTIC_UPSAMPLE_PLAIN", "1")
        dtype = torch.uint8 if impl == "shortcut-uint8" else torch.int64
        fn = lambda: ops.upsample_argmax(logits, (out_h, out_w), out_dtype=dtype, backend="cpp")
    got = bench_run(benchmark, fn, "cpu")
    assert torch.equal(got.long(), reference.upsample_argmax(logits, [out_h, out_w], [out_h, out_w]))
