"""select_queries: every (backend, device) pair against the reference (today's three steps), the
reference against torchvision's batched_nms + nms + top-n, hand-built cases where a sweep could
go wrong, the fixed-size contract, validation, opcheck and torch.compile."""
import pytest
import torch
import torchvision

from rtpanoptic import ops
from rtpanoptic.ops import reference

CONFIGS = [(0.5, 0.3, 10), (0.5, None, 1000), (0.3, 0.97, 50), (0.7, 0.1, 5), (0.0, 0.0, 7), (0.6, 1.0, 3)]


def _case(seed, n, classes=4, decimals=1, dtype=torch.float32):
    """Random overlapping boxes (duplicates included) with few distinct scores (many ties)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 60], 1)
    if n > 4:
        boxes[n // 2] = boxes[0]
        boxes[n // 3] = boxes[1]
    scores = torch.rand(n, generator=g, dtype=torch.float64).round(decimals=decimals)
    labels = torch.randint(0, classes, (n,), generator=g)
    return boxes.to(dtype), scores.to(dtype), labels


def _three_steps_torchvision(boxes, scores, labels, t1, t2, top_n):
    keep = torchvision.ops.batched_nms(boxes, scores, labels, t1)
    if t2 is not None:
        keep = keep[torchvision.ops.nms(boxes[keep], scores[keep], t2)]
    return keep[:top_n]


def _check(boxes, scores, labels, t1, t2, top_n, backend, device):
    args = (boxes.to(device), scores.to(device), labels.to(device), t1, t2, top_n)
    keep, count = ops.select_queries(*args, padded=True, backend=backend)
    want, want_count = ops.select_queries(*args, padded=True, backend="reference")
    assert keep.device == want.device and count.device == want.device
    assert keep.dtype == count.dtype == torch.int64 and count.shape == ()
    assert torch.equal(count.cpu(), want_count.cpu()), (int(count), int(want_count))
    assert torch.equal(keep.cpu(), want.cpu())
    assert torch.equal(ops.select_queries(*args, backend=backend).cpu(), want[: int(want_count)].cpu())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("t1,t2,top_n", CONFIGS)
def test_reference_is_torchvision_three_steps(seed, t1, t2, top_n):
    boxes, scores, labels = _case(seed, 150)
    want = _three_steps_torchvision(boxes.double(), scores.double(), labels, t1, t2, top_n)
    assert torch.equal(ops.select_queries(boxes.double(), scores.double(), labels, t1, t2, top_n,
                                          backend="reference"), want)


@pytest.mark.backends("select_queries", reference=False)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_on_many_seeds(backend, device, dtype):
    seeds = range(40) if backend != "triton" else range(8)
    for seed in seeds:
        n = 1 + (seed * 37) % (300 if backend != "triton" else 120)
        boxes, scores, labels = _case(seed, n, classes=1 + seed % 5, decimals=1 + seed % 3, dtype=dtype)
        for t1, t2, top_n in CONFIGS:
            _check(boxes, scores, labels, t1, t2, top_n, backend, device)


def _clusters(seed, n, per_cluster=8, one_class=False, dtype=torch.float32):
    """Street-scene detections: tight clusters of jittered copies of one box, one class per
    cluster (or one class for all), few distinct scores.  Few boxes survive, so a scan that stops
    at top_n kept visits every box."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, n // per_cluster)
    centres = torch.rand(k, 2, generator=g, dtype=torch.float64) * 300
    half = 10 + torch.rand(k, 2, generator=g, dtype=torch.float64) * 30
    member = torch.randint(0, k, (n,), generator=g)
    boxes = torch.cat([centres[member] - half[member], centres[member] + half[member]], 1)
    boxes = boxes + torch.randn(n, 4, generator=g, dtype=torch.float64) * 1.5
    scores = torch.rand(n, generator=g, dtype=torch.float64).round(decimals=2)
    labels = torch.zeros(n, dtype=torch.int64) if one_class else member
    return boxes.to(dtype), scores.to(dtype), labels


