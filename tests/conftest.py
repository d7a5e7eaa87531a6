"""Shared fixtures: small random inputs built in-process (no downloads), the ``backends`` marker
that parametrises a test over the (backend, device) pairs of an op, and the comparisons the op
tests make (bit for bit; within the rounding of a dtype).

The input generators are plain functions, reached from tests through the ``make`` fixture
(``make.boxes(37, seed=1)``, ``make.scene(0, h=24, w=32, q=12)``, ...).  Every one draws from its
own ``torch.Generator`` seeded with ``seed``, in float64, and then rounds to ``dtype``: one seed
gives the same inputs in every dtype and on every device."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import registry
from rtpanoptic.ops.reference import _upcast

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_boxes(n: int, size: float = 100.0, seed: int = 0, dtype=torch.float32, max_wh: float = 40.0,
                 device="cpu", min_wh: float = 0.0) -> torch.Tensor:
    """``[n, 4]`` valid xyxy boxes: top-left corners uniform in ``[0, size)²``, sides ``min_wh`` plus
    uniform in ``[0, max_wh)``."""
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=F64) * size
    wh = min_wh + torch.rand(n, 2, generator=g, dtype=F64) * max_wh
    return torch.cat([xy, xy + wh], dim=1).to(dtype).to(device)


def random_dense(h: int, w: int, seed: int = 0, **kw) -> torch.Tensor:
    """``[4, h, w]`` dense boxes: :func:`random_boxes` ``(h * w, seed=seed, **kw)`` laid on the grid."""
    return random_boxes(h * w, seed=seed, **kw).t().reshape(4, h, w).contiguous()


def clustered_boxes(n: int, seed: int = 0, dtype=torch.float32, objects: int | None = None, image: float = 256.0,
                    device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(boxes [n, 4], scores [n])`` as before NMS: boxes jittered around ``objects`` (default
    ``n // 10``) objects in an ``image``-pixel square (many overlaps), scores in steps of 1/16
    (many ties)."""
    g = _gen(seed)
    k = objects or max(1, n // 10)
    centres = torch.rand(k, 2, generator=g, dtype=F64) * image
    sizes = 8 + torch.rand(k, 2, generator=g, dtype=F64) * 60
    owner = torch.randint(0, k, (n,), generator=g)
    jitter = 1 + 0.2 * torch.randn(n, 4, generator=g, dtype=F64)
    c, s = centres[owner], sizes[owner]
    boxes = torch.cat([c - s / 2 * jitter[:, :2], c + s / 2 * jitter[:, 2:]], 1)
    scores = (torch.rand(n, generator=g, dtype=F64) * 16).floor() / 16
    return boxes.to(dtype).to(device), scores.to(dtype).to(device)


NAN, INF = float("nan"), float("inf")
SPECIAL_BOXES = [
    [10, 10, 10, 10],  # a point
    [10, 10, 30, 10],  # zero height
    [10, 10, 30, 30],
    [10, 10, 30, 30],  # identical to the previous one
    [-50, -40, -10, -5],  # outside (negative)
    [5000, 5000, 5100, 5060],  # far outside
    [30, 30, 10, 10],  # inverted
    [NAN, 0, 10, 10],
    [-INF, -INF, INF, INF],
    [0, 0, INF, 20],
]


def special_boxes(dtype=F64, device="cpu") -> torch.Tensor:
    """``[10, 4]``: zero-area, inverted, outside-the-image, identical, NaN and inf boxes (index 0 is
    a point, 7 the NaN box)."""
    return torch.tensor(SPECIAL_BOXES, dtype=F64).to(dtype).to(device)


def random_levels(seed: int, sizes, grid=None, b: int = 2, dtype=F64, device="cpu", scale: float = 64.0,
                  ties: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Inputs of ``gather_levelness``: offsets ``[b, 4, h, w]`` uniform in ``[0, scale)`` per level size
    ``(h, w)`` of ``sizes``, and levelness logits ``[b, len(sizes) + 1, *grid]`` (``grid``: twice
    the first level's by default), standard normal or, with ``ties=k``, integers in ``[0, k)``
    (exact ties between levels and with the background)."""
    g = _gen(seed)
    grid = grid or (2 * sizes[0][0], 2 * sizes[0][1])
    offsets = [(torch.rand(b, 4, h, w, generator=g, dtype=F64) * scale).to(dtype).to(device) for h, w in sizes]
    shape = (b, len(sizes) + 1, *grid)
    if ties:
        levelness = torch.randint(0, ties, shape, generator=g).to(F64)
    else:
        levelness = torch.randn(shape, generator=g, dtype=F64)
    return offsets, levelness.to(dtype).to(device)


def random_scene(seed: int, h: int = 24, w: int = 32, q: int = 12, c: int = 6, dtype=torch.float32, device="cpu", *,
                 things=None, min_size: float = 8.0, spread: float = 1.0, box_scale: float = 1.0,
                 score_levels: int | None = None) -> tuple[torch.Tensor, ...]:
    """One image's inputs of ``panoptic_from_dense``: ``(dense [4, h, w], sem_probs [c, h, w],
    query_boxes [q, 4], query_classes [q], query_scores [q], is_thing [c])``.

    ``q`` query boxes centred in the ``4w x 4h`` image with sides ``min_size`` plus uniform in
    ``[0, 40)``; each dense box copies the box of a random query, plus N(0, ``spread``) noise
    (boxes and noise times ``box_scale``); softmax probabilities; thing classes ``things``
    (default ``2 .. c-1``), one per query; scores uniform, or in steps of ``1/score_levels``
    (ties)."""
    g = _gen(seed)
    k = max(q, 1)
    things = list(range(2, c)) if things is None else list(things)
    centres = torch.rand(k, 2, generator=g, dtype=F64) * torch.tensor([w, h], dtype=F64) * 4
    sizes = min_size + torch.rand(k, 2, generator=g, dtype=F64) * 40
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1) * box_scale
    owner = torch.randint(0, k, (h, w), generator=g)
    dense = boxes[owner].permute(2, 0, 1) + spread * box_scale * torch.randn(4, h, w, generator=g, dtype=F64)
    sem = torch.softmax(torch.randn(c, h, w, generator=g, dtype=F64) * 3, 0)
    is_thing = torch.zeros(c, dtype=torch.bool)
    is_thing[things] = True
    classes = torch.tensor(things)[torch.randint(0, len(things), (q,), generator=g)]
    scores = torch.rand(q, generator=g, dtype=F64)
    if score_levels:
        scores = (scores * score_levels).floor() / score_levels
    cast = lambda t: t.to(dtype).to(device)
    return cast(dense.contiguous()), cast(sem), cast(boxes[:q]), classes.to(device), cast(scores), is_thing.to(device)


def random_loss_case(seed: int, b: int = 2, h: int = 6, w: int = 7, q: int = 5, dtype=F64, device="cpu",
                     size: float = 20.0, max_wh: float = 40.0, min_wh: float = 0.0, density: float = 0.4,
                     empty=()) -> tuple[torch.Tensor, ...]:
    """Inputs of ``mask_loss``: ``(dense [b, 4, h, w], queries [q, 4], gt_masks [q, h, w] bool,
    beta [q], batch_index [q])``; boxes of :func:`random_boxes` ``(size, max_wh, min_wh)``, masks
    true with probability ``density`` (the last query's never empty, so the loss has a graph;
    the queries in ``empty`` have empty masks), images in random order."""
    g = _gen(seed)
    kw = dict(size=size, max_wh=max_wh, min_wh=min_wh, dtype=dtype, device=device)
    dense = torch.stack([random_dense(h, w, seed * 10 + i, **kw) for i in range(b)])
    queries = random_boxes(q, seed=seed + 50, **kw)
    masks = torch.rand(q, h, w, generator=g) > 1 - density
    if q * h * w:
        masks[-1, 0, 0] = True
    for j in empty:
        masks[j] = False
    beta = torch.rand(q, generator=g, dtype=F64).to(dtype)
    batch_index = torch.randint(0, b, (q,), generator=g)
    return dense, queries, masks.to(device), beta.to(device), batch_index.to(device)


INPUTS = SimpleNamespace(boxes=random_boxes, dense=random_dense, clustered=clustered_boxes, special=special_boxes,
                         levels=random_levels, scene=random_scene, loss_case=random_loss_case)


@pytest.fixture
def make():
    """The input generators: ``make.boxes``, ``make.dense``, ``make.clustered``, ``make.special``,
    ``make.levels``, ``make.scene``, ``make.loss_case`` (this module's ``random_*`` functions)."""
    return INPUTS


def backends_for(op: str, device: str = "cpu"):
    """Backends of ``op`` that run on ``device`` here, as pytest params."""
    return ops.available_backends(device)[op]


@pytest.fixture
def cpu_backends():
    return backends_for


def backend_devices(op: str, reference: bool = True) -> list[tuple[str, str]]:
    """(backend, device) pairs that run ``op`` here: every CPU backend on "cpu" (Triton under
    ``TRITON_INTERPRET=1``) and, with a GPU, every backend on "cuda" (compiled Triton only: the
    interpreter copies CUDA tensors to the host)."""
    pairs = [(b, "cpu") for b in ops.available_backends("cpu")[op]]
    if torch.cuda.is_available():
        interpreting = os.environ.get("TRITON_INTERPRET") == "1"
        pairs += [(b, "cuda") for b in ops.available_backends("cuda")[op] if not (b == "triton" and interpreting)]
    return [(b, d) for b, d in pairs if reference or b != "reference"]


def pytest_generate_tests(metafunc):
    """``@pytest.mark.backends(op, reference=True)`` on a test taking ``backend`` and ``device``
    runs it once per pair of :func:`backend_devices` (``reference=False``: parity tests, which
    compare a backend with the reference and would compare the reference with itself).  Given a
    tuple of ops, a test taking ``op``, ``backend`` and ``device`` runs once per op and pair."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None:
        return
    which, *rest = marker.args
    if isinstance(which, str):
        pairs = backend_devices(which, *rest, **marker.kwargs)
        metafunc.parametrize(("backend", "device"), [pytest.param(b, d, id=f"{b}-{d}") for b, d in pairs])
    else:
        triples = [(op, b, d) for op in which for b, d in backend_devices(op, *rest, **marker.kwargs)]
        metafunc.parametrize(("op", "backend", "device"),
                             [pytest.param(op, b, d, id=f"{op}-{b}-{d}") for op, b, d in triples])


@pytest.fixture
def kernels():
    """``kernels(backend)``: the namespace of ``backend``'s registered ops, ``torch.ops.rtpanoptic``
    (cpp and cuda) or ``torch.ops.rtpanoptic_triton``, backward ops included."""

    def namespace(backend: str):
        if backend == "triton":
            registry.load_triton()
            return getattr(torch.ops, registry.TRITON_NAMESPACE)
        return getattr(torch.ops, registry.CPP_NAMESPACE)

    return namespace


@pytest.fixture
def assert_bitwise():
    """``assert_bitwise(out, want, backend, device)``: equal bit for bit (NaN where ``want`` has
    NaN).  One exception: Triton's interpreter converts float32 to bfloat16 by truncation where
    a GPU rounds to nearest even, so there bfloat16 results may be one unit in the last place
    off (toward zero)."""

    def check(out: torch.Tensor, want: torch.Tensor, backend: str, device: str):
        assert out.dtype == want.dtype and out.shape == want.shape
        assert torch.equal(out.isnan(), want.isnan())
        out, want = out.nan_to_num(), want.nan_to_num()
        if backend == "triton" and device == "cpu" and out.dtype == torch.bfloat16:
            torch.testing.assert_close(out.float(), want.float(), rtol=2.0**-7, atol=0)
        else:
            assert torch.equal(out, want)

    return check


@pytest.fixture
def skip_interpreted():
    """``skip_interpreted(backend, device, what)``: skip a case too large for Triton's interpreter
    (seconds per call; the compiled kernel runs it on a GPU)."""

    def skip(backend: str, device: str, what: str):
        if backend == "triton" and device == "cpu":
            pytest.skip(f"{what}: too slow in Triton's interpreter (the compiled kernel runs it on a GPU)")

    return skip


@pytest.fixture
def skip_interpreted_bfloat16():
    """``skip_interpreted_bfloat16(backend, device, dtype)``: skip bfloat16 in Triton's interpreter,
    which keeps bfloat16 as its 16 bits in numpy (no bfloat16 there): arithmetic and comparisons
    on them are wrong, and float32 converts by truncation (a GPU rounds to nearest even).

    The cases skipped here run on a GPU only (decode_boxes and gather_levelness in bfloat16, the
    random bfloat16 NMS cases: unskipped, 25 of their 31 fail in the interpreter).  Triton's bfloat16
    loads and float32 arithmetic do run in it where no rounding decides:
    tests/ops/test_boxes.py::test_nms_half_hand_computed."""

    def skip(backend: str, device: str, dtype: torch.dtype):
        if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
            pytest.skip("Triton's interpreter has no bfloat16 arithmetic (numpy holds its bits)")

    return skip


# (rtol, atol) of sums whose order differs between a kernel and the reference
TOLERANCES = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-5, 1e-5), torch.float16: (2e-2, 2e-2),
              torch.bfloat16: (5e-2, 5e-2)}


@pytest.fixture
def assert_close_in():
    """``assert_close_in(out, want, dtype=out.dtype)``: equal within :data:`TOLERANCES` of ``dtype``
    (NaN where ``want`` has NaN), compared on the CPU; float16/bfloat16 tensors compare as float32
    (``want`` may be the float32 result that ``out`` rounds)."""

    def check(out: torch.Tensor, want: torch.Tensor, dtype=None):
        rtol, atol = TOLERANCES[dtype or out.dtype]
        out = _upcast(out.detach()).cpu()
        want = _upcast(want.detach()).cpu().to(out.dtype)
        torch.testing.assert_close(out, want, rtol=rtol, atol=atol, equal_nan=True)

    return check
