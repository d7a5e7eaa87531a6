"""Pure-PyTorch reference implementations of every ``rtpanoptic.ops`` op.

These functions are the specification: readable, one function per op, no
performance tricks.  Every other backend (C++, CUDA, Triton) is tested against
them.  They take the canonical, already-validated arguments that the public
functions in :mod:`rtpanoptic.ops` pass to every backend.

Conventions: boxes are ``xyxy`` in absolute pixels; areas have no ``+1``
(torchvision's convention); dense maps are ``[B, C, H, W]``.

Precision: box scores (IoU, the TRI score) of float16/bfloat16 boxes are computed in float32
and rounded once to the input dtype (as ``torchvision.ops.box_iou``): native half arithmetic
would overflow on the areas of boxes larger than 256 x 256 pixels.  Their gradients are the
float32 gradients, rounded once.

Gradients, non-finite coordinates included, are PyTorch's autograd of these functions: a NaN
(or inf) coordinate makes every gradient that depends on it NaN, also where the upstream
gradient is 0 (autograd multiplies: 0 * NaN = NaN).  The exceptions are autograd's own: where a
``torch.where`` does not select a branch (the IoU where the union is 0; ``mask_loss``'s query
with an empty mask, which takes no part in the loss), no gradient flows through it.  Every
backend follows this.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .grid import cell_centres

# Score functions usable by the attention / mask-construction ops.
SCORES = ("iou", "tri")
# Added to the enclosing-box area of the "tri" score (the released TRI code's value).
TRI_EPS = 1e-7
# Values of the unused segment slots of panoptic_from_dense: class, query, score, area.
SEGMENT_PADDING = (-1, -1, 0.0, 0)


def _upcast(t: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (the dtype box scores are computed in); others unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# --------------------------------------------------------------------------- boxes
def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes, no +1; inverted boxes give negative areas."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def positive_part(x: Tensor) -> Tensor:
    """``max(x, 0)`` elementwise, NaN kept, with the gradient written out rather than left to
    ``clamp(min=0)`` (whose gradient at exactly 0 is 1 on torch 2.11 and 0 on 2.14): the gradient
    passes only where ``x > 0`` (0 at 0, at NaN and below), as ``csrc/box_math.h``'s rule."""
    return torch.where(x > 0, x, torch.where(torch.isnan(x), x.detach(), torch.zeros((), dtype=x.dtype, device=x.device)))


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``[N, M]``, exactly as ``torchvision.ops.box_iou`` (0/0 gives NaN)."""
    a, b = _upcast(boxes1), _upcast(boxes2)
    area1, area2 = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = positive_part(rb - lt)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return (inter / union).to(boxes1.dtype)


def _device_memory(device: torch.device) -> int | None:
    """Bytes of memory of ``device`` (physical RAM for the CPU), None when unknown."""
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def _check_nms_fits(op: str, boxes: Tensor) -> None:
    """The greedy NMS below holds N x N IoU matrices: refuse, naming the backends that scale,
    an N whose matrices cannot fit in the device's memory (instead of failing in the allocator)."""
    n = boxes.shape[0]
    need = 8 * n * n * _upcast(boxes[:0]).element_size()  # box_iou's four [N, N, 2] corner tensors
    have = _device_memory(boxes.device)
    if have is not None and need > have:
        raise ValueError(
            f"{op}: {n} boxes are too many for the reference backend: its N x N IoU matrices need about "
            f"{need / 1e9:.0f} GB, more than the {have / 1e9:.0f} GB of {boxes.device.type} memory here; "
            f"backend='cpp' (CPU tensors, O(N) memory) or backend='cuda' (GPU, N^2/8 bytes) takes this many"
        )


