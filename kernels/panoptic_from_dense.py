"""``panoptic_from_dense``: mask construction (eqs. 5-7) fused with panoptic fusion.

Bit-identical to :func:`rtpanoptic.ops.reference.panoptic_from_dense`, without a ``Q x H x W``
float tensor.  Four passes:

1. ``_masks_kernel`` (parallel over pixels x queries): ``score(B(x,y), B_j) * P_sem(x,y,c_j) > sigma``
   computed operation by operation like the reference (in float32 for float16/bfloat16 inputs),
   bit-packed into int32 words ``[Q, ceil(HW / 32)]`` with the queries in painting order
   (decreasing score, stable).  Each program adds its popcount of each mask to the mask's area
   and widens the mask's span ``[first, end)`` of non-zero words, with integer atomics (``STATS``;
   any order gives the same result).  Absent queries (``j >= num_queries``) and classes outside
   ``[0, C)`` get empty masks.
2. ``_fusion_resident_kernel`` (bitmap in registers) / ``_fusion_kernel`` (streamed; one program,
   the sequential part): for each query in order, the overlap with the pixels taken so far is a
   popcount of ``mask & taken`` over the words of its span only (loop bounds / load masks read
   from ``STATS``, on the device); the reference's tests (score threshold, empty mask,
   ``overlap / area > overlap_threshold`` in float64, no free pixel) decide, and an accepted mask
   is OR-ed into ``taken`` over its span; the accepted ranks with their spans, their free areas
   and their count are written compacted (on the device).
3. ``_paint_kernel`` (parallel over pixels): the first accepted mask covering a pixel gives its
   segment (accepted masks are visited in painting order; a program loads only the masks whose
   span meets its words); free pixels whose semantic argmax
   (torch.argmax: first maximum, NaN counts as the maximum) is a stuff class are marked for
   step 4, with per-program class histograms.
4. ``_stuff_kernel``: stuff pixels take their class's segment id when the class's free area is
   non-zero and ``>= stuff_area_limit`` (decided from the summed histograms).

Every size and count stays on the device (nothing waits for the GPU, so the op can be captured in
a CUDA graph): the segments are written into ``Q + C`` slots (padded with class -1, query -1,
score 0, area 0) with their count as a 0-d tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rtpanoptic.ops.reference import TRI_EPS
from rtpanoptic.ops.registry import SCORE_IDS

from ._box_score import box_score, load_box, load_dense
from ._common import TL_DTYPES, argmax_better, constant, large_blocks, launch, opmath, scalars

# Up to this many 32-pixel words (262144 pixels, e.g. 256x1024) the sequential scan keeps the
# taken-pixel bitmap in registers; larger grids stream it through global memory.
RESIDENT_WORDS = 8192
# Per query (painting rank), int32, recorded with atomics while the masks are built (zeros before,
# each entry only grows): the mask's area, NW - its first non-zero word, its last non-zero word + 1.
STATS = tl.constexpr(3)
# Per accepted mask (painting order), int32, written by the fusion: its rank, first and end word.
ACCEPTED = tl.constexpr(3)


def _sizes(n_words: int):
    """(words per program of the pixel passes, words per step of the sequential scan)."""
    if large_blocks():
        return max(1, min(triton.next_power_of_2(n_words), 256)), max(16, min(triton.next_power_of_2(n_words), 4096))
    return 32, 1024


@triton.jit
def _popcount(words):
    """Set bits of each 32-bit word (int32 in, int64 out; SWAR, no intrinsics)."""
    x = words.to(tl.int64) & 0xFFFFFFFF
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24) & 0xFF


@triton.jit
def _masks_kernel(dense_ptr, sem_ptr, query_ptr, class_ptr, order_ptr, present_ptr, params_ptr, masks_ptr, stats_ptr,
                  Q, C, P, NW, TRI: tl.constexpr, OPMATH: tl.constexpr, QB: tl.constexpr, WB: tl.constexpr):
    pid = tl.program_id(0)
    word = pid * WB + tl.arange(0, WB)
    lane = tl.arange(0, 32)
    p = word[:, None] * 32 + lane[None, :]  # [WB, 32] pixels
    pm = p < P
    dx1, dy1, dx2, dy2 = load_dense(dense_ptr, P, p, pm, OPMATH)
    sigma = tl.load(params_ptr)
    eps = tl.load(params_ptr + 1)
    n_present = tl.load(present_ptr)
    t0 = tl.program_id(1) * QB
    for t in range(t0, tl.minimum(t0 + QB, Q)):
        j = tl.load(order_ptr + t)
        qx1, qy1, qx2, qy2 = load_box(query_ptr, j, OPMATH)
        c = tl.load(class_ptr + j).to(tl.int64)
        # an absent query, or a class outside [0, C) (unchecked on a GPU in the padded form): no bit
        used = (j < n_present) & (c >= 0) & (c < C)
        s = box_score(dx1, dy1, dx2, dy2, qx1, qy1, qx2, qy2, eps, TRI)
        sem = tl.load(sem_ptr + c * P + p, mask=pm & used, other=0).to(OPMATH)
        bit = ((s * sem > sigma) & pm & used).to(tl.int32)
        # distinct powers of two: their sum is their OR
        words = tl.sum(bit.to(tl.int64) << lane.to(tl.int64)[None, :], axis=1).to(tl.int32)
        t64 = tl.cast(t, tl.int64)
        tl.store(masks_ptr + t64 * NW + word, words, mask=word < NW)
        # the query's area and the span of its non-zero words (STATS: all three only grow)
        area = tl.sum(tl.sum(bit, axis=1), axis=0)
        if area > 0:
            stats = stats_ptr + t64 * STATS
            tl.atomic_add(stats, area)
            tl.atomic_max(stats + 1, NW - tl.min(tl.where(words != 0, word, NW), axis=0))
            tl.atomic_max(stats + 2, tl.max(tl.where(words != 0, word, -1), axis=0) + 1)


@triton.jit
def _span(table, t, NW):
    """Area and ``[first, end)`` of the non-zero words of rank ``t``'s mask in the ``STATS`` table
    (``first >= end`` when empty).  (A helper: its first argument is not named ``*_ptr``.)"""
    stats = table + tl.cast(t, tl.int64) * STATS
    return tl.load(stats), NW - tl.load(stats + 1), tl.load(stats + 2)


@triton.jit
def _accept(accepted, free_areas, k, t, first, end, free):
    """The ``k``-th accepted mask: its rank and span (``ACCEPTED`` int32 a mask) and its free area."""
    out = accepted + k * ACCEPTED
    tl.store(out, t)
    tl.store(out + 1, first)
    tl.store(out + 2, end)
    tl.store(free_areas + k, free)


@triton.jit
def _fusion_kernel(masks_ptr, stats_ptr, eligible_ptr, thr_ptr, taken_ptr, accepted_ptr, free_ptr, count_ptr, Q, NW,
                   WB: tl.constexpr):
    overlap_threshold = tl.load(thr_ptr)
    offs = tl.arange(0, WB)
    n_accepted = 0
    for t in range(Q):
        area, first, end = _span(stats_ptr, t, NW)
        if (tl.load(eligible_ptr + t) != 0) & (area > 0):
            # only the words [first, end) of the mask can be non-zero
            row = masks_ptr + tl.cast(t, tl.int64) * NW
            overlap = tl.zeros([WB], dtype=tl.int64)
            for w0 in range(first, end, WB):
                wm = w0 + offs < end
                words = tl.load(row + w0 + offs, mask=wm, other=0)
                taken = tl.load(taken_ptr + w0 + offs, mask=wm, other=0)
                overlap += _popcount(words & taken)
            n_overlap = tl.sum(overlap, axis=0)
            free = area - n_overlap
            ratio = n_overlap.to(tl.float64) / area.to(tl.float64)
            if (free > 0) & (ratio <= overlap_threshold):
                for w0 in range(first, end, WB):
                    wm = w0 + offs < end
                    words = tl.load(row + w0 + offs, mask=wm, other=0)
                    taken = tl.load(taken_ptr + w0 + offs, mask=wm, other=0)
                    tl.store(taken_ptr + w0 + offs, taken | words, mask=wm)
                _accept(accepted_ptr, free_ptr, n_accepted, t, first, end, free)
                n_accepted += 1
                tl.debug_barrier()
    tl.store(count_ptr, n_accepted)


@triton.jit
def _fusion_resident_kernel(masks_ptr, stats_ptr, eligible_ptr, thr_ptr, accepted_ptr, free_ptr, count_ptr, Q, NW,
                            NWB: tl.constexpr):
    """``_fusion_kernel`` with the taken-pixel bitmap held in registers (NW <= NWB words):
    one load of each candidate mask's words [first, end), no global round trips for the bitmap."""
    overlap_threshold = tl.load(thr_ptr)
    offs = tl.arange(0, NWB)
    taken = tl.zeros([NWB], dtype=tl.int32)
    n_accepted = 0
    for t in range(Q):
        area, first, end = _span(stats_ptr, t, NW)
        if (tl.load(eligible_ptr + t) != 0) & (area > 0):
            wm = (offs >= first) & (offs < end)
            words = tl.load(masks_ptr + tl.cast(t, tl.int64) * NW + offs, mask=wm, other=0)
            n_overlap = tl.sum(_popcount(words & taken), axis=0)
            free = area - n_overlap
            ratio = n_overlap.to(tl.float64) / area.to(tl.float64)
            if (free > 0) & (ratio <= overlap_threshold):
                taken = taken | words
                _accept(accepted_ptr, free_ptr, n_accepted, t, first, end, free)
                n_accepted += 1
    tl.store(count_ptr, n_accepted)


