"""The table of ``rtpanoptic.ops``: one row per op, from which everything is registered.

A row (:class:`Op`) holds an op's schema, its fake (meta) kernel for ``torch.compile`` and
``torch.export``, the validator of the public function's arguments (``ops._validate``; the
public function calls it through :func:`validate`), its autograd formula with the name, schema
and fake of its backward op, and per backend the devices and dtypes it supports.  :func:`register` walks the table once per namespace:

* ``rtpanoptic`` (:data:`CPP_NAMESPACE`): the C++/CUDA kernels of ``rtpanoptic._C``.  Their
  schemas are also written in csrc/ops.cpp (the extension must stand alone for C++ callers);
  tests/ops/test_registry.py checks that both spell every schema the same.
* ``rtpanoptic_triton`` (:data:`TRITON_NAMESPACE`): the Triton kernels of ``rtpanoptic.kernels``,
  defined here with ``torch.library.custom_op`` from the row's schema.  ``custom_op`` rather than
  ``triton_op``: ``nms`` and ``batched_nms`` have data-dependent output sizes, and the kernels'
  launch wrappers make host-side decisions that ``triton_op``'s trace-through cannot represent, and with one
  mechanism every Triton op is, like its C++ twin, opaque to ``torch.compile`` with the row's fake.

Backward ops are named ``_<op>_backward`` in both namespaces; one formula per op calls the
backward op of the namespace it is registered in.  Dispatch (``rtpanoptic.ops._dispatch``) is a
priority list over this table; :func:`not_supported_reasons` says why a backend cannot run.

How to add an op ``foo``:

1. the specification: ``def foo(...)`` in ops/reference.py;
2. a row in :data:`TABLE`: ``Op("foo", "(Tensor x, int k) -> Tensor", _foo_fake, _validate.foo)``
   with its fake (shapes from shapes, ``torch.library.get_ctx().new_dynamic_size()`` for
   data-dependent sizes), its validator ``_validate.foo(x, k)`` (raises TypeError / ValueError
   naming the argument; returns the schema's arguments canonical), ``autograd=Autograd(...)`` if
   it is differentiable, and ``backends=`` if it lacks a backend (default: all four, floating dtypes);
3. the public function: ``x, k = registry.validate("foo", x, k)``, then
   ``_dispatch.select("foo", backend, x.device)(x, k)``; export it from ops/__init__.py;
4. kernels: ``csrc/cpu/foo_kernel.cpp`` / ``csrc/cuda/foo_kernel.cu`` (``TORCH_LIBRARY_IMPL``)
   plus the schema line in csrc/ops.cpp; ``kernels/foo.py`` defining a function ``foo`` (and
   ``_foo_backward``) with the schema's arguments, listed in ``kernels.IMPLEMENTATIONS``.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import _validate

BACKENDS = ("reference", "cpp", "cuda", "triton")
CPP_NAMESPACE = "rtpanoptic"
TRITON_NAMESPACE = "rtpanoptic_triton"
FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Compile-time ids of the ``score`` argument ("iou" | "tri", reference.SCORES) inside kernels.
SCORE_IDS = {"iou": 0, "tri": 1}


def triton_interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (Triton kernels run on CPU tensors through numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class Support:
    """Where one backend of an op runs: device types (None: any) and input dtypes."""

    devices: tuple[str, ...] | None
    dtypes: tuple[torch.dtype, ...] = FLOATING


@dataclass(frozen=True)
class Autograd:
    """Autograd of an op: ``setup(ctx, inputs, output)`` and ``backward(kernels, ctx, *grads)``,
    where ``kernels`` is ``torch.ops.<namespace>`` (so the formula calls that namespace's
    backward op).  ``op``/``schema``/``fake``: the backward op ``_<name>_backward``, if any."""

    setup: Callable
    backward: Callable
    op: str | None = None
    schema: str | None = None
    fake: Callable | None = None


def _default_backends() -> dict[str, Support]:
    return {
        "reference": Support(None),
        "cpp": Support(("cpu",)),
        "cuda": Support(("cuda",)),
        "triton": Support(("cuda", "cpu")),  # cpu only under TRITON_INTERPRET=1
    }


@dataclass(frozen=True)
class Op:
    """One row of the table."""

    name: str
    schema: str  # "(Tensor boxes, ...) -> Tensor", without the name
    fake: Callable
    validator: Callable  # the public function's arguments -> the schema's, canonical (ops._validate)
    autograd: Autograd | None = None
    backends: dict[str, Support] = field(default_factory=_default_backends)


# ------------------------------------------------------------------------ fakes
def _nms_fake(boxes, scores, iou_threshold):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return _nms_fake(boxes, scores, iou_threshold)


def _box_iou_fake(boxes1, boxes2):
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


def _decode_boxes_fake(offsets, stride):
    return torch.empty_like(offsets)


def _gather_levelness_fake(offsets, levelness, out_stride):
    b, _, h, w = levelness.shape
    return levelness.new_empty((b, 4, h, w)), levelness.new_empty((b, h, w), dtype=torch.bool)


def _iou_attention_fake(dense_boxes, query_boxes, score):
    return dense_boxes.new_empty((query_boxes.shape[0], dense_boxes.shape[1], dense_boxes.shape[2]))


def _panoptic_from_dense_fake(
    dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing,
    sigma, score, score_threshold, overlap_threshold, stuff_area_limit, num_queries=None,
):
    # fixed size (no data-dependent shape): segment_map [h, w], S = Q + C segment slots, the count
    slots = query_boxes.shape[0] + sem_probs.shape[0]
    like = dense_boxes
    return (
        like.new_empty(dense_boxes.shape[1:], dtype=torch.int32),
        like.new_empty((slots,), dtype=torch.int64),
        like.new_empty((slots,), dtype=torch.int64),
        like.new_empty((slots,), dtype=torch.float32),
        like.new_empty((slots,), dtype=torch.int64),
        like.new_empty((), dtype=torch.int64),
    )


def _segments_fake(like, h, w):
    """(segment_map int32 [h, w], then class, query, score, area of a data-dependent count S)."""
    s = torch.library.get_ctx().new_dynamic_size()
    return (
        like.new_empty((h, w), dtype=torch.int32),
        like.new_empty((s,), dtype=torch.int64),
        like.new_empty((s,), dtype=torch.int64),
        like.new_empty((s,), dtype=torch.float32),
        like.new_empty((s,), dtype=torch.int64),
    )


def _panoptic_from_dense_release_fake(
    dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, stride, height, width,
    sigma, score, score_threshold, overlap_threshold, stuff_area_limit, fma,
):
    return _segments_fake(dense_boxes, height, width)


def _mask_loss_fake(dense_boxes, query_boxes, gt_masks, beta, batch_index):
    return dense_boxes.new_empty(())


def _select_queries_fake(boxes, scores, labels, nms_thresh, global_nms_thresh, top_n):
    # fixed size (no data-dependent shape): [min(top_n, N)] indices padded with -1, and the count
    kept = torch.sym_min(top_n, boxes.shape[0])
    return boxes.new_empty((kept,), dtype=torch.int64), boxes.new_empty((), dtype=torch.int64)


def _upsample_argmax_fake(logits, size, crop, out_dtype=None):
    dtype = torch.int64 if out_dtype is None else out_dtype
    return logits.new_empty((logits.shape[0], crop[0], crop[1]), dtype=dtype)


def _gather_levelness_backward_fake(grad_boxes, offsets, levelness, out_stride):
    return [torch.empty_like(o) for o in offsets]


def _box_pair_grads_fake(grad, dense_boxes, query_boxes, *rest):
    return torch.empty_like(dense_boxes), torch.empty_like(query_boxes)


# ------------------------------------------------------------------- autograd
# The formulas reproduce the reference's autograd, including its conventions at kinks (clamp
# passes no gradient at 0, min/max split it between equal arguments) and the zero gradient where
# the IoU's union is 0.  Non-differentiable inputs get None: ``levelness`` (it only enters
# through an argmax), ``gt_masks``, ``beta`` (a constant weight, as in the reference) and
# ``batch_index``.
_SIGN = (-1.0, -1.0, 1.0, 1.0)


def _no_setup(ctx, inputs, output):
    pass


def _decode_backward(kernels, ctx, grad):
    # d(x - l)/dl = -1, d(x + r)/dr = +1: a sign per channel (exact).
    return grad * grad.new_tensor(_SIGN).view(1, 4, 1, 1), None


def _gather_setup(ctx, inputs, output):
    offsets, levelness, out_stride = inputs
    ctx.save_for_backward(levelness, *offsets)
    ctx.out_stride = out_stride


def _gather_backward(kernels, ctx, grad_boxes, grad_fg):
    levelness, *offsets = ctx.saved_tensors
    if grad_boxes is None:
        grad_boxes = torch.zeros((levelness.shape[0], 4, *levelness.shape[2:]), dtype=levelness.dtype,
                                 device=levelness.device)
    grads = kernels._gather_levelness_backward(grad_boxes.contiguous(), offsets, levelness, ctx.out_stride)
    return list(grads), None, None


def _attention_setup(ctx, inputs, output):
    dense_boxes, query_boxes, score = inputs
    ctx.save_for_backward(dense_boxes, query_boxes)
    ctx.score = score


def _attention_backward(kernels, ctx, grad):
    dense_boxes, query_boxes = ctx.saved_tensors
    gd, gq = kernels._iou_attention_backward(grad.contiguous(), dense_boxes, query_boxes, ctx.score)
    return gd, gq, None


def _mask_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mask_loss_backward(kernels, ctx, grad):
    dense_boxes, query_boxes, gt_masks, beta, batch_index = ctx.saved_tensors
    gd, gq = kernels._mask_loss_backward(grad, dense_boxes, query_boxes, gt_masks, beta, batch_index)
    return gd, gq, None, None, None


def _not_differentiable(kernels, ctx, *grads):
    """The autograd of ops whose kernels have no backward: a clear error on backward instead of a
    silently missing gradient (``rtpanoptic.ops.box_iou`` with ``backend=None`` uses the reference
    when an input requires grad, so it stays differentiable)."""
    name = ctx.op_name
    which = "cpp/cuda" if kernels.name == CPP_NAMESPACE else "triton"
    raise RuntimeError(f"{kernels.name}::{name}: the {which} kernels have no backward; call "
                       f"rtpanoptic.ops.{name} with backend='reference' to differentiate it")


def _no_double_backward(kernels, ctx, *grads):
    """The autograd of the backward ops (``_<op>_backward``): differentiating a gradient raises
    (without it the C++ backward ops would fall through autograd with a warning and the second
    derivative would silently lack their term)."""
    raise RuntimeError(f"{kernels.name}::{ctx.op_name}: double backward is not supported; use "
                       "backend='reference' for higher-order gradients")


def _remember_name(name: str) -> Callable:
    def setup(ctx, inputs, output):
        ctx.op_name = name

    return setup


def _not_differentiable_autograd(name: str) -> Autograd:
    def setup(ctx, inputs, output):
        ctx.op_name = name

    return Autograd(setup, _not_differentiable)


_GRAD_BOXES = "(Tensor, Tensor)"  # (grad_dense_boxes, grad_query_boxes)

# ---------------------------------------------------------------------- table
# Boxes are xyxy, absolute pixels, no +1 on areas (torchvision's convention).  nms and
# batched_nms return indices (no autograd).
TABLE: tuple[Op, ...] = (
    Op("nms", "(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor", _nms_fake, _validate.nms),
    Op("batched_nms", "(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor",
       _batched_nms_fake, _validate.batched_nms),
    Op("box_iou", "(Tensor boxes1, Tensor boxes2) -> Tensor", _box_iou_fake, _validate.box_iou,
       autograd=_not_differentiable_autograd("box_iou")),
    # offsets [B,4,h,w] (l,t,r,b) -> boxes [B,4,h,w] (x1,y1,x2,y2), paper eq. 8.
    Op("decode_boxes", "(Tensor offsets, int stride) -> Tensor", _decode_boxes_fake, _validate.decode_boxes,
       autograd=Autograd(_no_setup, _decode_backward)),
    # per-level offsets [B,4,h_i,w_i], levelness logits [B,L+1,H,W] -> (boxes [B,4,H,W], fg bool [B,H,W]), eq. 14.
    Op("gather_levelness", "(Tensor[] offsets, Tensor levelness, int out_stride) -> (Tensor, Tensor)",
       _gather_levelness_fake, _validate.gather_levelness,
       autograd=Autograd(_gather_setup, _gather_backward, "_gather_levelness_backward",
                "(Tensor grad_boxes, Tensor[] offsets, Tensor levelness, int out_stride) -> Tensor[]",
                _gather_levelness_backward_fake)),
    # dense boxes [4,H,W], query boxes [Q,4] -> P_loc [Q,H,W], eq. 6.  score: "iou" | "tri".
    Op("iou_attention", "(Tensor dense_boxes, Tensor query_boxes, str score) -> Tensor", _iou_attention_fake,
       _validate.iou_attention,
       autograd=Autograd(_attention_setup, _attention_backward, "_iou_attention_backward",
                f"(Tensor grad, Tensor dense_boxes, Tensor query_boxes, str score) -> {_GRAD_BOXES}",
                _box_pair_grads_fake)),
    # Mask construction (eqs. 5, 7) and panoptic fusion.  Queries at or beyond num_queries (0-d int64;
    # None: all) are absent.  Fixed size on every backend: Q + C segment slots padded with class -1,
    # query -1, score 0, area 0, and the segment count (0-d int64), computed on the device.
    Op("panoptic_from_dense",
       "(Tensor dense_boxes, Tensor sem_probs, Tensor query_boxes, Tensor query_classes, Tensor query_scores, "
       "Tensor is_thing, float sigma, str score, float score_threshold, float overlap_threshold, "
       "int stuff_area_limit, Tensor? num_queries=None) -> (Tensor segment_map, Tensor segment_class, "
       "Tensor segment_query, Tensor segment_score, Tensor segment_area, Tensor segment_count)",
       _panoptic_from_dense_fake, _validate.panoptic_from_dense,
       autograd=_not_differentiable_autograd("panoptic_from_dense")),
    # The release's masks (x stride bilinear, >= sigma) at [height, width], then the same fusion.
    # fma: whether the device's F.interpolate rounds its multiply-adds once (panoptic_release.py).
    # The Triton kernel takes no float64 (the interpreter cannot round a float64 fma once).
    Op("panoptic_from_dense_release",
       "(Tensor dense_boxes, Tensor sem_probs, Tensor query_boxes, Tensor query_classes, Tensor query_scores, "
       "Tensor is_thing, int stride, int height, int width, float sigma, str score, float score_threshold, "
       "float overlap_threshold, int stuff_area_limit, bool fma) -> (Tensor segment_map, Tensor segment_class, "
       "Tensor segment_query, Tensor segment_score, Tensor segment_area)",
       _panoptic_from_dense_release_fake, _validate.panoptic_from_dense_release,
       autograd=_not_differentiable_autograd("panoptic_from_dense_release"),
       backends={**_default_backends(),
                 "triton": Support(("cuda", "cpu"), (torch.float16, torch.bfloat16, torch.float32))}),
    # Explicit mask loss (eqs. 16-18).
    Op("mask_loss", "(Tensor dense_boxes, Tensor query_boxes, Tensor gt_masks, Tensor beta, Tensor batch_index) -> Tensor",
       _mask_loss_fake, _validate.mask_loss,
       autograd=Autograd(_mask_loss_setup, _mask_loss_backward, "_mask_loss_backward",
                "(Tensor grad, Tensor dense_boxes, Tensor query_boxes, Tensor gt_masks, Tensor beta, "
                f"Tensor batch_index) -> {_GRAD_BOXES}",
                _box_pair_grads_fake)),
    # Query selection: class-aware NMS, optional class-agnostic NMS (global_nms_thresh < 0: off),
    # top_n -> (indices [min(top_n, N)] padded with -1, count), fixed size on every backend.
    Op("select_queries",
       "(Tensor boxes, Tensor scores, Tensor labels, float nms_thresh, float global_nms_thresh, int top_n) "
       "-> (Tensor, Tensor)",
       _select_queries_fake, _validate.select_queries),
    # logits [B,C,h,w] -> [B,crop_h,crop_w] class indices: argmax of the bilinear resize to size, in
    # out_dtype (None: int64; int32, int16 or uint8 where the classes fit), written directly by every
    # backend.  The Triton kernel computes in float32 (float64 logits: reference, cpp or cuda).
    Op("upsample_argmax", "(Tensor logits, int[] size, int[] crop, ScalarType? out_dtype=None) -> Tensor",
       _upsample_argmax_fake, _validate.upsample_argmax,
       backends={**_default_backends(),
                 "triton": Support(("cuda", "cpu"), (torch.float16, torch.bfloat16, torch.float32))}),
)
ROWS: dict[str, Op] = {row.name: row for row in TABLE}
OPS: tuple[str, ...] = tuple(ROWS)


def validate(op: str, *args, **kwargs) -> tuple:
    """Check the public function's arguments with ``op``'s validator; its schema's arguments, canonical."""
    return ROWS[op].validator(*args, **kwargs)


