"""How the GPU backends (cuda, and compiled Triton) execute, beyond their values: inputs on a
second device, a non-default stream, CUDA-graph capture, torch.compile over the C++ ops,
bit-for-bit determinism, bit-for-bit agreement with the CPU where promised, the size limits
(NMS near its box limit, Q x H x W >= 2**31, panoptic grids beyond the register-resident bitmap).
Every test needs a GPU and skips without one; tests/ops/sanitizer_cases.py holds the cases that
``compute-sanitizer`` runs (``make gpu-check``)."""
import os

import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, reference

HAS_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
GIB = 1 << 30


def gpu_backends(op: str) -> list[str]:
    """The GPU backends of ``op`` here: cuda, and Triton when compiled (not interpreted)."""
    if not HAS_GPU:
        return []
    return [b for b in ops.available_backends("cuda")[op] if b == "cuda" or (b == "triton" and not INTERPRET)]


def _params(*names):
    return [pytest.param(op, b, id=f"{op}-{b}") for op in names for b in gpu_backends(op)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


BOX = dict(size=300.0, max_wh=120.0, min_wh=1.0)  # corners in [0, 300)², sides 1 to 121


def _scene(make, seed, h=40, w=56, c=8, q=30):
    return make.scene(seed, h, w, q, c, things=range(3, c))


def _case(make, op: str, seed: int = 0):
    """CPU inputs of ``op`` (positional, as the public function takes them) and the indices of the
    differentiable ones."""
    g = _gen(seed)
    if op in ("nms", "batched_nms"):
        boxes, scores = make.boxes(500, seed=seed, **BOX), torch.rand(500, generator=g)
        args = (boxes, scores, torch.randint(0, 5, (500,), generator=g), 0.5) if op == "batched_nms" else \
            (boxes, scores, 0.5)
        return args, ()
    if op == "box_iou":
        return (make.boxes(200, seed=seed, **BOX), make.boxes(70, seed=seed + 1, **BOX)), ()
    if op == "decode_boxes":
        return (torch.rand(2, 4, 24, 40, generator=g) * 30, 8), (0,)
    if op == "gather_levelness":
        offsets = [torch.rand(2, 4, h, w, generator=g) * 40 for h, w in ((24, 40), (12, 20), (6, 10))]
        return (offsets, torch.randn(2, 4, 48, 80, generator=g), 4), (0,)
    if op == "iou_attention":
        return (make.dense(24, 40, seed, **BOX), make.boxes(37, seed=seed + 1, **BOX), "tri"), (0, 1)
    if op == "mask_loss":
        dense = torch.stack([make.dense(24, 40, seed + i, **BOX) for i in range(2)])
        q = 37
        return (dense, make.boxes(q, seed=seed + 3, **BOX), torch.rand(q, 24, 40, generator=g) > 0.6, torch.rand(q, generator=g),
                torch.randint(0, 2, (q,), generator=g)), (0, 1)
    if op in ("panoptic_from_dense", "panoptic_from_dense_release"):
        return _scene(make, seed), ()
    if op == "select_queries":
        boxes, scores = make.boxes(500, seed=seed, **BOX), torch.rand(500, generator=g)
        return (boxes, scores, torch.randint(0, 5, (500,), generator=g), 0.5, 0.9, 100), ()
    if op == "upsample_argmax":
        return (torch.randn(2, 8, 24, 40, generator=g), (96, 160), (90, 150)), ()
    raise KeyError(op)


# keyword arguments of the public op beside _case's positional ones (the scene's grid is 40 x 56)
KWARGS = {"panoptic_from_dense_release": dict(stride=4, size=(160, 224))}


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, list):
        return [_to(t, device) for t in x]
    return x


def _run(op, backend, args, grad_at=()):
    """Outputs of ``op`` (and, for the differentiable inputs, gradients of a fixed weighting)."""
    args = list(args)
    leaves = []
    for i in grad_at:
        if isinstance(args[i], list):
            args[i] = [t.detach().clone().requires_grad_() for t in args[i]]
            leaves += args[i]
        else:
            args[i] = args[i].detach().clone().requires_grad_()
            leaves.append(args[i])
    out = getattr(ops, op)(*args, backend=backend, **KWARGS.get(op, {}))
    outs = list(out) if isinstance(out, tuple) else [out]
    if leaves:
        first = outs[0]
        w = torch.linspace(-1, 1, first.numel(), dtype=torch.float64).reshape(first.shape).to(first)
        outs += list(torch.autograd.grad((first * w).sum(), leaves))
    return [t.detach() for t in outs]


