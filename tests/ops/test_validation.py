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
    ("iou_attention", (torch.zeros(4, 2, 2), B.double(), "iou")),
]


@pytest.mark.skipif(not _CPP, reason="the C++ extension is not built")
@pytest.mark.parametrize("op,args", _SAME_WORDS, ids=lambda v: v if isinstance(v, str) else "")
def test_cpp_checks_use_the_python_wording(op, args):
    """A direct torch.ops.rtpanoptic caller reads the words of the public op (ops/_validate.py)."""
    with pytest.raises((TypeError, ValueError)) as py:
        getattr(ops, op)(*args)
    with pytest.raises(RuntimeError) as cpp:
        getattr(torch.ops.rtpanoptic, op)(*args)
    assert str(cpp.value).splitlines()[0] == str(py.value)


C = torch.ops.rtpanoptic


@pytest.mark.skipif(not _CPP, reason="the C++ extension is not built")
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: C.box_iou(torch.zeros(2, 3), torch.zeros(2, 4)), r"box_iou: boxes1 must have shape \[\*, 4\], got \[2, 3\]"),
        (lambda: C.box_iou(torch.zeros(2, 4), torch.zeros(2, 4).double()), "box_iou: tensors must share one dtype, got boxes1: torch.float32, boxes2: torch.float64"),
        (lambda: C.decode_boxes(torch.zeros(1, 3, 2, 2), 8), r"decode_boxes: offsets must have shape \[B, 4, h, w\]"),
        (lambda: C.decode_boxes(torch.zeros(1, 4, 2, 2), 0), "decode_boxes: stride must be a positive int"),
        (lambda: C.decode_boxes(torch.zeros(1, 4, 2, 2, dtype=torch.int32), 8), "decode_boxes: offsets must be a floating-point tensor, got torch.int32"),
        (lambda: C.gather_levelness([torch.zeros(1, 4, 2, 2)], torch.zeros(1, 3, 4, 4), 4), "offsets must hold 2"),
        (lambda: C.gather_levelness([torch.zeros(2, 4, 2, 2)], torch.zeros(1, 2, 4, 4), 4), r"offsets\[0\] must have"),
        (lambda: C.iou_attention(torch.zeros(3, 2, 2), torch.zeros(1, 4), "iou"), r"dense_boxes must have shape \[4"),
        (lambda: C.iou_attention(torch.zeros(4, 2, 2), torch.zeros(1, 4), "giou"), "score must be"),
        (lambda: C._iou_attention_backward(torch.zeros(2, 2, 2), torch.zeros(4, 2, 2), torch.zeros(1, 4), "iou"),
         r"grad must have shape \[Q=1"),
        (lambda: C.mask_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4), torch.zeros(1, 2, 3, dtype=torch.bool),
                             torch.ones(1), torch.zeros(1, dtype=torch.long)), r"gt_masks must have shape \[Q=1, H=2"),
        (lambda: C.mask_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4), torch.zeros(1, 2, 2, dtype=torch.bool),
                             torch.ones(1), torch.ones(1, dtype=torch.long)), r"batch_index must lie in \[0, 1\)"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([5]), torch.ones(1), torch.ones(3, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0), r"query_classes must lie in \[0, 3\)"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([1]), torch.ones(1), torch.ones(2, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0), r"is_thing must be a bool tensor of shape \[C=3\]"),
        (lambda: C.panoptic_from_dense(torch.zeros(4, 2, 2), torch.zeros(3, 2, 2), torch.zeros(1, 4),
                                       torch.tensor([1]), torch.ones(1), torch.ones(3, dtype=torch.bool), 0.3, "iou",
                                       0.0, 0.5, 0, torch.tensor([1])),
         r"num_queries must be a 0-d int64 tensor, got torch.int64 of shape \[1\]"),
    ],
)
def test_cpp_argument_checks(call, match):
    """The C++ kernels' own checks (TORCH_CHECK), for callers of torch.ops.rtpanoptic that skip the wrappers."""
    with pytest.raises(RuntimeError, match=match):
        call()
