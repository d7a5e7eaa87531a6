"""The registered ops themselves (``torch.ops.rtpanoptic.<op>``: cpp, cuda; ``torch.ops.rtpanoptic_triton.<op>``:
triton) on every (backend, device) pair that runs here: ``torch.library.opcheck`` (schema, autograd
registration, fake kernel, AOT dispatch), ``torch.compile(fullgraph=True)`` of each op, and a
compiled training step (decode_boxes, iou_attention and mask_loss, forward and backward)."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import registry

F64 = torch.float64
DATA_DEPENDENT = ("nms", "batched_nms", "panoptic_from_dense_release")  # output sizes
DIFFERENTIABLE = {"decode_boxes": [0], "gather_levelness": [0], "iou_attention": [0, 1], "mask_loss": [0, 1]}


def _samples(make, op, backend, device):
    """Positional arguments of the registered ``op`` on ``device``: float64 (upsample_argmax float32),
    or float32 where ``backend`` takes no float64."""
    g = torch.Generator().manual_seed(0)
    boxes = make.boxes(30, size=60, seed=3, dtype=F64)
    scores, labels = torch.rand(30, generator=g, dtype=F64), torch.randint(0, 3, (30,), generator=g)
    scene = make.scene(0, 8, 9, 4, dtype=F64)
    offsets, levelness = make.levels(0, [(8, 12), (4, 6), (2, 3)])
    args = {
        "nms": (boxes, scores, 0.5),
        "batched_nms": (boxes, scores, labels, 0.5),
        "box_iou": (boxes, boxes[:7]),
        "decode_boxes": (offsets[0], 8),
        "gather_levelness": (offsets, levelness, 4),
        "iou_attention": (make.dense(3, 4, 0, dtype=F64), make.boxes(3, seed=1, dtype=F64), "tri"),
        "panoptic_from_dense": (*scene, 0.2, "iou", 0.0, 0.5, 3),
        "mask_loss": make.loss_case(0),
        "select_queries": (boxes, scores, labels, 0.5, 0.3, 8),
        "upsample_argmax": (torch.randn(2, 3, 5, 7, generator=g), [20, 28], [18, 27]),
        "panoptic_from_dense_release": (*scene, 4, 30, 33, 0.2, "iou", 0.0, 0.5, 3, True),
    }[op]
    dtype = F64 if F64 in registry.ROWS[op].backends[backend].dtypes else torch.float32

    def on(t):
        if isinstance(t, list):
            return [on(x) for x in t]
        if not isinstance(t, torch.Tensor):
            return t
        return (t.to(dtype) if t.dtype == F64 else t).to(device)

    return [on(a) for a in args]


@pytest.mark.backends(ops.OPS, reference=False)
def test_opcheck(op, backend, device, make, kernels):
    args = _samples(make, op, backend, device)
    for i in DIFFERENTIABLE.get(op, ()):
        args[i] = [t.clone().requires_grad_() for t in args[i]] if isinstance(args[i], list) else \
            args[i].clone().requires_grad_()
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if op not in DATA_DEPENDENT:
        utils += ("test_aot_dispatch_dynamic",)
    torch.library.opcheck(getattr(kernels(backend), op).default, tuple(args), test_utils=utils)


@pytest.mark.backends("panoptic_from_dense", reference=False)
def test_opcheck_panoptic_from_dense_with_num_queries(backend, device, make, kernels):
    """The optional num_queries (0-d int64): fixed-size outputs either way, AOT dispatch included."""
    args = _samples(make, "panoptic_from_dense", backend, device)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(kernels(backend).panoptic_from_dense.default, (*args, torch.tensor(3, device=device)),
                          test_utils=utils)


@pytest.mark.backends(ops.OPS, reference=False)
def test_compile_fullgraph(op, backend, device, make, kernels):
    args = _samples(make, op, backend, device)
    fn = getattr(kernels(backend), op)
    torch._dynamo.reset()
    if op in DATA_DEPENDENT:
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
    try:
        compiled = torch.compile(lambda *a: fn(*a), fullgraph=True, backend="aot_eager")
        out, expected = compiled(*args), fn(*args)
    finally:
        torch._dynamo.config.capture_dynamic_output_shape_ops = False
    for a, b in zip(out if isinstance(out, (tuple, list)) else [out], expected if isinstance(expected, (tuple, list))
                    else [expected]):
        torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.backends("mask_loss", reference=False)
def test_compile_training_step(backend, device, make, kernels):
    """decode_boxes -> iou_attention + mask_loss, forward and backward, under torch.compile
    (inductor, fullgraph): the same loss and gradients as eager."""
    ns = kernels(backend)
    _, queries, masks, beta, bi = make.loss_case(1, dtype=torch.float32, device=device)
    offsets = torch.rand(2, 4, 6, 7, generator=torch.Generator().manual_seed(1)).to(device) * 10

    def step(o, q):
        boxes = ns.decode_boxes(o, 4)
        return ns.mask_loss(boxes, q, masks, beta, bi) + ns.iou_attention(boxes[0], q, "iou").mean()

    o1, q1 = offsets.clone().requires_grad_(), queries.clone().requires_grad_()
    o2, q2 = offsets.clone().requires_grad_(), queries.clone().requires_grad_()
    torch._dynamo.reset()
    loss = torch.compile(step, fullgraph=True)(o1, q1)
    ref = step(o2, q2)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, (o1, q1)), torch.autograd.grad(ref, (o2, q2))):
        torch.testing.assert_close(a, b)


@pytest.mark.backends("upsample_argmax", reference=False)
@pytest.mark.parametrize("out_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8], ids=str)
def test_upsample_argmax_out_dtype_opcheck_compile_export(backend, device, kernels, out_dtype):
    """upsample_argmax's optional ScalarType argument: opcheck (fake kernel in that dtype, AOT
    dispatch), torch.compile(fullgraph=True) and torch.export of a module calling the public op,
    each giving the eager op's map in ``out_dtype``."""
    logits = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1)).to(device)
    op = kernels(backend).upsample_argmax
    args = (logits, [20, 28], [18, 27], out_dtype)
    torch.library.opcheck(op.default, args, test_utils=("test_schema", "test_autograd_registration",
                                                        "test_faketensor", "test_aot_dispatch_dynamic"))
    want = op(*args)
    assert want.dtype == out_dtype

    class Semantic(torch.nn.Module):
        def forward(self, x):
            return ops.upsample_argmax(x, (20, 28), (18, 27), out_dtype=out_dtype, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(Semantic(), fullgraph=True, backend="aot_eager")(logits)
    assert compiled.dtype == out_dtype and torch.equal(compiled, want)
    program = torch.export.export(Semantic(), (logits,))
    exported = program.module()(logits)
    assert exported.dtype == out_dtype and torch.equal(exported, want)
    calls = [n for n in program.graph.nodes if n.op == "call_function" and "upsample_argmax" in str(n.target)]
    assert len(calls) == 1 and calls[0].meta["val"].dtype == out_dtype
