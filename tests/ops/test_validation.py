"""Every public op rejects bad input with a clear TypeError / ValueError; the C++ kernels check
theirs with the same words (RuntimeError)."""
import pytest
import torch

from rtpanoptic import ops

B = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
S = torch.tensor([0.5])


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: ops.nms([[0, 0, 1, 1]], S, 0.5), TypeError, "boxes must be a torch.Tensor"),
        (lambda: ops.nms(B.long(), S, 0.5), TypeError, "floating-point"),
        (lambda: ops.nms(B[:, :3], S, 0.5), ValueError, r"shape \[\*, 4\]"),
        (lambda: ops.nms(B, torch.rand(2), 0.5), ValueError, "they must match"),
        (lambda: ops.nms(B, S, -0.1), ValueError, "iou_threshold"),
        (lambda: ops.nms(B, S, float("nan")), ValueError, "iou_threshold"),
        (lambda: ops.nms(B, S, 0.5, backend="gpu"), ValueError, "backend must be one of"),
        (lambda: ops.nms(B, S.to("meta"), 0.5), ValueError, "same device"),
        (lambda: ops.batched_nms(B, S, torch.tensor([0.5]), 0.5), TypeError, "integer"),
        (lambda: ops.box_iou(B, B[:, :2]), ValueError, "boxes2"),
        (lambda: ops.decode_boxes(torch.zeros(1, 3, 2, 2), 8), ValueError, "offsets"),
        (lambda: ops.decode_boxes(torch.zeros(1, 4, 2, 2), 0), ValueError, "stride"),
        (lambda: ops.gather_levelness([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 3, 4, 4)), ValueError, "levels"),
        (lambda: ops.gather_levelness(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 4, 4)), TypeError, "list"),
        (lambda: ops.iou_attention(torch.zeros(4, 2, 2), B, score="giou"), ValueError, "score"),
        (lambda: ops.iou_attention(torch.zeros(4, 2, 2), B.double()), TypeError, "dtype|float"),
        (lambda: ops.mask_loss(torch.zeros(2, 4, 2, 2), B, torch.zeros(1, 2, 2, dtype=torch.bool), S), ValueError,
         "batch_index"),
        (lambda: ops.mask_loss(torch.zeros(1, 4, 2, 2), B, torch.zeros(1, 2, 2), S), TypeError, "bool"),
        (lambda: ops.mask_loss(torch.zeros(1, 4, 2, 2), B, torch.zeros(1, 2, 2, dtype=torch.bool), S,
                               torch.tensor([3])), ValueError, "batch_index must lie"),
        (lambda: ops.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(2, 2, 2), B, torch.tensor([5]), S,
                                         [False, True]), ValueError, "query_classes"),
        (lambda: ops.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(2, 2, 2), B, torch.tensor([1]), S,
                                         [True]), ValueError, "is_thing"),
        (lambda: ops.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(2, 2, 2), B, torch.tensor([1]), S,
                                         [False, True], overlap_threshold=1.5), ValueError, "overlap_threshold"),
    ],
)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_unavailable_backend_explains_why():
    with pytest.raises(RuntimeError, match="cpp backend takes CPU tensors|cannot run on meta"):
        ops.nms(B.to("meta"), S.to("meta"), 0.5, backend="cpp")
    with pytest.raises(RuntimeError, match="cuda"):
        ops.nms(B, S, 0.5, backend="cuda")