# ----------------------------------------------------------------- registration
def register(namespace: str, implementations: dict[str, Callable] | None = None) -> None:
    """Register every row in ``namespace``: its fake and its autograd, and the backward op's fake.

    ``implementations`` (name -> function, e.g. the Triton kernels) defines the ops first, with
    ``torch.library.custom_op`` from the rows' schemas; without it the ops must already exist (the
    C++ library defines its own, csrc/ops.cpp).  Rows missing from ``implementations`` are skipped.
    """
    kernels = getattr(torch.ops, namespace)
    for row in TABLE:
        if implementations is not None and row.name not in implementations:
            continue
        grad = row.autograd
        pairs = [(row.name, row.schema, row.fake)]
        if grad is not None and grad.op is not None:
            pairs.append((grad.op, grad.schema, grad.fake))
        for name, schema, fake in pairs:
            qualname = f"{namespace}::{name}"
            if implementations is not None:
                torch.library.custom_op(qualname, implementations[name], mutates_args=(), schema=schema)
            torch.library.register_fake(qualname, fake)
        if grad is not None:
            torch.library.register_autograd(f"{namespace}::{row.name}", _bind(grad.backward, kernels),
                                            setup_context=grad.setup)
        if grad is not None and grad.op is not None:  # double backward: an error, never a missing term
            torch.library.register_autograd(f"{namespace}::{grad.op}", _bind(_no_double_backward, kernels),
                                            setup_context=_remember_name(grad.op))


