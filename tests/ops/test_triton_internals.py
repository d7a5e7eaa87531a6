"""The Triton kernels' own mechanics (rtpanoptic.kernels), beyond what the per-op tests check on
every backend: the NaN rule of their min/max helpers, the streamed scan of panoptic_from_dense,
the GPU block sizes (several programs per launch: tiles, partial sums, tails) forced under the
interpreter."""
import importlib.util
import os

import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not HAS_TRITON or not (INTERPRET or torch.cuda.is_available()),
    reason="needs triton, and a GPU or TRITON_INTERPRET=1",
)
# the interpreter runs on CPU tensors; with a GPU (and no interpreter) the kernels run there
DEV = "cpu" if INTERPRET else "cuda"
TRITON = dict(backend="triton")
BOX = dict(size=60.0, max_wh=30.0, min_wh=1.0, device=DEV)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


if HAS_TRITON:
    import triton
    import triton.language as tl

    from rtpanoptic.kernels._box_score import nan_max, nan_min

    @triton.jit
    def _min_max_kernel(a_ptr, b_ptr, lo_ptr, hi_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        a = tl.load(a_ptr + i)
        b = tl.load(b_ptr + i)
        tl.store(lo_ptr + i, nan_min(a, b))
        tl.store(hi_ptr + i, nan_max(a, b))


    @triton.jit
    def _runtime_range_kernel(x_ptr, out_ptr, n):
        # a loop over a runtime count: the interpreter turns ``n`` into a Python int (__index__)
        acc = tl.load(x_ptr)
        for j in range(1, n):
            acc += tl.load(x_ptr + j)
        tl.store(out_ptr, acc)


def test_loop_over_a_runtime_count_runs():
    """``for j in range(n)`` with a runtime ``n``: Triton 3.6's interpreter converts ``n`` with
    ``int()`` of a one-element array, an error on numpy >= 2.4 (the GPU image's stack failed 442
    op tests so) unless kernels/_interpreter_compat.py is installed; compiled, it is a plain loop."""
    from rtpanoptic.kernels._common import launch

    x = torch.arange(1, 8, dtype=torch.float32, device=DEV)
    out = torch.zeros(1, device=DEV)
    launch(_runtime_range_kernel, (1,), x, out, 7)
    assert out.item() == 28.0


def test_interpreter_index_shim():
    """The shim converts a one-element array of any rank as Triton 3.8's interpreter does, and
    still refuses a block; it is installed for the Triton versions before 3.8 only."""
    import numpy as np

    from rtpanoptic.kernels import _interpreter_compat as compat

    class Scalar:
        def __init__(self, data):
            self.handle = type("Handle", (), {"data": data})()

    assert compat._index(Scalar(np.array([7], dtype=np.int32))) == 7
    assert compat._index(Scalar(np.array([[3]], dtype=np.int64))) == 3
    assert type(compat._index(Scalar(np.array([3], dtype=np.int64)))) is int
    with pytest.raises(ValueError, match="size 1"):
        compat._index(Scalar(np.arange(2)))
    assert compat.needed("3.6.0") and compat.needed("3.7.1") and compat.needed("2.3.1")
    assert not compat.needed("3.8.0") and not compat.needed("3.10.2") and not compat.needed("4.0.0")
    if INTERPRET:
        from triton.runtime import interpreter

        patched = getattr(interpreter._patch_lang_tensor, "rtpanoptic_index_shim", False)
        assert patched == compat.needed(triton.__version__)


def test_interpreted_kernels_launch_without_wrap_triton():
    """Under the interpreter a kernel is an InterpretedFunction, which torch 2.11's wrap_triton
    refuses ("wrap_triton only works on functions annotated with triton.jit") and 2.14's passes
    through: ``launchable`` passes it through on every torch; a compiled kernel is wrapped."""
    from rtpanoptic.kernels._common import is_interpreted, launchable

    assert is_interpreted(_runtime_range_kernel) == INTERPRET
    if INTERPRET:
        assert launchable(_runtime_range_kernel) is _runtime_range_kernel


def test_nan_min_max_propagate_nan_as_torch():
    """box_math.h's rule: the box formulas' min/max/clamp propagate NaN as torch.minimum/maximum
    (Triton's default minimum/maximum return the non-NaN operand)."""
    from rtpanoptic.kernels._common import launch

    a = torch.tensor([1.0, float("nan"), 2.0, float("nan"), -0.0, 3.0, float("inf"), 0.0], device=DEV)
    b = torch.tensor([2.0, 1.0, float("nan"), float("nan"), 0.0, -1.0, 1.0, float("-inf")], device=DEV)
    lo, hi = torch.empty_like(a), torch.empty_like(a)
    launch(_min_max_kernel, (1,), a, b, lo, hi, N=8)
    assert torch.equal(lo.isnan(), torch.minimum(a, b).isnan())
    assert torch.equal(hi.isnan(), torch.maximum(a, b).isnan())
    finite = ~a.isnan() & ~b.isnan()
    assert torch.equal(lo[finite], torch.minimum(a, b)[finite])
    assert torch.equal(hi[finite], torch.maximum(a, b)[finite])


def _assert_identical(out, ref):
    """``out`` equals ``ref`` (the reference's fixed-size form, trimmed when ``out`` is trimmed)."""
    if len(out) == 5 and len(ref) == 6:
        ref = ops.PaddedPanopticSegments(*ref).trimmed()
    assert len(out) == len(ref)
    for name, a, b in zip(("segment_map", "classes", "queries", "scores", "areas", "count"), out, ref):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name


def _scene(make, seed, h, w, q):
    """Interleaved thing and stuff classes, few distinct scores."""
    return make.scene(seed, h, w, q, c=7, things=[1, 3, 4, 6], device=DEV, score_levels=3)


def test_panoptic_streamed_scan_matches_register_scan(monkeypatch, make):
    """Large grids stream the taken-pixel bitmap through global memory: same result."""
    from rtpanoptic.kernels import panoptic_from_dense as kernel

    scene = _scene(make, 5, h=17, w=40, q=12)
    args = dict(sigma=0.1, overlap_threshold=0.3, stuff_area_limit=4)
    resident = ops.panoptic_from_dense(*scene, **args, **TRITON)
    monkeypatch.setattr(kernel, "RESIDENT_WORDS", 0)
    streamed = ops.panoptic_from_dense(*scene, **args, **TRITON)
    _assert_identical(streamed, resident)
    _assert_identical(streamed, reference.panoptic_from_dense(*scene, 0.1, "iou", 0.0, 0.3, 4))


@pytest.mark.skipif(not INTERPRET, reason="checks the GPU block sizes under the interpreter")
def test_gpu_block_sizes_multi_program(monkeypatch, make):
    """Under the interpreter every op normally runs as one big program; here the GPU block
    sizes are forced, so every launch has several programs (tiles, partial sums, tails)."""
    from rtpanoptic.kernels import _common

    monkeypatch.setattr(_common, "GPU_BLOCKS_IN_INTERPRETER", True)
    dense = make.dense(13, 50, 0, **BOX)  # 650 pixels: 3 blocks of 256, 21 words
    queries = make.boxes(20, seed=1, **BOX)  # 2 query tiles of 16
    got = ops.iou_attention(dense, queries, "tri", **TRITON)
    torch.testing.assert_close(got, reference.iou_attention(dense, queries, "tri"))
    a, b = make.boxes(40, seed=2, **BOX), make.boxes(70, seed=3, **BOX)
    torch.testing.assert_close(ops.box_iou(a, b, **TRITON), reference.box_iou(a, b))
    offsets = torch.rand(2, 4, 13, 50, generator=_gen(1)).to(DEV) * 30
    assert torch.equal(ops.decode_boxes(offsets, 8, **TRITON), reference.decode_boxes(offsets, 8))
    lv_offsets, levelness = make.levels(2, [(20, 30), (10, 15), (5, 8)], (20, 30), dtype=torch.float32, device=DEV,
                                        scale=50.0, ties=3)
    got = ops.gather_levelness(lv_offsets, levelness, 4, **TRITON)
    want = reference.gather_levelness(lv_offsets, levelness, 4)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])

    d, q, m, beta, bi = make.loss_case(5, b=3, h=20, w=30, q=6, device=DEV, size=20.0, max_wh=12.0, min_wh=1.0,
                                       density=0.5, empty=(1,))  # 600 pixels: 3 programs per image
    d.requires_grad_()
    q.requires_grad_()
    loss = ops.mask_loss(d, q, m, beta, bi, **TRITON)
    ref = reference.mask_loss(d, q, m, beta, bi)
    torch.testing.assert_close(loss, ref)
    for x, y in zip(torch.autograd.grad(loss, (d, q)), torch.autograd.grad(ref, (d, q))):
        torch.testing.assert_close(x, y)
    w = torch.randn(20, 13, 50, generator=_gen(2), dtype=torch.float64).to(DEV)
    d64, q64 = dense.double().requires_grad_(), queries.double().requires_grad_()
    got = torch.autograd.grad((ops.iou_attention(d64, q64, **TRITON) * w).sum(), (d64, q64))
    want = torch.autograd.grad((reference.iou_attention(d64, q64, "iou") * w).sum(), (d64, q64))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)

    scene = _scene(make, 6, h=13, w=100, q=20)  # 41 words: 2 programs of 32 words; 3 query groups of 8
    out = ops.panoptic_from_dense(*scene, sigma=0.1, stuff_area_limit=3, **TRITON)
    _assert_identical(out, reference.panoptic_from_dense(*scene, 0.1, "iou", 0.0, 0.5, 3))
    boxes = make.boxes(150, size=80.0, seed=7, max_wh=40.0, min_wh=1.0, device=DEV)
    scores = torch.rand(150, generator=_gen(7)).to(DEV)
    assert torch.equal(ops.nms(boxes, scores, 0.5, **TRITON), reference.nms(boxes, scores, 0.5))


