"""The op table (rtpanoptic.ops.registry): both namespaces register every row with the same
schema, fake and autograd; dispatch explains why a backend was rejected."""
import pytest
import torch

from rtpanoptic import ops
from rtpanoptic.ops import _dispatch, registry


def _namespaces():
    out = []
    if ops.available_backends()["nms"].count("cpp"):
        out.append(registry.CPP_NAMESPACE)
    if registry.load_triton():
        out.append(registry.TRITON_NAMESPACE)
    return out


def _schema(namespace, name):
    return str(getattr(getattr(torch.ops, namespace), name).default._schema)


@pytest.mark.parametrize("namespace", _namespaces())
@pytest.mark.parametrize("row", registry.TABLE, ids=lambda r: r.name)
def test_every_row_is_registered_with_its_schema(namespace, row):
    """The C++ schemas (csrc/ops.cpp) and the Triton ones are the table's, backward ops included."""
    if namespace == registry.TRITON_NAMESPACE and "triton" not in row.backends:
        pytest.skip(f"{row.name} has no Triton kernel")
    assert _schema(namespace, row.name) == f"{namespace}::{row.name}{row.schema}"
    if row.autograd is not None and row.autograd.op is not None:
        assert row.autograd.op == f"_{row.name}_backward"
        assert _schema(namespace, row.autograd.op) == f"{namespace}::{row.autograd.op}{row.autograd.schema}"


def test_ops_are_the_table():
    assert tuple(row.name for row in registry.TABLE) == ops.OPS
    assert set(ops.available_backends()) == set(ops.OPS)


def test_reasons_name_device_and_interpreter(monkeypatch):
    assert registry.not_supported_reasons("nms", "reference", "meta") == []
    assert "the cpp backend takes CPU tensors (use backend='cuda' on a GPU)" in \
        registry.not_supported_reasons("nms", "cpp", "cuda")
    assert "the cuda backend takes CUDA tensors" in registry.not_supported_reasons("nms", "cuda", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "Triton runs on CPU tensors only with TRITON_INTERPRET=1" in \
        registry.not_supported_reasons("nms", "triton", "cpu")
    assert registry.not_supported_reasons("nms", "reference", "cpu", torch.float32) == []
    assert registry.not_supported_reasons("nms", "reference", "cpu", torch.int32) == [
        "the reference kernel of nms takes torch.float16, torch.bfloat16, torch.float32, torch.float64, "
        "not torch.int32"]


def test_rejected_backend_error_lists_the_reasons(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"^nms: backend 'triton' cannot run on cpu tensors: Triton runs on CPU "
                                           r"tensors only with TRITON_INTERPRET=1"):
        _dispatch.select("nms", "triton", torch.device("cpu"))


def test_default_follows_the_priority_list():
    impl = _dispatch.select("box_iou", None, torch.device("cpu"))
    first = next(b for b in _dispatch.PRIORITY["cpu"] if b in ops.available_backends("cpu")["box_iou"])
    want = ops.reference.box_iou if first == "reference" else torch.ops.rtpanoptic.box_iou
    assert impl is want
    assert _dispatch.select("box_iou", None, torch.device("meta")) is ops.reference.box_iou


@pytest.mark.parametrize("namespace", _namespaces())
def test_not_differentiable_ops_raise_on_backward(namespace):
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    out = getattr(torch.ops, namespace).box_iou(boxes, boxes)
    which = "cpp/cuda" if namespace == registry.CPP_NAMESPACE else "triton"
    with pytest.raises(RuntimeError, match=f"{namespace}::box_iou: the {which} kernels have no backward"):
        out.sum().backward()


def test_every_triton_row_runs_on_the_triton_device():
    """Every row with a Triton kernel is registered and selectable: on CUDA tensors, or on CPU
    tensors under TRITON_INTERPRET=1."""
    if not registry.load_triton():
        pytest.skip(registry.triton_error())
    device = "cpu" if registry.triton_interpreting() else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    for row in registry.TABLE:
        if "triton" in row.backends:
            assert hasattr(torch.ops.rtpanoptic_triton, row.name), row.name
            assert "triton" in ops.available_backends(device)[row.name], row.name


_B = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
_S = torch.tensor([0.5])
_SCENE = (torch.zeros(4, 2, 2), torch.zeros(2, 2, 2), _B, torch.tensor([1]), _S, [False, True])
_FUSION = {"sigma": 0.3, "score": "iou", "score_threshold": 0.0, "overlap_threshold": 0.5, "stuff_area_limit": 0}
# One call per op with one bad argument, every argument given (the validators have no defaults).
_BAD_CALLS = {
    "nms": ((_B, _S, -0.1), {}),
    "batched_nms": ((_B, _S, torch.tensor([0.5]), 0.5), {}),
    "box_iou": ((_B, _B[:, :2]), {}),
    "decode_boxes": ((torch.zeros(1, 4, 2, 2), 0), {}),
    "gather_levelness": (([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 3, 4, 4), 4), {}),
    "iou_attention": ((torch.zeros(4, 2, 2), _B, "giou"), {}),
    "panoptic_from_dense": (_SCENE, {**_FUSION, "overlap_threshold": 1.5, "num_queries": None, "padded": False}),
    "panoptic_from_dense_release": (_SCENE, {**_FUSION, "stride": 3, "size": (8, 8)}),
    "mask_loss": ((torch.zeros(1, 4, 2, 2), _B, torch.zeros(1, 2, 2), _S, None), {}),
    "select_queries": ((_B, _S, torch.tensor([0]), 0.5, None, -1), {}),
    "upsample_argmax": ((torch.zeros(1, 2, 2, 2), (4, 4), (4, 4)), {"out_dtype": torch.float32}),
}


def test_every_row_has_a_validator():
    assert set(_BAD_CALLS) == set(registry.ROWS)
    for row in registry.TABLE:
        assert callable(row.validator), row.name


@pytest.mark.parametrize("row", registry.TABLE, ids=lambda r: r.name)
def test_validator_raises_the_public_ops_error(row):
    """The row's validator is what the public op checks its arguments with: the same error."""
    args, kwargs = _BAD_CALLS[row.name]
    with pytest.raises((TypeError, ValueError)) as public:
        getattr(ops, row.name)(*args, **kwargs)
    with pytest.raises((TypeError, ValueError)) as direct:
        row.validator(*args, **kwargs)
    assert str(public.value).startswith(f"{row.name}: ")
    assert type(direct.value) is type(public.value)
    assert str(direct.value) == str(public.value)