_CPP = "cpp" in ops.available_backends("cpu")["nms"]
C = torch.ops.rtpanoptic if _CPP else None
_SAME_WORDS = [
    ("nms", (B.long(), S.long(), 0.5)),
    ("nms", (B[:, :3], S, 0.5)),
    ("nms", (B, torch.rand(2), 0.5)),
    ("nms", (B, S.double(), 0.5)),
    ("batched_nms", (B, S, torch.zeros(1), 0.5)),
    ("batched_nms", (B, S, torch.zeros(2, dtype=torch.long), 0.5)),
    ("box_iou", (B[:, :3], B)),
    ("box_iou", (B, B.double())),
    ("decode_boxes", (torch.zeros(1, 4, 2, 2, dtype=torch.int32), 8)),
    ("decode_boxes", (torch.zeros(1, 3, 2, 2), 8)),
    ("decode_boxes", (torch.zeros(1, 4, 2, 2), 0)),
    ("iou_attention", (torch.zeros(4, 2, 2), B.double(), "iou")),
    ("iou_attention", (torch.zeros(3, 2, 2), B, "iou")),
    ("iou_attention", (torch.zeros(4, 2, 2), B, "giou")),
    ("gather_levelness", ([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 3, 2, 2), 4)),
    ("gather_levelness", ([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 2, 2), 4)),
    ("gather_levelness", ([torch.zeros(1, 4, 2, 2).double()], torch.zeros(1, 2, 2, 2), 4)),
    ("gather_levelness", ([torch.zeros(1, 3, 2, 2)], torch.zeros(1, 2, 2, 2), 4)),
    ("gather_levelness", ([torch.zeros(1, 4, 0, 2)], torch.zeros(1, 2, 2, 2), 4)),
    ("gather_levelness", ([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 2, 2, 2), 0)),
    ("mask_loss", (torch.zeros(1, 4, 2, 2), B, torch.zeros(1, 2, 3, dtype=torch.bool), torch.ones(1),
                   torch.zeros(1, dtype=torch.long))),
    ("mask_loss", (torch.zeros(1, 4, 2, 2), B, torch.zeros(1, 2, 2), torch.ones(1), torch.zeros(1, dtype=torch.long))),
    ("mask_loss", (torch.zeros(1, 4, 2, 2), B, torch.zeros(1, 2, 2, dtype=torch.bool), torch.ones(2),
                   torch.zeros(1, dtype=torch.long))),
    ("mask_loss", (torch.zeros(1, 4, 2, 2), B, torch.zeros(1, 2, 2, dtype=torch.bool), torch.ones(1),
                   torch.ones(1, dtype=torch.long))),
    ("select_queries", (B.long(), S, torch.zeros(1, dtype=torch.long), 0.5, 0.9, 10)),
    ("select_queries", (B, torch.rand(2), torch.zeros(1, dtype=torch.long), 0.5, 0.9, 10)),
    ("select_queries", (B, S.double(), torch.zeros(1, dtype=torch.long), 0.5, 0.9, 10)),
    ("select_queries", (B, S, torch.zeros(1, dtype=torch.long), 0.5, 0.9, -1)),
    ("upsample_argmax", (torch.zeros(1, 3, 2, 2, dtype=torch.int32), (4, 4), (4, 4))),
    ("upsample_argmax", (torch.zeros(3, 2, 2), (4, 4), (4, 4))),
    ("upsample_argmax", (torch.zeros(1, 3, 2, 2), (0, 4), (4, 4))),
    ("upsample_argmax", (torch.zeros(1, 3, 2, 2), (4, 4), (5, 4))),
    ("upsample_argmax", (torch.zeros(1, 0, 2, 2), (4, 4), (4, 4))),
]

# upsample_argmax's out_dtype: a keyword of the public op, the schema's fourth argument.
_OUT_DTYPE = [
    (torch.zeros(1, 3, 2, 2), torch.float32),
    (torch.zeros(1, 3, 2, 2), torch.int8),
    (torch.zeros(1, 300, 2, 2), torch.uint8),
    (torch.zeros(1, 3, 2, 2, dtype=torch.int32), torch.uint8),  # logits first, as the public op
]


@pytest.mark.skipif(not _CPP, reason="the C++ extension is not built")
@pytest.mark.parametrize("logits,out_dtype", _OUT_DTYPE, ids=lambda v: str(v) if isinstance(v, torch.dtype) else "")
def test_cpp_out_dtype_checks_use_the_python_wording(logits, out_dtype):
    with pytest.raises((TypeError, ValueError)) as py:
        ops.upsample_argmax(logits, (4, 4), (4, 4), out_dtype=out_dtype)
    with pytest.raises((TypeError, ValueError)) as cpp:
        C.upsample_argmax(logits, [4, 4], [4, 4], out_dtype)
    assert type(cpp.value) is type(py.value)
    assert str(cpp.value).splitlines()[0] == str(py.value)


# panoptic_from_dense: the public op takes the scalars as keywords, the C++ op positionally.
_SCENE = (torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), B, torch.tensor([1]), S, torch.ones(3, dtype=torch.bool))
_PANOPTIC = [
    {"query_classes": torch.tensor([5])},
    {"query_classes": torch.tensor([1.0])},
    {"is_thing": torch.ones(2, dtype=torch.bool)},
    {"is_thing": torch.ones(3)},
    {"sem_probs": torch.zeros(3, 2, 3)},
    {"sem_probs": torch.zeros(3, 2, 2).double()},
    {"query_scores": torch.ones(2)},
    {"dense_boxes": torch.zeros(3, 2, 2)},
    {"score": "giou"},
    {"stuff_area_limit": -1},
]