def _bind(backward: Callable, kernels) -> Callable:
    def formula(ctx, *grads):
        return backward(kernels, ctx, *grads)

    return formula


_triton_state: dict[str, object] = {}


def load_triton() -> bool:
    """Import ``rtpanoptic.kernels`` and register its kernels as ``rtpanoptic_triton::<op>`` (once);
    False when Triton or the kernels cannot be imported (the reason: :func:`triton_error`)."""
    if "loaded" not in _triton_state:
        _triton_state["loaded"] = False
        if importlib.util.find_spec("triton") is None:
            _triton_state["error"] = "triton is not installed"
            return False
        try:
            kernels = importlib.import_module("rtpanoptic.kernels")
        except ImportError as exc:
            _triton_state["error"] = f"rtpanoptic.kernels failed to import: {exc}"
            return False
        register(TRITON_NAMESPACE, kernels.IMPLEMENTATIONS)
        _triton_state["loaded"] = True
    return bool(_triton_state["loaded"])


def triton_error() -> str | None:
    load_triton()
    return _triton_state.get("error")  # type: ignore[return-value]


# ------------------------------------------------------------------ support
def not_supported_reasons(op: str, backend: str, device_type: str, dtype: torch.dtype | None = None) -> list[str]:
    """Why ``backend`` cannot run ``op`` on ``device_type`` tensors of ``dtype`` (empty: it can)."""
    from .. import _extension

    support = ROWS[op].backends.get(backend)
    if support is None:
        return [f"{op} has no {backend} kernel"]
    reasons = []
    if support.devices is not None and device_type not in support.devices:
        if backend == "cpp":
            reasons.append("the cpp backend takes CPU tensors (use backend='cuda' on a GPU)")
        elif backend == "cuda":
            reasons.append("the cuda backend takes CUDA tensors")
        else:
            reasons.append(f"the {backend} backend takes {' or '.join(support.devices)} tensors")
    elif backend == "triton" and device_type == "cpu" and not triton_interpreting():
        reasons.append("Triton runs on CPU tensors only with TRITON_INTERPRET=1")
    if dtype is not None and dtype not in support.dtypes:
        reasons.append(f"the {backend} kernel of {op} takes {', '.join(str(d) for d in support.dtypes)}, not {dtype}")
    if backend in ("cpp", "cuda") and not _extension.load():
        reasons.append(_extension.load_error() or "rtpanoptic._C is not loaded")
    elif backend == "triton" and not load_triton():
        reasons.append(triton_error() or "the Triton kernels are not loaded")
    elif not built(op, backend):
        reasons.append(f"no {backend} kernel was built for {op} (see rtpanoptic.ops.available_backends())")
    return reasons


def built(op: str, backend: str) -> bool:
    """Whether ``backend``'s kernel of ``op`` exists in this installation (any device)."""
    from .. import _extension

    if backend not in ROWS[op].backends:
        return False
    if backend == "reference":
        return True
    if backend == "cpp":
        return _extension.has_kernel(op, "CPU")
    if backend == "cuda":
        return _extension.has_kernel(op, "CUDA")
    return load_triton() and hasattr(getattr(torch.ops, TRITON_NAMESPACE), op)
