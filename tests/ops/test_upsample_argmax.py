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


def _inf_case():
    """Class 0 is -1 with one -inf cell, class 1 is 0 everywhere: class 1 wins unless an inf * 0
    turns class 0 into NaN (which wins the argmax)."""
    logits = torch.zeros(1, 2, 2, 3)
    logits[0, 0] = -1.0
    logits[0, 0, 1, 1] = float("-inf")
    return logits


@pytest.mark.backends("upsample_argmax", reference=False)
@pytest.mark.parametrize("size", [(2, 3), (2, 6), (4, 3), (4, 6)])
def test_infinite_logits_on_unresized_axes_follow_the_device_reference(backend, device, size):
    logits = _inf_case().to(device)
    want = reference.upsample_argmax(logits, list(size), list(size))
    assert torch.equal(ops.upsample_argmax(logits, size, size, backend=backend).cpu(), want.cpu())


def test_triton_takes_atens_cuda_rule_on_a_gpu(monkeypatch):
    """The Triton kernel's GPU rule, run through the interpreter against hand-computed ATen CUDA
    results (upsample_bilinear2d_out_frame): sizes unchanged -> a copy (the -inf cell loses); only
    H unchanged -> taps (d, d + 1) with weights (1, 0) on H, so row 0 takes -inf * 0 = NaN from row
    1 wherever row 1's W-taps reach the -inf cell (columns 0-4).  The CPU rule, (d, d) taps, gives
    NaN at the -inf cell itself and keeps row 0 finite (asserted against the CPU reference)."""
    pytest.importorskip("triton")
    if "triton" not in ops.available_backends("cpu")["upsample_argmax"]:
        pytest.skip("the triton backend runs on the CPU only through the interpreter")
    from rtpanoptic.kernels import upsample_argmax as kernel

    logits = _inf_case()
    cpu_want = {(2, 3): [[1, 1, 1], [1, 0, 1]], (2, 6): [[1] * 6, [0, 0, 0, 0, 0, 1]]}
    cuda_want = {(2, 3): [[1, 1, 1], [1, 1, 1]], (2, 6): [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]]}
    for size, want in cpu_want.items():
        assert reference.upsample_argmax(logits, list(size), list(size))[0].tolist() == want
        assert ops.upsample_argmax(logits, size, size, backend="triton")[0].tolist() == want
    monkeypatch.setattr(kernel, "_cuda_rule", lambda t: True)
    for size, want in cuda_want.items():
        assert ops.upsample_argmax(logits, size, size, backend="triton")[0].tolist() == want


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


# ------------------------------------------------------------ the C++ kernel's corner shortcut
# csrc/cpu/upsample_argmax_kernel.cpp takes an output pixel's class from its corner cells where
# they share a safe argmax (csrc/upsample_math.h); RTPANOPTIC_UPSAMPLE_PLAIN=1 turns that off.
# Both paths must equal each other bit for bit on every input, and the reference (F.interpolate +
# argmax) wherever ATen's kernel fuses multiply-adds as the kernel does (integer scales).
FUSED_ATEN = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
TINY = {torch.float32: torch.finfo(torch.float32).tiny, torch.float64: torch.finfo(torch.float64).tiny}