@pytest.mark.backends("select_queries", reference=False)
@pytest.mark.parametrize("one_class", [False, True], ids=["class-per-cluster", "one-class"])
def test_tight_clusters_word_boundaries_and_top_n(backend, device, one_class):
    """Lengths around the 32- and 64-box words (the bitmask scans' tiles), top_n reached at once,
    late and never, on the adversarial distributions: one class per tight cluster and one class
    for all."""
    interpreted = backend == "triton"  # ~0.4 ms per program under the interpreter: fewer cases
    for n in (1, 31, 33, 64, 65, 130) if interpreted else (1, 31, 32, 33, 63, 64, 65, 97, 130):
        boxes, scores, labels = _clusters(n, n, one_class=one_class)
        kept = int(ops.select_queries(boxes, scores, labels, 0.5, None, n, padded=True, backend="reference")[1])
        for t1, t2 in [(0.5, None), (0.5, 0.3)] if interpreted else [(0.5, None), (0.5, 0.3), (0.7, 0.0), (0.3, 0.9)]:
            for top_n in sorted({1, max(1, kept - 1), n} if interpreted else {1, 3, max(1, kept - 1), kept, n, n + 5}):
                _check(boxes, scores, labels, t1, t2, top_n, backend, device)


@pytest.mark.backends("select_queries", reference=False)
def test_many_seeds_of_clusters_with_nan_scores(backend, device):
    seeds = range(12) if backend != "triton" else range(4)
    for seed in seeds:
        boxes, scores, labels = _clusters(100 + seed, 60 + 17 * seed, per_cluster=2 + seed % 6, one_class=seed % 3 == 0)
        scores[seed % 7] = float("nan")
        scores[(seed * 5) % 50] = scores[(seed * 11) % 50]  # a tie
        for t1, t2, top_n in CONFIGS:
            _check(boxes, scores, labels, t1, t2, top_n, backend, device)


def test_triton_gpu_tiles_under_the_interpreter(monkeypatch):
    """Triton with the GPU tile sizes (32 rows x 2 words per program) through the interpreter: several
    programs per mask launch, tiles below the diagonal skipped, the scan over several words."""
    pytest.importorskip("triton")
    if "triton" not in ops.available_backends("cpu")["select_queries"]:
        pytest.skip("the triton backend runs on the CPU only through the interpreter")
    from rtpanoptic.kernels import _common

    monkeypatch.setattr(_common, "GPU_BLOCKS_IN_INTERPRETER", True)
    for n, one_class in [(130, False), (97, True)]:
        boxes, scores, labels = _clusters(n, n, per_cluster=4, one_class=one_class)
        for t1, t2, top_n in [(0.5, 0.3, n), (0.5, None, 5), (0.2, 0.1, n)]:
            _check(boxes, scores, labels, t1, t2, top_n, "triton", "cpu")
        want = reference.batched_nms(boxes, scores, labels, 0.5)
        assert torch.equal(ops.batched_nms(boxes, scores, labels, 0.5, backend="triton"), want)
        assert torch.equal(ops.nms(boxes, scores, 0.4, backend="triton"), reference.nms(boxes, scores, 0.4))


@pytest.mark.backends("select_queries", reference=False)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_compares_rounded_ious(backend, device, dtype):
    """float16/bfloat16: IoUs in float32 rounded to the dtype, compared with the rounded threshold."""
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter truncates float32 to bfloat16 (a GPU rounds to nearest even)")
    for seed in range(4):
        boxes, scores, labels = _case(seed, 90, classes=2, dtype=torch.float64)
        boxes = (boxes * 37).to(dtype)  # areas far above float16's range: native half math would overflow
        for t1, t2, top_n in CONFIGS:
            _check(boxes, scores.to(dtype), labels, t1, t2, top_n, backend, device)


@pytest.mark.backends("select_queries", reference=False)
def test_near_threshold_pairs(backend, device):
    """Thresholds equal to actual IoUs of the boxes (IoU == threshold is kept) and one float below."""
    boxes, scores, labels = _case(3, 80, classes=2, decimals=2)
    iou = reference.box_iou(boxes, boxes)
    picks = iou[(iou > 0.05) & (iou < 0.95)].unique()[::7][:6]
    assert len(picks) >= 4
    for thr in picks.tolist():
        below = torch.nextafter(torch.tensor(thr), torch.tensor(0.0)).item()
        for t1, t2 in [(thr, None), (below, None), (0.9, thr), (0.9, below), (thr, below)]:
            _check(boxes, scores, labels, t1, t2, 20, backend, device)


