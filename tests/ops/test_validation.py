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
    ("upsample_argmax_narrow", (torch.zeros(1, 3, 2, 2), (4, 4), (4, 4), torch.float32)),
    ("upsample_argmax_narrow", (torch.zeros(1, 300, 2, 2), (4, 4), (4, 4), torch.uint8)),
    ("upsample_argmax_narrow", (torch.zeros(1, 3, 2, 2), (4, 4), (5, 4), torch.uint8)),
]

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