@pytest.mark.skipif(not _CPP, reason="the C++ extension is not built")
@pytest.mark.parametrize("op,args", _SAME_WORDS, ids=lambda v: v if isinstance(v, str) else "")
def test_cpp_checks_use_the_python_wording(op, args):
    """A direct torch.ops.rtpanoptic caller gets the exception type and the words of the public op
    (ops/_validate.py)."""
    with pytest.raises((TypeError, ValueError)) as py:
        getattr(ops, op)(*args)
    with pytest.raises((TypeError, ValueError)) as cpp:
        getattr(C, op)(*args)
    assert type(cpp.value) is type(py.value)
    assert str(cpp.value).splitlines()[0] == str(py.value)


@pytest.mark.skipif(not _CPP, reason="the C++ extension is not built")
@pytest.mark.parametrize("change", _PANOPTIC, ids=lambda c: next(iter(c)))
def test_cpp_panoptic_checks_use_the_python_wording(change):
    names = ("dense_boxes", "sem_probs", "query_boxes", "query_classes", "query_scores", "is_thing")
    scalars = {"sigma": 0.3, "score": "iou", "score_threshold": 0.0, "overlap_threshold": 0.5, "stuff_area_limit": 0}
    tensors = {**dict(zip(names, _SCENE)), **{k: v for k, v in change.items() if k in names}}
    scalars.update({k: v for k, v in change.items() if k in scalars})
    with pytest.raises((TypeError, ValueError)) as py:
        ops.panoptic_from_dense(*tensors.values(), **scalars)
    with pytest.raises((TypeError, ValueError)) as cpp:
        C.panoptic_from_dense(*tensors.values(), *scalars.values())
    assert type(cpp.value) is type(py.value)
    assert str(cpp.value).splitlines()[0] == str(py.value)



@pytest.mark.skipif(not _CPP, reason="the C++ extension is not built")
@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: C.box_iou(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError,
         r"^box_iou: boxes1 must have shape \[\*, 4\], got \[2, 3\]"),
        (lambda: C.box_iou(torch.zeros(2, 4), torch.zeros(2, 4).double()), TypeError,
         "^box_iou: tensors must share one dtype, got boxes1: torch.float32, boxes2: torch.float64"),
        (lambda: C.decode_boxes(torch.zeros(1, 3, 2, 2), 8), ValueError,
         r"^decode_boxes: offsets must have shape \[\*, 4, \*, \*\], got \[1, 3, 2, 2\]"),
        (lambda: C.decode_boxes(torch.zeros(1, 4, 2, 2), 0), ValueError, "^decode_boxes: stride must be a positive int"),
        (lambda: C.decode_boxes(torch.zeros(1, 4, 2, 2, dtype=torch.int32), 8), TypeError,
         "^decode_boxes: offsets must be a floating-point tensor, got torch.int32"),
        (lambda: C.gather_levelness([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 3, 4, 4), 4), ValueError,
         "so it needs 2 levels of offsets"),
        (lambda: C.gather_levelness([torch.zeros(2, 4, 2, 2)], torch.zeros(1, 2, 4, 4), 4), ValueError,
         r"offsets\[0\] must have shape \[1, 4, \*, \*\]"),
        (lambda: C.iou_attention(torch.zeros(3, 2, 2), torch.zeros(1, 4), "iou"), ValueError,
         r"dense_boxes must have shape \[4, \*, \*\]"),
        (lambda: C.iou_attention(torch.zeros(4, 2, 2), torch.zeros(1, 4), "giou"), ValueError, "score must be one of"),
        (lambda: C._iou_attention_backward(torch.zeros(2, 2, 2), torch.zeros(4, 2, 2), torch.zeros(1, 4), "iou"),
         ValueError, r"grad must have shape \[1, 2, 2\], got \[2, 2, 2\]"),
        (lambda: C._gather_levelness_backward(torch.zeros(1, 4, 3, 4), [torch.zeros(1, 4, 2, 2)], torch.zeros(1, 2, 4, 4),
                                              4), ValueError, r"grad_boxes must have shape \[1, 4, 4, 4\]"),
        (lambda: C.mask_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4), torch.zeros(1, 2, 3, dtype=torch.bool),
                             torch.ones(1), torch.zeros(1, dtype=torch.long)), ValueError,
         r"gt_masks must have shape \[1, 2, 2\]"),
        (lambda: C.mask_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4), torch.zeros(1, 2, 2, dtype=torch.bool),
                             torch.ones(1), torch.ones(1, dtype=torch.long)), ValueError,
         r"batch_index must lie in \[0, 1\), got values in \[1, 1\]"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([5]), torch.ones(1), torch.ones(3, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0), ValueError, r"query_classes must lie in \[0, 3\)"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([1]), torch.ones(1), torch.ones(2, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0), ValueError, "is_thing has 2 entries but sem_probs has 3 classes"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([1]), torch.ones(1), torch.ones(3, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0, torch.tensor([1])), ValueError,
         r"^panoptic_from_dense: num_queries must have shape 0-D, got \[1\]"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([1]), torch.ones(1), torch.ones(3, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0, torch.tensor(1, dtype=torch.int32)), TypeError,
         r"^panoptic_from_dense: num_queries must be an int64 tensor, got torch.int32"),
    ],
)
def test_cpp_argument_checks(call, exc, match):
    """The C++ kernels' own checks, for callers of torch.ops.rtpanoptic that skip the wrappers: the
    public ops' exception types (TypeError for a dtype, ValueError for a shape or value)."""
    with pytest.raises(exc, match=match):
        call()