def _blobby(c, h, w, seed, dtype=torch.float32):
    """Smooth logits: the class regions are large blobs (a realistic semantic head output)."""
    coarse = torch.randn(1, c, max(h // 6, 2), max(w // 6, 2), generator=_gen(seed), dtype=torch.float64)
    return (4 * F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)).to(dtype)


def _top2(logits):
    """Per cell: the winner's value and the runner-up's class index."""
    top = logits.argmax(1, keepdim=True)
    rest = logits.scatter(1, top, float("-inf"))
    return logits.gather(1, top), rest.argmax(1, keepdim=True)


def _near_ties(logits, seed, ulps=(-2, -1, 0, 1, 2)):
    """The runner-up moved to within a couple of units in the last place of the winner, below or
    above it, in half of the cells."""
    best, second = _top2(logits)
    g = _gen(seed)
    step = torch.tensor(ulps)[torch.randint(0, len(ulps), best.shape, generator=g)]
    val = best.clone()
    for k in range(max(abs(u) for u in ulps)):
        up, down = step > k, step < -k
        val = torch.where(up, torch.nextafter(val, torch.tensor(float("inf"), dtype=val.dtype)), val)
        val = torch.where(down, torch.nextafter(val, torch.tensor(float("-inf"), dtype=val.dtype)), val)
    where = torch.rand(best.shape, generator=g) < 0.5
    return logits.scatter(1, second, torch.where(where, val, logits.gather(1, second)))


def _at_margin(logits, seed):
    """The runner-up at the shortcut's threshold: best - 2^-15 m - 64 tiny, times (1 +- 2^-10)."""
    best, second = _top2(logits)
    m = logits.abs().amax(1, keepdim=True)
    gap = (m * 2.0**-15 + 64 * TINY[logits.dtype]) * (1 + 2.0**-10 * torch.randn(best.shape, generator=_gen(seed),
                                                                                    dtype=logits.dtype).sign())
    return logits.scatter(1, second, best - gap)


def _specials(logits, seed):
    """NaN, +inf, -inf, huge (near a quarter of the largest finite value) and subnormal logits."""
    g = _gen(seed)
    fi = torch.finfo(logits.dtype)
    pick = torch.rand(logits.shape, generator=g)
    out = logits.clone()
    out[pick < 0.004] = float("nan")
    out[(pick >= 0.004) & (pick < 0.008)] = float("inf")
    out[(pick >= 0.008) & (pick < 0.012)] = float("-inf")
    huge = (pick >= 0.012) & (pick < 0.03)
    out[huge] = fi.max / 4 * (1 + torch.randn(int(huge.sum()), generator=g, dtype=logits.dtype) * 1e-3)
    tiny = (pick >= 0.03) & (pick < 0.06)
    out[tiny] = fi.tiny * torch.randn(int(tiny.sum()), generator=g, dtype=logits.dtype) * 2.0**-10
    return out


def _ties(logits, seed):
    """The winner's value copied into an earlier and a later class in a third of the cells."""
    best, _ = _top2(logits)
    c = logits.shape[1]
    g = _gen(seed)
    other = torch.randint(0, c, best.shape, generator=g)
    copy = torch.rand(best.shape, generator=g) < 0.33
    return logits.scatter(1, other, torch.where(copy, best, logits.gather(1, other)))


def _one_ulp_above(dtype):
    """Class 1 one unit in the last place above class 0 at every cell (a strict argmax everywhere):
    the resized values tie in ~8% of the pixels (float32), which then go to class 0."""
    base = torch.randn(1, 1, 24, 40, generator=_gen(11), dtype=dtype)
    return torch.cat([base, torch.nextafter(base, torch.tensor(float("inf"), dtype=dtype))], dim=1)


ADVERSARIAL = {
    "blobby": lambda dt: _blobby(19, 24, 40, 20, dt),
    "boundaries_everywhere": lambda dt: torch.randn(2, 19, 24, 40, generator=_gen(21), dtype=dt),
    "ties": lambda dt: _ties(_blobby(7, 24, 40, 22, dt), 23),
    "near_ties": lambda dt: _near_ties(_blobby(7, 24, 40, 24, dt), 25),
    "at_margin": lambda dt: _at_margin(_blobby(7, 24, 40, 26, dt), 27),
    "specials": lambda dt: _specials(_blobby(7, 24, 40, 28, dt), 29),
    "one_ulp_above": _one_ulp_above,
    "one_class": lambda dt: _specials(_blobby(1, 12, 20, 30, dt), 31),
    "constant": lambda dt: torch.zeros(1, 5, 8, 8, dtype=dt),
}
# size, crop per (h, w) = (24, 40) or (16, 16) etc.: integer strides, a crop, one resized axis
# (the other at scale 1), sizes not divisible by the stride, downsampling.
SCALES = {
    "x8-crop": lambda h, w: ((8 * h, 8 * w), (8 * h - 5, 8 * w - 3)),
    "x4": lambda h, w: ((4 * h, 4 * w), (4 * h, 4 * w)),
    "rows-only": lambda h, w: ((h, 4 * w), (h, 4 * w)),
    "cols-only": lambda h, w: ((8 * h, w), (8 * h - 1, w)),
    "non-integer": lambda h, w: ((3 * h + 5, 5 * w - 3), (3 * h + 5, 5 * w - 3)),
    "down": lambda h, w: ((h // 2 + 1, w // 3 + 1), (h // 2 + 1, w // 3 + 1)),
}
INTEGER_SCALES = ("x8-crop", "x4", "rows-only", "cols-only")


def _cpp_paths(logits, size, crop, monkeypatch, **kwargs):
    """(corner shortcut, plain path) results of the C++ kernel."""
    monkeypatch.delenv("RTPANOPTIC_UPSAMPLE_PLAIN", raising=False)
    fast = ops.upsample_argmax(logits, size, crop, backend="cpp", **kwargs)
    monkeypatch.setenv("RTPANOPTIC_UPSAMPLE_PLAIN", "1")
    plain = ops.upsample_argmax(logits, size, crop, backend="cpp", **kwargs)
    monkeypatch.delenv("RTPANOPTIC_UPSAMPLE_PLAIN")
    return fast, plain


cpp_only = pytest.mark.skipif("cpp" not in ops.available_backends("cpu")["upsample_argmax"],
                              reason="the C++ extension is not built")


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("inputs", list(ADVERSARIAL))
def test_corner_shortcut_equals_plain_path_and_reference(inputs, scale, dtype, monkeypatch):
    logits = ADVERSARIAL[inputs](dtype)
    size, crop = SCALES[scale](*logits.shape[2:])
    fast, plain = _cpp_paths(logits, size, crop, monkeypatch)
    assert torch.equal(fast, plain)
    if (scale in INTEGER_SCALES and FUSED_ATEN) or inputs in ("blobby", "boundaries_everywhere", "constant"):
        assert torch.equal(fast, reference.upsample_argmax(logits, list(size), list(crop)))


@cpp_only
@pytest.mark.skipif(not FUSED_ATEN, reason="ATen's DEFAULT-capability CPU kernel does not fuse multiply-adds")
def test_strict_argmax_at_every_corner_is_not_enough():
    """The adversarial case the shortcut's margin exists for: a strict argmax shared by all four
    corners, yet the resized values tie and torch.argmax picks the earlier class."""
    logits = _one_ulp_above(torch.float32)
    want = reference.upsample_argmax(logits, [192, 320], [192, 320])
    assert (want == 0).any() and (want == 1).any()
    assert torch.equal(ops.upsample_argmax(logits, (192, 320), backend="cpp"), want)


# ------------------------------------------------------------------------- output dtype
# One op, one schema: every backend writes out_dtype itself (no int64 map cast afterwards).
OUT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8]


def _nan_ties(c=19, h=12, w=20):
    """NaN, inf, huge and subnormal logits (:func:`_specials`) with exact ties: the plane of class
    c // 2 copied into the last class, so wherever it wins, the earlier index must."""
    logits = _specials(_blobby(c, h, w, 42), 43)
    logits[:, -1] = logits[:, c // 2]
    return logits


@pytest.mark.backends("upsample_argmax", reference=False)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("inputs", ["random", "ties_nan"])
def test_out_dtype_equals_reference(backend, device, out_dtype, inputs):
    """Each output dtype on every backend: the reference's class indices, in that dtype, on the
    logits' device; the empty batch too."""
    g = _gen(40)
    logits = (torch.randn(2, 19, 12, 20, generator=g) if inputs == "random" else _nan_ties()).to(device)
    want = reference.upsample_argmax(logits, [96, 160], [90, 157], out_dtype)
    assert want.dtype == out_dtype
    if inputs == "ties_nan":
        assert (want == 19 // 2).any() and not (want == 18).any()
    assert torch.equal(want.long(), reference.upsample_argmax(logits, [96, 160], [90, 157]))
    got = ops.upsample_argmax(logits, (96, 160), (90, 157), out_dtype=out_dtype, backend=backend)
    assert got.dtype == out_dtype and got.device == logits.device and got.shape == (logits.shape[0], 90, 157)
    assert torch.equal(got.cpu(), want.cpu())
    empty = ops.upsample_argmax(logits[:0], (96, 160), out_dtype=out_dtype, backend=backend)
    assert empty.dtype == out_dtype and empty.shape == (0, 96, 160)


@pytest.mark.backends("upsample_argmax", reference=False)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_registered_op_writes_out_dtype(backend, device, out_dtype, kernels):
    """The registered op itself (torch.ops.<namespace>.upsample_argmax) takes out_dtype: no
    cast in the public wrapper; None is int64."""
    logits = _nan_ties(7, 6, 9).to(device)
    op = kernels(backend).upsample_argmax
    want = reference.upsample_argmax(logits, [24, 36], [22, 35])
    got = op(logits, [24, 36], [22, 35], out_dtype)
    assert got.dtype == out_dtype and torch.equal(got.cpu(), want.cpu().to(out_dtype))
    assert op(logits, [24, 36], [22, 35]).dtype == torch.int64


@cpp_only
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("inputs", ["blobby", "specials", "ties", "boundaries_everywhere"])
def test_out_dtype_on_both_cpp_paths(inputs, out_dtype, monkeypatch):
    logits = ADVERSARIAL[inputs](torch.float32)
    size = (8 * logits.shape[2], 8 * logits.shape[3])
    fast, plain = _cpp_paths(logits, size, size, monkeypatch, out_dtype=out_dtype)
    assert fast.dtype == plain.dtype == out_dtype
    assert torch.equal(fast, plain)
    wide = _cpp_paths(logits, size, size, monkeypatch)[0]
    assert torch.equal(fast, wide.to(out_dtype))
    if FUSED_ATEN:
        assert torch.equal(fast, reference.upsample_argmax(logits, list(size), list(size), out_dtype))


@pytest.mark.backends("upsample_argmax")
def test_uint8_holds_256_classes(backend, device):
    logits = torch.zeros(1, 256, 2, 2)
    logits[0, 255] = 1.0
    got = ops.upsample_argmax(logits.to(device), (8, 8), out_dtype=torch.uint8, backend=backend)
    assert torch.equal(got.cpu(), torch.full((1, 8, 8), 255, dtype=torch.uint8))


@pytest.mark.parametrize("args,kwargs,exc,msg", [
    ((torch.zeros(1, 2, 3, 4), (8, 8)), {"out_dtype": torch.float32}, TypeError,
     r"^upsample_argmax: out_dtype must be torch.int64, torch.int32, torch.int16 or torch.uint8, got torch.float32$"),
    ((torch.zeros(1, 2, 3, 4), (8, 8)), {"out_dtype": torch.int8}, TypeError,
     r"^upsample_argmax: out_dtype must be torch.int64, torch.int32, torch.int16 or torch.uint8, got torch.int8$"),
    ((torch.zeros(1, 2, 3, 4), (8, 8)), {"out_dtype": None}, TypeError,
     r"^upsample_argmax: out_dtype must be torch.int64, torch.int32, torch.int16 or torch.uint8, got None$"),
    ((torch.zeros(1, 257, 3, 4), (8, 8)), {"out_dtype": torch.uint8}, ValueError,
     r"^upsample_argmax: 257 classes do not fit in torch.uint8$"),
    ((torch.zeros(1, 32769, 1, 1), (2, 2)), {"out_dtype": torch.int16}, ValueError,
     r"^upsample_argmax: 32769 classes do not fit in torch.int16$"),
])
def test_out_dtype_validation(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        ops.upsample_argmax(*args, **kwargs)