def _greedy_nms(boxes: Tensor, scores: Tensor, classes: Tensor | None, iou_threshold: float) -> Tensor:
    _check_nms_fits("nms" if classes is None else "batched_nms", boxes)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    over = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).cpu().numpy()
    if classes is not None:
        cls = classes[order].cpu().numpy()
        over &= cls[:, None] == cls[None, :]
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: visit boxes by decreasing score (stable: ties keep input order);
    keep a box unless a kept box has IoU > ``iou_threshold`` with it.  Returns the
    kept indices (int64) in visiting order.  A box with a NaN coordinate has NaN IoU
    with everything: it is never suppressed and suppresses nothing."""
    return _greedy_nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS independently per category ``idxs``: only boxes of the same category
    suppress each other.  Kept indices in decreasing score order (ties: input order)."""
    return _greedy_nms(boxes, scores, idxs, iou_threshold)


# ------------------------------------------------------------------ dense boxes
def decode_boxes(offsets: Tensor, stride: int) -> Tensor:
    """(l,t,r,b) offsets ``[B,4,h,w]`` at cell centres -> xyxy boxes ``[B,4,h,w]`` (eq. 8), the
    centres :func:`~rtpanoptic.ops.grid.cell_centres` in the offsets' dtype."""
    _, _, h, w = offsets.shape
    xs = cell_centres(w, stride, offsets.dtype, offsets.device).view(1, w)
    ys = cell_centres(h, stride, offsets.dtype, offsets.device).view(h, 1)
    l, t, r, b = offsets.unbind(1)
    return torch.stack([xs - l, ys - t, xs + r, ys + b], dim=1)


def gather_levelness(offsets: list[Tensor], levelness: Tensor, out_stride: int) -> tuple[Tensor, Tensor]:
    """Dense boxes on the levelness grid (eq. 14).

    Each level's offsets are bilinearly resampled (``align_corners=False``) to the
    levelness grid ``[H, W]``; at every location the level ``argmax(levelness[1:])``
    (first maximum on ties) supplies the offsets, decoded around the grid's cell
    centres ``floor(out_stride/2) + i*out_stride``.  Returns ``(boxes [B,4,H,W],
    foreground [B,H,W] bool)`` with foreground = ``argmax(levelness) != 0``.  Both argmaxes are
    torch.argmax's: a NaN logit counts as the maximum.
    """
    b, _, h, w = levelness.shape
    if b * h * w == 0:
        return levelness.new_empty((b, 4, h, w)), torch.zeros((b, h, w), dtype=torch.bool, device=levelness.device)
    resampled = torch.stack(
        [F.interpolate(o, size=(h, w), mode="bilinear", align_corners=False) for o in offsets], dim=1
    )  # [B, L, 4, H, W]
    level = levelness[:, 1:].argmax(dim=1)  # [B, H, W]
    index = level[:, None, None].expand(-1, 1, 4, -1, -1)
    chosen = resampled.gather(1, index).squeeze(1)
    return decode_boxes(chosen, out_stride), levelness.argmax(dim=1) != 0


# ------------------------------------------------------------- box attention
def pairwise_box_score(boxes: Tensor, query_boxes: Tensor, score: str) -> Tensor:
    """Score of every box ``[P,4]`` against every query ``[Q,4]`` -> ``[Q,P]``.

    ``"iou"``: I/U, and 0 where U == 0 (eq. 6).  ``"tri"``: the released TRI code's
    smoothed GIoU ``(I+1)/(U+1) - (C-U)/C`` with C the enclosing box area + 1e-7.
    """
    d = boxes.t()[:, None, :]  # [4, 1, P]
    q = query_boxes[:, :, None]  # [Q, 4, 1]
    iw = positive_part(torch.min(d[2], q[:, 2]) - torch.max(d[0], q[:, 0]))
    ih = positive_part(torch.min(d[3], q[:, 3]) - torch.max(d[1], q[:, 1]))
    inter = iw * ih
    union = box_area(boxes)[None, :] + box_area(query_boxes)[:, None] - inter
    if score == "iou":
        nonzero = union != 0
        return torch.where(nonzero, inter / torch.where(nonzero, union, torch.ones_like(union)), 0.0)
    if score == "tri":
        cw = torch.max(d[2], q[:, 2]) - torch.min(d[0], q[:, 0])
        ch = torch.max(d[3], q[:, 3]) - torch.min(d[1], q[:, 1])
        enclosing = cw * ch + TRI_EPS
        return (inter + 1) / (union + 1) - (enclosing - union) / enclosing
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def _score_map(dense_boxes: Tensor, query_boxes: Tensor, score: str) -> Tensor:
    """score(B(x, y), B_j) ``[Q,H,W]``, in float32 for float16/bfloat16 boxes."""
    _, h, w = dense_boxes.shape
    flat = _upcast(dense_boxes).reshape(4, h * w).t()
    return pairwise_box_score(flat, _upcast(query_boxes), score).reshape(query_boxes.shape[0], h, w)