# Integers beyond the schema's int64 and non-boolean is_thing items are the public op's errors on
# every backend, checked before dispatch (issue 25: stride=2**70 gave the cpp schema's RuntimeError,
# is_thing=["a", "b"] "too many dimensions 'str'").
# class 0 covers the image: a stuff segment when is_thing[0] is False, void when it is True
_DENSE = (torch.ones(4, 2, 2), torch.tensor([0.9, 0.1]).view(2, 1, 1).expand(2, 2, 2).contiguous(), B,
          torch.tensor([1]), S)
_ALL = ops.available_backends("cpu")


@pytest.mark.parametrize("backend", _ALL["decode_boxes"])
@pytest.mark.parametrize("stride", [2**63, 2**70])
def test_huge_ints_are_value_errors_before_dispatch(backend, stride):
    with pytest.raises(ValueError, match=r"decode_boxes: stride must be a positive int below 2\*\*63"):
        ops.decode_boxes(torch.zeros(1, 4, 2, 2), stride, backend=backend)


@pytest.mark.parametrize("backend", _ALL["gather_levelness"])
def test_huge_out_stride_is_a_value_error(backend):
    with pytest.raises(ValueError, match="out_stride must be a positive int below 2"):
        ops.gather_levelness([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 2, 2, 2), 2**64, backend=backend)


@pytest.mark.parametrize("backend", _ALL["select_queries"])
def test_huge_top_n_is_a_value_error(backend):
    with pytest.raises(ValueError, match="top_n must be a non-negative int below 2"):
        ops.select_queries(B, S, torch.tensor([0]), 0.5, None, 2**63, backend=backend)


@pytest.mark.parametrize("backend", _ALL["panoptic_from_dense"])
def test_huge_stuff_area_limit_is_a_value_error(backend):
    with pytest.raises(ValueError, match="stuff_area_limit must be a non-negative int below 2"):
        ops.panoptic_from_dense(*_DENSE, [False, True], stuff_area_limit=2**70, backend=backend)


@pytest.mark.parametrize("backend", _ALL["panoptic_from_dense_release"])
def test_huge_release_stride_is_a_value_error(backend):
    with pytest.raises(ValueError, match="stride must be a power of two"):
        ops.panoptic_from_dense_release(*_DENSE, [False, True], stride=2**70, size=(2, 2), backend=backend)


@pytest.mark.parametrize("is_thing", [["a", "b"], "ab", [0.5, 1.0], [2, 0], 5, [None, True]])
def test_is_thing_items_must_be_booleans(is_thing):
    with pytest.raises(TypeError, match="is_thing must be a bool tensor or a sequence of True / False"):
        ops.panoptic_from_dense(*_DENSE, is_thing)


def test_is_thing_spellings_of_booleans_agree():
    import numpy as np

    want = ops.panoptic_from_dense(*_DENSE, torch.tensor([False, True]))
    assert want.classes.tolist() == [0] and ops.panoptic_from_dense(*_DENSE, [True, True]).classes.numel() == 0
    for spelling in ([False, True], [0, 1], np.array([False, True]), [np.bool_(False), np.int64(1)]):
        got = ops.panoptic_from_dense(*_DENSE, spelling)
        assert torch.equal(got.segment_map, want.segment_map) and torch.equal(got.classes, want.classes)