def _assert_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x.cpu().isnan(), y.cpu().isnan()) and torch.equal(x.cpu().nan_to_num(), y.cpu().nan_to_num())


# ops whose raw torch.ops schema takes _case's arguments as they are (torch.compile test)
RAW = ("nms", "batched_nms", "box_iou", "decode_boxes", "gather_levelness", "iou_attention", "mask_loss",
       "panoptic_from_dense")
ALL = (*RAW, "select_queries", "upsample_argmax", "panoptic_from_dense_release")


# --------------------------------------------------------------- devices, streams
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("op,backend", _params(*ALL))
def test_inputs_on_a_second_device(op, backend, make):
    """Inputs on cuda:1 while cuda:0 is current: the kernels launch on cuda:1 (a device guard)
    and give what they give on cuda:0."""
    args, grad_at = _case(make, op)
    want = _run(op, backend, _to(args, "cuda:0"), grad_at)
    with torch.cuda.device(0):
        got = _run(op, backend, _to(args, "cuda:1"), grad_at)
    assert all(t.device == torch.device("cuda:1") for t in got)
    _assert_equal(got, want)


@pytest.mark.parametrize("op,backend", _params(*ALL))
def test_non_default_stream(op, backend, make):
    """Run on a side stream whose inputs are written there after a long GPU sleep: a kernel
    launched on the default stream instead would read them before they exist."""
    args, grad_at = _case(make, op)
    want = _run(op, backend, _to(args, "cuda"), grad_at)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time before the inputs are copied
        inputs = _to(args, "cuda")
        got = _run(op, backend, inputs, grad_at)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    _assert_equal(got, want)


# ------------------------------------------------------------------- CUDA graphs
# nms and batched_nms size their outputs from the data (one device-to-host copy): they cannot be
# captured; panoptic_from_dense and select_queries can in their padded form (below).  The fixed-shape ops can, after one eager (warm-up) call that
# makes their constants, as the backends themselves (the public mask_loss checks batch_index's
# range on the host first).
@pytest.mark.parametrize("op,backend", _params("box_iou", "decode_boxes", "iou_attention", "mask_loss",
                                               "gather_levelness"))