@triton.jit
def _paint_kernel(masks_ptr, accepted_ptr, count_ptr, sem_ptr, is_thing_ptr, seg_ptr, hist_ptr, C, P, NW,
                  WB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    word = pid * WB + tl.arange(0, WB)
    lane = tl.arange(0, 32)
    p = word[:, None] * 32 + lane[None, :]
    pm = p < P
    wm = word < NW
    seg = tl.zeros([WB, 32], dtype=tl.int32)
    n_accepted = tl.load(count_ptr)
    for k in range(n_accepted):
        # rank and span in one load round (the span copied by the fusion: no load waiting on t)
        accepted = accepted_ptr + k * ACCEPTED
        t, first, end = tl.load(accepted), tl.load(accepted + 1), tl.load(accepted + 2)
        if (first < pid * WB + WB) & (end > pid * WB):  # else no word of this block is in the mask
            words = tl.load(masks_ptr + tl.cast(t, tl.int64) * NW + word, mask=wm, other=0)
            bit = ((words[:, None] >> lane[None, :]) & 1) != 0
            seg = tl.where((seg == 0) & bit, k + 1, seg)
    best = tl.load(sem_ptr + p, mask=pm, other=0)
    label = tl.zeros([WB, 32], dtype=tl.int32)
    plane = tl.cast(P, tl.int64)
    for c in range(1, C):
        v = tl.load(sem_ptr + c * plane + p, mask=pm, other=0)
        better = argmax_better(v, best)
        best = tl.where(better, v, best)
        label = tl.where(better, c, label)
    stuff = (seg == 0) & (tl.load(is_thing_ptr + label, mask=pm, other=1) == 0) & pm
    seg = tl.where(stuff, -(label + 1), seg)
    tl.store(seg_ptr + p, seg, mask=pm)
    hist = tl.histogram(tl.where(stuff, label, 0).reshape([WB * 32]), CB, mask=stuff.reshape([WB * 32]))
    tl.store(hist_ptr + pid * CB + tl.arange(0, CB), hist)


@triton.jit
def _stuff_kernel(seg_ptr, lut_ptr, P, BLOCK: tl.constexpr):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = p < P
    seg = tl.load(seg_ptr + p, mask=m, other=0)
    stuff = seg < 0
    ids = tl.load(lut_ptr + (-seg - 1), mask=m & stuff, other=0)
    tl.store(seg_ptr + p, tl.where(stuff, ids, seg), mask=m)


def number_stuff(seg, hist, is_thing, stuff_area_limit, things):
    """The stuff segments, after ``things`` thing segments: the stuff classes whose free area (the
    per-program histograms ``hist``) is > 0 and >= ``stuff_area_limit``, numbered in increasing
    class; the marked stuff pixels (``-(class + 1)``) of ``seg`` take their class's segment id (0,
    void, where the class was not kept).  Returns ``(stuff_area, keep_stuff, stuff_rank)``, the
    rank 1-based among the kept classes."""
    stuff_area = hist.sum(0, dtype=torch.int64)[: is_thing.shape[0]]
    keep_stuff = (~is_thing) & (stuff_area > 0) & (stuff_area >= stuff_area_limit)
    stuff_rank = keep_stuff.cumsum(0)
    n = seg.numel()
    if n:
        lut = torch.where(keep_stuff, things + stuff_rank, 0).to(torch.int32)
        block = 1024 if not large_blocks() else max(16, min(triton.next_power_of_2(n), 65536))
        launch(_stuff_kernel, (triton.cdiv(n, block),), seg, lut, n, BLOCK=block)
    return stuff_area, keep_stuff, stuff_rank


def build_masks(dense, sem, query_boxes, query_classes, order, present, sigma, score):
    """Pass 1: the masks of the queries in painting order ``order`` (int64 ``[Q]``), bit-packed
    (int32 ``[Q, ceil(HW / 32)]``, pixel ``i`` in bit ``i % 32`` of word ``i // 32``), and their
    ``STATS`` (int32 ``[Q, 3]``: area, ``NW - first``, ``end`` of the non-zero words; zeros for an
    empty mask).  ``dense``, ``sem`` contiguous; ``present`` the 0-d count of present queries."""
    q, (_, h, w) = query_boxes.shape[0], dense.shape
    p = h * w
    n_words = triton.cdiv(p, 32)
    masks = torch.empty((q, n_words), dtype=torch.int32, device=dense.device)  # every word written below
    stats = torch.zeros((q, STATS), dtype=torch.int32, device=dense.device)
    if q and p:
        wb = _sizes(n_words)[0]
        qb = q if large_blocks() else 8  # dense boxes are loaded once per 8 queries
        math = opmath(dense.dtype)
        # int64 class ids: one beyond int32 must stay outside [0, C) (its low 32 bits may be a class)
        launch(_masks_kernel, (triton.cdiv(n_words, wb), triton.cdiv(q, qb)), dense, sem, query_boxes.contiguous(),
               query_classes.to(torch.int64), order.to(torch.int32), present, scalars(math, dense, sigma, TRI_EPS),
               masks, stats, q, sem.shape[0], p, n_words, TRI=SCORE_IDS[score] == 1, OPMATH=TL_DTYPES[math],
               QB=qb, WB=wb)
    return masks, stats


def panoptic_from_dense(dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing,
                        sigma, score, score_threshold, overlap_threshold, stuff_area_limit, num_queries=None):
    device = dense_boxes.device
    _, h, w = dense_boxes.shape
    n_classes = sem_probs.shape[0]
    q, p = query_boxes.shape[0], h * w
    slots = q + n_classes
    n_words = triton.cdiv(p, 32)
    wb, scan_wb = _sizes(n_words)
    n_prog = triton.cdiv(n_words, wb) if p else 0
    dense = dense_boxes.contiguous()
    sem = sem_probs.contiguous()
    i32 = dict(dtype=torch.int32, device=device)
    i64 = dict(dtype=torch.int64, device=device)

    # Every count below is a device tensor and every launch has a host-known grid: nothing is
    # read back, so the op can be captured in a CUDA graph.
    present = torch.full((), q, **i64) if num_queries is None else num_queries.clamp(0, q)
    order = torch.sort(query_scores, descending=True, stable=True).indices
    masks, stats = build_masks(dense, sem, query_boxes, query_classes, order, present, sigma, score)
    accepted = torch.zeros((q, ACCEPTED), **i32)  # the accepted masks' ranks and spans, compacted
    free_area = torch.zeros(q, **i64)
    n_things = torch.zeros((), **i32)
    if q and p:
        # the reference skips query j when float(score_j) < score_threshold (float64 compare)
        eligible = (~(query_scores[order].double() < score_threshold)).to(torch.int32)
        thr = constant((float(overlap_threshold),), torch.float64, dense)
        if n_words <= RESIDENT_WORDS:
            launch(_fusion_resident_kernel, (1,), masks, stats, eligible, thr, accepted, free_area, n_things, q,
                   n_words, NWB=max(16, triton.next_power_of_2(n_words)), num_warps=8)
        else:
            taken = torch.zeros(n_words, **i32)
            launch(_fusion_kernel, (1,), masks, stats, eligible, thr, taken, accepted, free_area, n_things, q,
                   n_words, WB=scan_wb, num_warps=8)

    seg = torch.zeros((h, w), **i32)
    cb = max(16, triton.next_power_of_2(n_classes))
    hist = torch.zeros((max(n_prog, 1), cb), **i32)
    if p:
        launch(_paint_kernel, (n_prog,), masks, accepted, n_things, sem, is_thing.to(torch.int8), seg, hist,
               n_classes, p, n_words, WB=wb, CB=cb)
    things = n_things.to(torch.int64)
    stuff_area, keep_stuff, stuff_rank = number_stuff(seg, hist, is_thing, stuff_area_limit, things)

    # Slots: things 0 .. K-1 in painting order, kept stuff classes next, then padding.  Each entry
    # goes to its own slot (unused entries to distinct slots past the end, cut off): no collisions.
    ranks = torch.arange(q, **i64)
    classes = torch.arange(n_classes, **i64)
    thing_queries = order[accepted[:, 0].to(torch.int64)]
    slot = torch.cat([torch.where(ranks < things, ranks, slots + ranks),
                      torch.where(keep_stuff, things + stuff_rank - 1, slots + q + classes)])

    def place(thing_values, stuff_values, fill):
        values = torch.cat([thing_values, stuff_values])
        out = torch.full((2 * slots,), fill, dtype=values.dtype, device=device)
        return out.scatter_(0, slot, values)[:slots]

    return (
        seg,
        place(query_classes[thing_queries].to(torch.int64), classes, -1),
        place(thing_queries, torch.full((n_classes,), -1, **i64), -1),
        place(query_scores[thing_queries].to(torch.float32), torch.ones(n_classes, device=device), 0.0),
        place(free_area, stuff_area, 0),
        things + keep_stuff.sum(),
    )