def iou_attention(dense_boxes: Tensor, query_boxes: Tensor, score: str) -> Tensor:
    """P_loc(x, y, j) = score(B(x, y), B_j): ``[4,H,W]`` x ``[Q,4]`` -> ``[Q,H,W]`` (eq. 6)."""
    return _score_map(dense_boxes, query_boxes, score).to(dense_boxes.dtype)


# ----------------------------------------------------- mask construction + fusion
def panoptic_from_dense(
    dense_boxes: Tensor,
    sem_probs: Tensor,
    query_boxes: Tensor,
    query_classes: Tensor,
    query_scores: Tensor,
    is_thing: Tensor,
    sigma: float,
    score: str,
    score_threshold: float,
    overlap_threshold: float,
    stuff_area_limit: int,
    num_queries: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Mask construction (eqs. 5, 7) and panoptic fusion, sequentially.

    Masks: ``M_j = score(B(x,y), B_j) * P_sem(x, y, c_j) > sigma`` (in float32 for
    float16/bfloat16 inputs: the score, the product and sigma are not rounded to the dtype).
    Fusion (Kirillov et al.; panopticapi's combine step): queries in decreasing score
    (stable); skip a query with score < ``score_threshold``, an empty mask, or a mask
    of which more than ``overlap_threshold`` is already taken; paint its free pixels.
    Then every stuff class c (``~is_thing``), in increasing c, takes the still-free
    pixels where ``argmax_c P_sem == c`` if there are at least ``stuff_area_limit``
    of them.  Everything else is void.

    Queries ``j >= num_queries`` (a 0-d integer tensor, clamped to ``[0, Q]``; None: Q) are
    absent: the result is the one of the first ``num_queries`` queries alone (their boxes, classes
    and scores are never read).

    Returns the fixed-size form: ``segment_map`` int32 ``[H,W]`` (0 = void, k = k-th segment),
    per segment slot (``S = Q + C`` of them, the most there can be) ``segment_class`` int64
    (semantic class), ``segment_query`` int64 (query index, -1 for stuff), ``segment_score``
    float32 (query score, 1 for stuff), ``segment_area`` int64 (pixels), and ``segment_count``
    int64 0-d, the number of segments K.  Slots ``0 .. K-1`` hold the segments, things first
    in painting order; slots ``K .. S-1`` hold class -1, query -1, score 0, area 0.
    """
    slots = query_boxes.shape[0] + sem_probs.shape[0]
    n = query_boxes.shape[0] if num_queries is None else min(max(int(num_queries), 0), query_boxes.shape[0])
    query_boxes, query_classes, query_scores = query_boxes[:n], query_classes[:n], query_scores[:n]
    masks = None
    if n > 0:
        masks = _score_map(dense_boxes, query_boxes, score) * _upcast(sem_probs)[query_classes] > sigma
    semantic = sem_probs.argmax(dim=0)  # torch.argmax: a NaN probability counts as the maximum
    segment_map, *segments = _fuse(masks, semantic, query_classes, query_scores, is_thing, score_threshold,
                                   overlap_threshold, stuff_area_limit)
    count = segments[0].shape[0]
    padded = [torch.cat([t, t.new_full((slots - count,), fill)]) for t, fill in zip(segments, SEGMENT_PADDING)]
    return (segment_map, *padded, torch.tensor(count, dtype=torch.int64, device=segment_map.device))


def _fuse(
    masks: Tensor | None,
    semantic: Tensor,
    query_classes: Tensor,
    query_scores: Tensor,
    is_thing: Tensor,
    score_threshold: float,
    overlap_threshold: float,
    stuff_area_limit: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Panoptic fusion of bool ``masks [Q,H,W]`` (None when Q = 0) and the semantic argmax
    ``[H,W]``, as documented in :func:`panoptic_from_dense`."""
    h, w = semantic.shape
    device = semantic.device
    segment_map = torch.zeros(h, w, dtype=torch.int32, device=device)
    classes, queries, scores, areas = [], [], [], []

    if masks is not None:
        for j in torch.sort(query_scores, descending=True, stable=True).indices.tolist():
            if query_scores[j].item() < score_threshold:
                continue
            mask = masks[j]
            area = int(mask.sum())
            if area == 0:
                continue
            free = mask & (segment_map == 0)
            free_area = int(free.sum())
            if (area - free_area) / area > overlap_threshold or free_area == 0:
                continue
            segment_map[free] = len(classes) + 1
            classes.append(int(query_classes[j]))
            queries.append(j)
            scores.append(float(query_scores[j]))
            areas.append(free_area)

    for c in torch.nonzero(~is_thing).flatten().tolist():
        region = (semantic == c) & (segment_map == 0)
        area = int(region.sum())
        if area == 0 or area < stuff_area_limit:
            continue
        segment_map[region] = len(classes) + 1
        classes.append(c)
        queries.append(-1)
        scores.append(1.0)
        areas.append(area)

    return (
        segment_map,
        torch.tensor(classes, dtype=torch.int64, device=device),
        torch.tensor(queries, dtype=torch.int64, device=device),
        torch.tensor(scores, dtype=torch.float32, device=device),
        torch.tensor(areas, dtype=torch.int64, device=device),
    )


# ------------------------------------------------------------------ mask loss
def mask_loss(
    dense_boxes: Tensor, query_boxes: Tensor, gt_masks: Tensor, beta: Tensor, batch_index: Tensor
) -> Tensor:
    """Explicit mask loss (eqs. 16-18), a scalar.

    ``L = 1/Q * sum_j beta_j / N_j * (E_FP_j + E_FN_j)`` with
    ``E_FP_j = sum_xy IoU(B(x,y), b_j) [xy not in M_j]`` and
    ``E_FN_j = sum_xy (1 - IoU(B(x,y), b_j)) [xy in M_j]``; IoU as in
    :func:`iou_attention` with ``score="iou"``.  ``dense_boxes`` is ``[B,4,H,W]``,
    query j lives in image ``batch_index[j]``, ``gt_masks`` is ``[Q,H,W]`` bool and
    ``N_j`` its pixel count; a query with ``N_j = 0`` contributes 0.  Differentiable
    w.r.t. ``dense_boxes`` and ``query_boxes``; ``beta`` is a constant weight.
    Q = 0 gives 0 (still attached to ``dense_boxes``' graph).  float16/bfloat16 inputs are
    computed in float32 and the loss rounded once.
    """
    q = query_boxes.shape[0]
    if q == 0:
        return dense_boxes.sum() * 0
    dense, queries = _upcast(dense_boxes), _upcast(query_boxes)  # once: the gradients are summed in float32
    total = dense.new_zeros(())
    for j in range(q):
        iou = _score_map(dense[batch_index[j]], queries[j : j + 1], "iou")[0]
        inside = gt_masks[j]
        n = inside.sum()
        if n == 0:
            continue
        fp = torch.where(inside, 0.0, iou).sum()
        fn = torch.where(inside, 1.0 - iou, 0.0).sum()
        total = total + beta[j].detach().to(total.dtype) * (fp + fn) / n
    return (total / q).to(dense_boxes.dtype)


# ------------------------------------------------------------------ query selection
def select_queries(
    boxes: Tensor, scores: Tensor, labels: Tensor, nms_thresh: float, global_nms_thresh: float, top_n: int
) -> tuple[Tensor, Tensor]:
    """The queries of one image: class-aware NMS (:func:`batched_nms` at ``nms_thresh`` over
    ``labels``), then, when ``global_nms_thresh >= 0``, class-agnostic NMS (:func:`nms` at
    ``global_nms_thresh``) over all the class-NMS survivors, then the ``top_n`` best.

    Returns ``(keep, count)``: ``keep`` int64 ``[min(top_n, N)]``, the kept indices in
    decreasing score order (ties: input order) followed by -1 padding; ``count`` int64 0-d,
    the number of kept indices.  A negative ``global_nms_thresh`` turns the second pass off.
    """
    keep = batched_nms(boxes, scores, labels, nms_thresh)
    if global_nms_thresh >= 0:
        keep = keep[nms(boxes[keep], scores[keep], global_nms_thresh)]
    keep = keep[:top_n]
    padded = torch.full((min(top_n, boxes.shape[0]),), -1, dtype=torch.int64, device=boxes.device)
    padded[: keep.numel()] = keep
    return padded, torch.tensor(keep.numel(), dtype=torch.int64, device=boxes.device)


def upsample_argmax(logits: Tensor, size: list[int], crop: list[int], out_dtype: torch.dtype | None = None) -> Tensor:
    """Semantic map at input resolution: ``argmax`` over the classes of ``logits [B, C, h, w]``
    bilinearly resized to ``size = [H, W]`` (``F.interpolate(..., align_corners=False)``), cropped
    to its first ``crop = [H', W']`` rows and columns -> ``out_dtype`` ``[B, H', W']`` (None:
    int64; int32, int16 or uint8 hold the same indices where the classes fit).

    First maximum on ties; NaN is the maximum (the first NaN wins), as ``torch.argmax``.
    float16/bfloat16 logits are resized in float32.  Builds the ``[B, C, H, W]`` tensor: the
    specification, not a fast path.
    """
    up = F.interpolate(_upcast(logits), size=tuple(size), mode="bilinear", align_corners=False)
    labels = up[:, :, : crop[0], : crop[1]].argmax(dim=1)
    return labels if out_dtype is None else labels.to(out_dtype)


# --------------------------------------- release-exact masks (bilinear x stride, >= sigma)
def panoptic_from_dense_release(
    dense_boxes: Tensor,
    sem_probs: Tensor,
    query_boxes: Tensor,
    query_classes: Tensor,
    query_scores: Tensor,
    is_thing: Tensor,
    stride: int,
    height: int,
    width: int,
    sigma: float,
    score: str,
    score_threshold: float,
    overlap_threshold: float,
    stuff_area_limit: int,
    fma: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The released TRI code's masks, then the fusion of :func:`panoptic_from_dense`, at full resolution.

    Masks: the soft masks ``S_j = score(B(x,y), B_j) * P_sem(x, y, c_j)`` of the ``[h, w]`` grid
    (as :func:`panoptic_from_dense`, float32 for float16/bfloat16 inputs) are upsampled by
    ``stride`` with ``F.interpolate(mode="bilinear", align_corners=False)``, cropped to
    ``[height, width]`` and thresholded ``>= sigma``.  Stuff: the grid's semantic argmax, each
    output pixel taking the value of its grid cell (nearest).  ``stuff_area_limit`` counts output
    pixels.  ``fma`` is ignored here: it tells the fused kernels whether this device's
    ``F.interpolate`` rounds its multiply-adds once (ATen's AVX2/AVX512 CPU kernels do).
    Returns ``segment_map`` int32 ``[height, width]`` and the segments as :func:`panoptic_from_dense`.
    """
    masks = None
    if query_boxes.shape[0] > 0:
        soft = _score_map(dense_boxes, query_boxes, score) * _upcast(sem_probs)[query_classes]  # [Q, h, w]
        up = F.interpolate(soft[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
        masks = up[:, :height, :width] >= sigma
    semantic = sem_probs.argmax(dim=0).repeat_interleave(stride, 0).repeat_interleave(stride, 1)
    return _fuse(masks, semantic[:height, :width], query_classes, query_scores, is_thing, score_threshold,
                 overlap_threshold, stuff_area_limit)