def test_cuda_graph_capture_and_replay(op, backend, make):
    args, _ = _case(make, op, seed=1)
    static = _to(args, "cuda")
    fn = _dispatch.select(op, backend, torch.device("cuda"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(*static)  # warm-up: allocations, compiled kernels, cached constants
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    outs = list(out) if isinstance(out, tuple) else [out]
    new_args, _ = _case(make, op, seed=2)
    for dst, src in zip(static, new_args):  # new values into the captured inputs
        for d, s in zip(dst if isinstance(dst, list) else [dst], src if isinstance(src, list) else [src]):
            if isinstance(d, torch.Tensor):
                d.copy_(s)
    graph.replay()
    torch.cuda.synchronize()
    want = fn(*_to(new_args, "cuda"))
    _assert_equal(outs, list(want) if isinstance(want, tuple) else [want])


@pytest.mark.parametrize("backend", gpu_backends("panoptic_from_dense"))
def test_padded_panoptic_from_dense_and_select_queries_capture_and_replay(backend, make):
    """select_queries(padded=True) into panoptic_from_dense(padded=True, num_queries=count), captured
    in one CUDA graph and replayed on a new scene: what eager gives, padding and counts included;
    the default (trimmed) form refuses to run inside a capture."""
    def scene(seed):
        dense, sem, boxes, classes, scores, is_thing = (t.cuda() for t in _scene(make, seed, q=60))
        return [dense, sem, boxes, classes, scores], is_thing

    def pipeline(dense, sem, boxes, classes, scores):
        keep, count = ops.select_queries(boxes, scores, classes, 0.5, 0.8, 40, padded=True, backend=backend)
        slot = keep.clamp(min=0)
        return (keep, count, *ops.panoptic_from_dense(dense, sem, boxes[slot], classes[slot], scores[slot], is_thing,
                                                      sigma=0.1, stuff_area_limit=3, num_queries=count, padded=True,
                                                      backend=backend))

    static, is_thing = scene(1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        pipeline(*static)  # warm-up: compiled kernels, cached constants
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = pipeline(*static)
    new, _ = scene(2)
    for dst, src in zip(static, new):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    want = pipeline(*new)
    _assert_equal(list(outs), list(want))
    assert 0 < int(want[1]) < 40 and int(want[-1]) > 3
    with pytest.raises(RuntimeError, match="pass padded=True"), torch.cuda.graph(torch.cuda.CUDAGraph()):
        ops.panoptic_from_dense(*static[:2], static[2][:3], static[3][:3], static[4][:3], is_thing, backend=backend)


# --------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("op", [o for o in RAW if "cuda" in gpu_backends(o)])
def test_torch_compile_over_the_cuda_ops(op, make):
    """torch.ops.rtpanoptic.<op> on CUDA tensors under torch.compile(fullgraph=True, inductor):
    the fake kernels trace, the compiled graph calls the CUDA kernels and agrees with eager,
    gradients included."""
    args, _ = _case(make, op, seed=3)
    args = _to(args, "cuda")
    fn = getattr(torch.ops.rtpanoptic, op)
    torch._dynamo.reset()
    dynamic = op in ("nms", "batched_nms", "panoptic_from_dense")
    torch._dynamo.config.capture_dynamic_output_shape_ops = dynamic
    try:
        compiled = torch.compile(lambda *a: fn(*a), fullgraph=True)
        if op == "panoptic_from_dense":
            dense, sem, boxes, classes, scores, is_thing = args
            call = (dense, sem, boxes, classes, scores, is_thing, 0.2, "iou", 0.0, 0.5, 4)
        else:
            call = args
        got, want = compiled(*call), fn(*call)
    finally:
        torch._dynamo.config.capture_dynamic_output_shape_ops = False
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    _assert_equal(got, want)


# ------------------------------------------------------------- determinism, exactness
@pytest.mark.parametrize("op,backend", _params(*ALL))
def test_run_twice_bitwise(op, backend, make):
    """Every op, forward and backward, gives the same bits twice (no float atomics), also with
    torch.use_deterministic_algorithms(True), under which none of them raises."""
    args, grad_at = _case(make, op, seed=5)
    args = _to(args, "cuda")
    first = _run(op, backend, args, grad_at)
    second = _run(op, backend, args, grad_at)
    _assert_equal(first, second)
    if backend == "cuda":
        torch.use_deterministic_algorithms(True)
        try:
            third = _run(op, backend, args, grad_at)
        finally:
            torch.use_deterministic_algorithms(False)
        _assert_equal(first, third)


# upsample_argmax and panoptic_from_dense_release follow ATen's bilinear rounding on their device
# (fused multiply-adds on both, in different places), so their GPU results equal ATen's CUDA kernel's
# (tests/ops/test_upsample_argmax.py, test_panoptic_release.py), not the CPU's.
EXACT = ("nms", "batched_nms", "box_iou", "decode_boxes", "iou_attention", "panoptic_from_dense", "select_queries")


@pytest.mark.parametrize("op,backend", _params(*EXACT))
def test_float32_bitwise_equal_to_the_cpu(op, backend, make):
    """Promised in float32: the GPU backends equal the reference (on the CPU) and the C++ kernels
    bit for bit, forward (no fused multiply-add in the compiled kernels)."""
    args, _ = _case(make, op, seed=6)
    got = getattr(ops, op)(*_to(args, "cuda"), backend=backend, **KWARGS.get(op, {}))
    for cpu_backend in ops.available_backends("cpu")[op]:
        want = getattr(ops, op)(*args, backend=cpu_backend, **KWARGS.get(op, {}))
        _assert_equal(list(got) if isinstance(got, tuple) else [got], list(want) if isinstance(want, tuple) else [want])


# --------------------------------------------------------------------- size limits
@pytest.mark.slow
@pytest.mark.parametrize("backend", gpu_backends("nms"))
def test_nms_at_its_box_limit_and_beyond(backend):
    """2**18 boxes (an 8 GiB suppression mask) run and agree with torchvision; one more is a
    clear error, not an out-of-memory failure or a silent overflow."""
    limit = 1 << 18
    g = _gen(8)
    xy = torch.rand(limit, 2, generator=g) * 200  # crowded: few boxes survive, the sweep stays short
    boxes = torch.cat([xy, xy + 20 + torch.rand(limit, 2, generator=g) * 30], 1).cuda()
    scores = torch.rand(limit, generator=g).cuda()
    keep = ops.nms(boxes, scores, 0.5, backend=backend)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    extra = torch.cat([boxes, boxes[:1]]), torch.cat([scores, scores[:1]])
    with pytest.raises((RuntimeError, ValueError), match=f"at most {limit} boxes"):
        ops.nms(*extra, 0.5, backend=backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", gpu_backends("iou_attention"))
def test_iou_attention_beyond_2_to_the_31_elements(backend, make):
    """Q * H * W = 2**31 + 2048: every 64-bit offset matters (the last query's map sits beyond
    int32's range); checked on the last queries against the reference, gradients included."""
    if torch.cuda.get_device_properties(0).total_memory < 60 * GIB:
        pytest.skip("needs ~40 GiB of GPU memory")
    q, h, w = 2049, 1024, 1024
    dense = make.dense(h, w, 9, size=900.0, max_wh=300.0, min_wh=1.0).cuda().requires_grad_()
    queries = make.boxes(q, size=900.0, seed=10, max_wh=300.0, min_wh=1.0).cuda().requires_grad_()
    out = ops.iou_attention(dense, queries, "iou", backend=backend)
    tail = reference.iou_attention(dense.detach(), queries.detach()[-3:], "iou")
    assert torch.equal(out[-3:], tail)
    g = torch.zeros_like(out)
    g[-1] = 1.0  # only the last query (offsets >= 2**31) gets a gradient
    gd, gq = torch.autograd.grad(out, (dense, queries), g)
    d, qq = dense.detach().requires_grad_(), queries.detach()[-1:].requires_grad_()
    rd, rq = torch.autograd.grad(reference.iou_attention(d, qq, "iou").sum(), (d, qq))
    torch.testing.assert_close(gd, rd)
    torch.testing.assert_close(gq[-1:], rq)
    assert gq[:-1].abs().sum().item() == 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", gpu_backends("mask_loss"))
def test_mask_loss_beyond_2_to_the_31_mask_pixels(backend, make):
    """Q * H * W > 2**31 ground-truth mask pixels: the last queries' masks sit beyond int32 offsets."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * GIB:
        pytest.skip("needs ~20 GiB of GPU memory")
    q, h, w = 2049, 1024, 1024
    dense = make.dense(h, w, 11, size=900.0, max_wh=300.0, min_wh=1.0)[None].cuda()
    queries = make.boxes(q, size=900.0, seed=12, max_wh=300.0, min_wh=1.0).cuda()
    masks = torch.zeros(q, h, w, dtype=torch.bool, device="cuda")
    masks[-1, 100:600, 200:700] = True  # only the last query has a mask: N_j = 0 elsewhere
    beta = torch.ones(q, device="cuda")
    bi = torch.zeros(q, dtype=torch.int64, device="cuda")
    d, qq = dense.clone().requires_grad_(), queries.clone().requires_grad_()
    loss = ops.mask_loss(d, qq, masks, beta, bi, backend=backend)
    gd, gq = torch.autograd.grad(loss, (d, qq))
    rd, rq = dense.clone().requires_grad_(), queries[-1:].clone().requires_grad_()
    ref = reference.mask_loss(rd, rq, masks[-1:], beta[-1:], bi[-1:]) / q  # one query of q counts
    ref_gd, ref_gq = torch.autograd.grad(ref, (rd, rq))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gd, ref_gd)
    torch.testing.assert_close(gq[-1:], ref_gq)
    assert gq[:-1].abs().sum().item() == 0


@pytest.mark.parametrize("backend", gpu_backends("panoptic_from_dense"))
def test_panoptic_grid_beyond_the_register_resident_bitmap(backend, make):
    """1024 x 640 pixels = 20480 words of 32 pixels, beyond the Triton scan's register-resident
    bitmap (8192 words): the streamed scan; identical to the reference on the GPU."""
    from rtpanoptic.kernels.panoptic_from_dense import RESIDENT_WORDS

    h, w = 1024, 640
    assert h * w // 32 > RESIDENT_WORDS
    args = _to(_scene(make, 12, h=h, w=w, c=19, q=100), "cuda")
    got = ops.panoptic_from_dense(*args, sigma=0.2, stuff_area_limit=64, backend=backend)
    want = ops.panoptic_from_dense(*args, sigma=0.2, stuff_area_limit=64, backend="reference")
    _assert_equal(list(got), list(want))
    assert (got.queries >= 0).sum() >= 20


# ------------------------------------------------------------------- sanitizer cases
def test_sanitizer_cases_pass_on_the_gpu():
    """The cases compute-sanitizer runs (tests/ops/sanitizer_cases.py) pass as they are."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("sanitizer_cases", Path(__file__).with_name("sanitizer_cases.py"))
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    assert cases.main(["--device", "cuda"]) == 0