@pytest.mark.backends("select_queries")
def test_class_survivor_that_the_global_pass_drops_still_suppresses_its_class(backend, device):
    """A (class 0), B (class 1) ~ A, C (class 1) ~ B but not ~ A.  Class NMS keeps A, B (B removes C);
    the global pass removes B.  So the answer is [A]: a sweep that only let G's members suppress
    their class would wrongly keep C."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 1, 10, 12], [0, 4, 10, 14]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    labels = torch.tensor([0, 1, 1], device=device)
    assert reference.box_iou(boxes[1:2], boxes[2:]).item() > 0.5 > reference.box_iou(boxes[:1], boxes[2:]).item()
    keep = ops.select_queries(boxes, scores, labels, 0.5, 0.5, 10, backend=backend)
    assert keep.tolist() == [0]
    assert ops.select_queries(boxes, scores, labels, 0.5, None, 10, backend=backend).tolist() == [0, 1]


@pytest.mark.backends("select_queries")
def test_ties_keep_input_order_and_duplicates_suppress(backend, device):
    boxes = torch.tensor([[0.0, 0, 4, 4]] * 3 + [[10.0, 10, 14, 14]] * 2, device=device)
    scores = torch.tensor([0.5, 0.5, 0.7, 0.5, 0.5], device=device)
    labels = torch.tensor([0, 1, 1, 0, 0], device=device)
    assert ops.select_queries(boxes, scores, labels, 0.5, None, 10, backend=backend).tolist() == [2, 0, 3]
    assert ops.select_queries(boxes, scores, labels, 0.5, 0.5, 10, backend=backend).tolist() == [2, 3]
    assert ops.select_queries(boxes, scores, labels, 0.5, 0.5, 1, backend=backend).tolist() == [2]


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.backends("select_queries", reference=False)
def test_nan_and_inf_boxes_and_scores(backend, device):
    """NaN IoUs never exceed a threshold (a NaN box is kept, suppresses nothing); NaN scores sort first."""
    boxes, scores, labels = _case(5, 60, classes=2)
    boxes[3, 0] = float("nan")
    boxes[7] = float("nan")
    boxes[11, 2] = float("inf")
    boxes[13] = boxes[11]
    scores[[4, 9, 20]] = float("nan")
    scores[21] = float("inf")
    for t1, t2, top_n in CONFIGS:
        _check(boxes, scores, labels, t1, t2, top_n, backend, device)


@pytest.mark.backends("select_queries")
def test_empty_input_and_top_n_edges(backend, device):
    empty = torch.zeros(0, 4, device=device)
    none = torch.zeros(0, device=device), torch.zeros(0, dtype=torch.int64, device=device)
    assert ops.select_queries(empty, *none, 0.5, 0.5, 10, backend=backend).shape == (0,)
    keep, count = ops.select_queries(empty, *none, 0.5, None, 10, padded=True, backend=backend)
    assert keep.shape == (0,) and count.item() == 0 and count.shape == ()
    boxes, scores, labels = (t.to(device) for t in _case(1, 30))
    keep, count = ops.select_queries(boxes, scores, labels, 0.5, 0.5, 0, padded=True, backend=backend)
    assert keep.shape == (0,) and count.item() == 0
    keep, count = ops.select_queries(boxes, scores, labels, 0.5, 0.5, 100, padded=True, backend=backend)
    assert keep.shape == (30,) and (keep[count.item():] == -1).all() and (keep[: count.item()] >= 0).all()
    assert 0 < count.item() < 30


@pytest.mark.backends("select_queries", reference=False)
def test_kernels_agree_on_the_raw_op(backend, device):
    """The registered op itself (no public wrapper): negative global thresholds mean off."""
    from rtpanoptic.ops import _dispatch

    boxes, scores, labels = (t.to(device) for t in _case(2, 70))
    impl = _dispatch.select("select_queries", backend, torch.device(device))
    for t2 in (-1.0, -0.25):
        keep, count = impl(boxes, scores, labels, 0.5, t2, 40)
        want, want_count = reference.select_queries(boxes, scores, labels, 0.5, -1.0, 40)
        assert torch.equal(keep.cpu(), want.cpu()) and int(count) == int(want_count)


@pytest.mark.parametrize("call,error,match", [
    (lambda b, s, l: ops.select_queries(b.tolist(), s, l, 0.5, 0.5, 5), TypeError,
     "select_queries: boxes must be a torch.Tensor, got list"),
    (lambda b, s, l: ops.select_queries(b[:, :3], s, l, 0.5, 0.5, 5), ValueError,
     r"select_queries: boxes must have shape \[\*, 4\], got \[6, 3\]"),
    (lambda b, s, l: ops.select_queries(b, s, l.float(), 0.5, 0.5, 5), TypeError,
     "select_queries: labels must be an integer tensor, got torch.float32"),
    (lambda b, s, l: ops.select_queries(b, s.double(), l, 0.5, 0.5, 5), TypeError,
     "select_queries: tensors must share one dtype, got boxes: torch.float32, scores: torch.float64"),
    (lambda b, s, l: ops.select_queries(b, s[:5], l, 0.5, 0.5, 5), ValueError,
     "select_queries: scores has 5 entries but boxes has 6; they must match"),
    (lambda b, s, l: ops.select_queries(b, s, l, -0.1, 0.5, 5), ValueError,
     "select_queries: nms_thresh must be >= 0.0, got -0.1"),
    (lambda b, s, l: ops.select_queries(b, s, l, 0.5, float("nan"), 5), ValueError,
     "select_queries: global_nms_thresh must not be NaN"),
    (lambda b, s, l: ops.select_queries(b, s, l, 0.5, "0.5", 5), TypeError,
     "select_queries: global_nms_thresh must be a number, got str"),
    (lambda b, s, l: ops.select_queries(b, s, l, 0.5, 0.5, -1), ValueError,
     "select_queries: top_n must be a non-negative int, got -1"),
    (lambda b, s, l: ops.select_queries(b, s, l, 0.5, 0.5, 2.0), ValueError,
     "select_queries: top_n must be a non-negative int, got 2.0"),
    (lambda b, s, l: ops.select_queries(b, s, l, 0.5, 0.5, True), ValueError,
     "select_queries: top_n must be a non-negative int, got True"),
    (lambda b, s, l: ops.select_queries(b, s, l, 0.5, 0.5, 5, backend="fast"), ValueError,
     r"select_queries: backend must be one of \('reference', 'cpp', 'cuda', 'triton'\) or None, got 'fast'"),
])
def test_validation(call, error, match):
    boxes, scores, labels = _case(0, 6)
    with pytest.raises(error, match=f"^{match}$"):
        call(boxes, scores, labels)


def test_int32_labels_are_taken():
    boxes, scores, labels = _case(4, 50)
    want = ops.select_queries(boxes, scores, labels, 0.5, 0.3, 20, backend="reference")
    for backend in ops.available_backends("cpu")["select_queries"]:
        assert torch.equal(ops.select_queries(boxes, scores, labels.int(), 0.5, 0.3, 20, backend=backend), want)


CPP = "cpp" in ops.available_backends("cpu")["select_queries"]


@pytest.mark.skipif(not CPP, reason="C++ extension not built")
def test_cpp_opcheck():
    boxes, scores, labels = _case(0, 40)
    for t2 in (0.3, -1.0):
        torch.library.opcheck(torch.ops.rtpanoptic.select_queries.default, (boxes, scores, labels, 0.5, t2, 8))


@pytest.mark.skipif(not CPP, reason="C++ extension not built")
def test_cpp_under_torch_compile_fullgraph():
    """The fixed-size form compiles without dynamic output shapes (the fake gives [min(top_n, N)])."""
    torch._dynamo.reset()

    def queries(boxes, scores, labels):
        keep, count = torch.ops.rtpanoptic.select_queries(boxes, scores, labels, 0.5, 0.3, 12)
        return boxes[keep.clamp(min=0)], count

    boxes, scores, labels = _case(1, 60)
    got = torch.compile(queries, fullgraph=True, backend="aot_eager")(boxes, scores, labels)
    want = queries(boxes, scores, labels)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
