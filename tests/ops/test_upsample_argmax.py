"""ops.upsample_argmax: every backend against the reference (F.interpolate + torch.argmax) on
random inputs, integer and non-integer scales, 1-pixel inputs, crops, batches, near ties, exact
ties and NaN; validation errors.  opcheck and torch.compile: tests/ops/test_opcheck.py."""
import pytest
import torch
import torch.nn.functional as F

from rtpanoptic import ops
from rtpanoptic.ops import reference

# (B, C, h, w, size, crop)
CASES = [
    (1, 19, 16, 32, (64, 128), (61, 125)),  # stride 4, cropped (an image in a padded batch)
    (2, 5, 7, 9, (56, 72), (56, 70)),  # stride 8
    (1, 4, 6, 5, (18, 15), (18, 15)),  # stride 3
    (1, 3, 1, 1, (4, 4), (4, 4)),  # one input pixel
    (1, 3, 1, 1, (5, 3), (5, 3)),  # one input pixel, non-integer scale
    (1, 7, 9, 13, (27, 40), (27, 40)),  # non-integer output sizes
    (1, 3, 5, 7, (13, 22), (10, 22)),
    (1, 2, 6, 5, (6, 11), (6, 11)),  # one axis at scale 1
    (1, 4, 9, 13, (1, 1), (1, 1)),  # downsampling to one pixel
    (1, 4, 12, 10, (5, 7), (5, 7)),  # downsampling
    (1, 1, 3, 4, (12, 16), (12, 16)),  # one class
]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.backends("upsample_argmax", reference=False)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-{c[4][0]}x{c[4][1]}")
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_reference(backend, device, case, seed):
    b, c, h, w, size, crop = case
    logits = torch.randn(b, c, h, w, generator=_gen(seed)).to(device)
    want = reference.upsample_argmax(logits, list(size), list(crop))
    got = ops.upsample_argmax(logits, size, crop, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (b, *crop)
    assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT",
                    reason="ATen's DEFAULT-capability CPU kernel does not fuse multiply-adds; the kernels do")
@pytest.mark.backends("upsample_argmax", reference=False)
@pytest.mark.parametrize("scale", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_near_ties_at_integer_scales(backend, device, scale, dtype):
    """Class 1 is class 0 moved by one or two units in the last place (of ``dtype``: float64 logits are
    resized in float64): the argmax is decided by the rounding of the resized values, which must be
    F.interpolate's (its CPU kernel's)."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernel computes in float32")
    base = torch.randn(2, 1, 16, 32, generator=_gen(3), dtype=dtype)
    step = torch.randint(-2, 3, base.shape, generator=_gen(4))
    other = base
    inf = torch.tensor(float("inf"), dtype=dtype)
    for _ in range(2):
        other = torch.where(step > 0, torch.nextafter(other, inf),
                            torch.where(step < 0, torch.nextafter(other, -inf), other))
        step = step - step.sign()
    logits = torch.cat([base, other, base - 1], dim=1).to(device)
    size = (16 * scale, 32 * scale)
    up = F.interpolate(logits.cpu(), size=size, mode="bilinear", align_corners=False)
    assert (up[:, 0] == up[:, 1]).any() and (up[:, 0] < up[:, 1]).any() and (up[:, 0] > up[:, 1]).any()
    got = ops.upsample_argmax(logits, size, backend=backend)
    assert torch.equal(got.cpu(), up.argmax(1))


@pytest.mark.backends("upsample_argmax")
def test_ties_and_nan_follow_torch_argmax(backend, device):
    logits = torch.zeros(1, 4, 3, 3)
    logits[0, 1:3] = 1.0  # classes 1 and 2 tie everywhere: the first wins
    logits[0, 3, 1, 1] = float("nan")  # NaN wins where it reaches (the centre's neighbourhood)
    logits[0, 2, 0, 0] = float("nan")
    logits = logits.to(device)
    want = reference.upsample_argmax(logits, [12, 12], [12, 12])
    got = ops.upsample_argmax(logits, (12, 12), backend=backend)
    assert torch.equal(got.cpu(), want.cpu())
    assert set(got.unique().tolist()) == {1, 2, 3}


@pytest.mark.backends("upsample_argmax")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, device, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernel computes in float32")
    logits = torch.randn(2, 6, 5, 8, generator=_gen(5)).to(dtype).to(device)
    want = F.interpolate(logits.double() if dtype == torch.float64 else logits.float(), size=(20, 32),
                         mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(ops.upsample_argmax(logits, (20, 32), backend=backend).cpu(), want.cpu())


@pytest.mark.backends("upsample_argmax")
def test_non_contiguous_and_empty_batch(backend, device):
    logits = torch.randn(1, 9, 7, 5, generator=_gen(6)).to(device).transpose(2, 3)
    assert not logits.is_contiguous()
    want = reference.upsample_argmax(logits.contiguous(), [20, 28], [20, 28])
    assert torch.equal(ops.upsample_argmax(logits, (20, 28), backend=backend), want)
    empty = ops.upsample_argmax(logits[:0], (20, 28), (3, 4), backend=backend)
    assert empty.shape == (0, 3, 4) and empty.dtype == torch.int64


@pytest.mark.parametrize("args,kwargs,exc,msg", [
    ((torch.zeros(2, 3, 4), (8, 8)), {}, ValueError, r"upsample_argmax: logits must have shape 4-D, got \[2, 3, 4\]"),
    ((torch.zeros(1, 2, 3, 4, dtype=torch.int64), (8, 8)), {}, TypeError,
     "upsample_argmax: logits must be a floating-point tensor, got torch.int64"),
    ((torch.zeros(1, 2, 3, 4), (8,)), {}, TypeError, r"upsample_argmax: size must be a pair of ints \(H, W\), got \(8,\)"),
    ((torch.zeros(1, 2, 3, 4), (8, 0)), {}, ValueError, r"upsample_argmax: size\[1\] must be a positive int, got 0"),
    ((torch.zeros(1, 2, 3, 4), (8, 8.0)), {}, ValueError, r"upsample_argmax: size\[1\] must be a positive int, got 8.0"),
    ((torch.zeros(1, 2, 3, 4), (8, 8), (9, 8)), {}, ValueError,
     r"upsample_argmax: crop \(9, 8\) must not exceed size \(8, 8\)"),
    ((torch.zeros(1, 0, 3, 4), (8, 8)), {}, ValueError,
     r"upsample_argmax: logits must have at least one class and one pixel, got \[1, 0, 3, 4\]"),
    ((torch.zeros(1, 2, 0, 4), (8, 8)), {}, ValueError,
     r"upsample_argmax: logits must have at least one class and one pixel, got \[1, 2, 0, 4\]"),
    ((torch.zeros(1, 2, 3, 4), (8, 8)), {"backend": "gpu"}, ValueError, "upsample_argmax: backend must be one of"),
])
def test_validation(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        ops.upsample_argmax(*args, **kwargs)