def test_constants_live_for_the_process():
    """A CUDA graph captured after a warm-up call reads the constants by address: however many other
    constants are made later, the first one is the same tensor (an LRU cache of 64 freed it)."""
    from rtpanoptic.kernels import _common

    like = torch.zeros(1)
    first = _common.constant((0.123456,), torch.float32, like)
    address = first.data_ptr()
    for k in range(200):
        _common.constant((float(k) + 0.5,), torch.float32, like)
    again = _common.constant((0.123456,), torch.float32, like)
    assert again is first and again.data_ptr() == address and again.item() == torch.tensor(0.123456).item()


def test_padded_panoptic_class_ids_beyond_int32_get_empty_masks(make):
    """The padded form on a GPU reads no class id on the host: a present query whose class is outside
    [0, C) gets an empty mask.  2**32 + 1 is outside, even though its low 32 bits are thing class 1
    (the kernel took int32 class ids): the raw kernel gives it what it gives class C + 7."""
    from rtpanoptic.kernels import panoptic_from_dense as kernel

    dense, sem, boxes, classes, scores, is_thing = _scene(make, 3, h=13, w=40, q=10)
    args = (0.1, "iou", 0.0, 0.5, 3)
    outs = []
    for bad in (2**32 + 1, sem.shape[0] + 7):
        c = classes.clone()
        c[scores.argmax()] = bad  # the query painted first
        outs.append(kernel.panoptic_from_dense(dense, sem, boxes, c, scores, is_thing, *args))
    _assert_identical(outs[0], outs[1])
    c = classes.clone()
    c[scores.argmax()] = 1
    assert not torch.equal(kernel.panoptic_from_dense(dense, sem, boxes, c, scores, is_thing, *args)[0], outs[1][0])
