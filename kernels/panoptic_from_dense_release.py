"""``panoptic_from_dense_release``: the released code's masks (soft masks upsampled x stride
bilinearly, ``>= sigma``) fused with the panoptic fusion of ``panoptic_from_dense``.

Equal to :func:`rtpanoptic.ops.reference.panoptic_from_dense_release` mask for mask, without a
``Q x H x W`` float tensor; the decisions of the C++ and CUDA kernels (csrc/upsample_math.h).
Queries are handled in painting order (decreasing score, stable, NaN first); ``t`` is a query's
rank.  Passes:

1. ``_soft_kernel`` (parallel over grid cells x queries): the soft masks
   ``S_t = score(B, B_j) * P_sem(c_j)`` on the ``[h, w]`` grid (float32; float16/bfloat16 inputs
   are upcast as the reference does), and per program ``max |S_t|`` over the finite cells.
2. ``_rect_kernel``: with the label margin ``max |S_t| * 2^-16 + tiny`` of upsample_math.h, per
   program the first / last row and column holding a cell not clearly below sigma; the output
   rectangle whose bilinear taps touch those cells is found on the device (``searchsorted`` over
   the taps), nothing copied to the host.
3. ``_bits_kernel`` (parallel over output words x queries): bit-packed masks ``[Q, H * ceil(W/32)]``
   (row-aligned 32-pixel words): 0 outside the rectangle; inside, 1 where the 4 grid neighbours are
   all clearly above sigma, 0 where all clearly below, else the bilinear value ``>= sigma``,
   computed with the float operations of this device's ``F.interpolate``: with ``FMA``,
   ``fma(w0y, fma(w0x, v00, w1x * v01), w1y * fma(w0x, v10, w1x * v11))`` (ATen's AVX2/AVX-512 CPU
   kernel and its CUDA kernel), else every operation rounded.  Each program adds its popcount of
   each mask to the mask's area and widens the mask's box of non-zero words (rows, word columns)
   with integer atomics (``STATS``; any order gives the same result).  ``tl.fma`` is one rounding
   on a GPU; Triton's interpreter has no fused multiply-add, so there the sum is formed exactly in
   float64 and rounded to odd before the one rounding to float32 (which then equals a fused
   multiply-add's, ties included).  At stride 1 the CUDA ``F.interpolate`` copies its input
   (``COPY``: the bit is ``S_t >= sigma``); the CPU one takes both taps on the pixel itself,
   which the taps below reproduce.
4. ``_scan_kernel`` (one program, the sequential part): for each query, the overlap with the
   pixels taken so far is a popcount over the words of its box of non-zero words only (read from
   ``STATS`` on the device; 32-bit index arithmetic, no 64-bit division); the reference's tests
   decide (score threshold, empty mask, ``overlap / area > overlap_threshold`` in float64, no free
   pixel) and an accepted mask is OR-ed into ``taken``.
5. ``_semantic_kernel`` (the grid's semantic argmax: first maximum, NaN wins, as torch.argmax),
   ``_paint_kernel`` (the first accepted mask covering a pixel gives its segment, a program
   loading only the masks whose box meets its words; free pixels whose
   grid cell's class is stuff are marked, with per-program class histograms) and
   ``panoptic_from_dense``'s ``number_stuff`` (stuff segment ids, ``_stuff_kernel``).

float64 inputs are not taken (the interpreter could not round a float64 fused multiply-add once):
use the cuda, cpp or reference backend.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rtpanoptic.ops.reference import TRI_EPS
from rtpanoptic.ops.registry import SCORE_IDS, triton_interpreting

from ._box_score import box_score, load_box, load_dense
from ._common import argmax_better, large_blocks, launch, scalars
from .panoptic_from_dense import _popcount, number_stuff

# Devices whose F.interpolate copies its input at stride 1 (ATen's CUDA kernel, when the sizes are
# equal; its CPU kernel interpolates with both taps on the pixel itself).
COPY_DEVICES = ("cuda",)
# Per query (painting rank), int32, recorded with atomics while the bits are built (zeros before,
# each entry only grows): the mask's area, height - its first row, its last row + 1, row_words -
# its first word column, its last word column + 1 (of its non-zero words).
STATS = tl.constexpr(5)


def _sizes(n_cells: int, n_words: int, q: int):
    """(cells per program, queries per program of the grid passes, words per program of the
    output passes, queries per program of the bits pass, words per step of the scan)."""
    if large_blocks():  # the interpreter: as few programs as possible
        return (max(16, min(triton.next_power_of_2(n_cells), 8192)), max(q, 1),
                max(1, min(triton.next_power_of_2(n_words), 256)), max(q, 1),
                max(16, min(triton.next_power_of_2(n_words), 4096)))
    # GPU: 256 cells x 8 queries per program (a dense box is loaded once per 8 queries); 32 words
    # (1024 pixels, 8 per thread) per program of the output passes; 1024 words per scan step.
    return 256, 8, 32, 1, 1024


@triton.jit
def _finite(v):
    return tl.abs(v) < float("inf")


@triton.jit
def _label(v, sigma, margin):
    """cell_label of upsample_math.h: 1 clearly above sigma, 0 clearly below, 2 undecided (and non-finite)."""
    finite = _finite(v)
    return tl.where(finite & (v - margin >= sigma), 1, tl.where(finite & (v + margin < sigma), 0, 2))


@triton.jit
def _tap(d, n_in, stride, inv_stride):
    """bilinear_tap of upsample_math.h at output indices ``d``: (i0, i1, w0, w1), ATen's rule (every
    step exact for a power-of-two stride); stride 1: both taps on ``d``, weights (1, 0)."""
    src = (d.to(tl.float32) + 0.5) * inv_stride - 0.5
    src = tl.where(src < 0, 0.0, src)
    i0 = src.to(tl.int32)
    lam = src - i0.to(tl.float32)
    i1 = tl.where((i0 < n_in - 1) & (stride != 1), i0 + 1, i0)
    return i0, i1, 1.0 - lam, lam


@triton.jit
def _fma(a, b, c, INTERPRET: tl.constexpr):
    """float32 ``a * b + c`` rounded once.  Interpreter: ``a * b`` is exact in float64 (24 + 24
    bits); the float64 sum ``s`` and its exact error ``e`` (TwoSum) give the sum rounded to odd
    (``s``, or its neighbour towards the exact sum when ``e != 0`` and ``s`` is even), whose
    rounding to float32 is the exact sum's (53 >= 24 + 2 bits)."""
    if INTERPRET:
        x = a.to(tl.float64) * b.to(tl.float64)
        y = c.to(tl.float64)
        s = x + y
        z = s - x
        e = (x - (s - z)) + (y - z)
        bits = s.to(tl.int64, bitcast=True)
        odd = (e != 0) & ((bits & 1) == 0) & (tl.abs(s) < float("inf"))
        step = tl.where((e > 0) == (s > 0), 1, -1).to(tl.int64)  # +1 on the bits: away from zero
        s = tl.where(odd, (bits + step).to(tl.float64, bitcast=True), s)
        return s.to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def _pair(a, b, c, d, FMA: tl.constexpr, INTERPRET: tl.constexpr):
    """``a * b + c * d`` as the device's F.interpolate rounds it (weighted_pair of upsample_math.h)."""
    if FMA:
        return _fma(a, b, c * d, INTERPRET)
    else:
        return a * b + c * d


@triton.jit
def _soft_kernel(dense_ptr, sem_ptr, query_ptr, class_ptr, order_ptr, eps_ptr, soft_ptr, absmax_ptr, Q, P, C,
                 TRI: tl.constexpr, QB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    pm = p < P
    dx1, dy1, dx2, dy2 = load_dense(dense_ptr, P, p, pm, tl.float32)
    eps = tl.load(eps_ptr)
    plane = tl.cast(P, tl.int64)
    t0 = tl.program_id(1) * QB
    for t in range(t0, tl.minimum(t0 + QB, Q)):
        # S_t on the grid; a class out of range (unchecked here) gives NaN cells: an empty mask
        j = tl.load(order_ptr + t)
        qx1, qy1, qx2, qy2 = load_box(query_ptr, j, tl.float32)
        c = tl.load(class_ptr + j)
        valid = (c >= 0) & (c < C)
        s = box_score(dx1, dy1, dx2, dy2, qx1, qy1, qx2, qy2, eps, TRI)
        sem = tl.load(sem_ptr + c * plane + p, mask=pm & valid, other=0).to(tl.float32)
        v = tl.where(valid, s * sem, float("nan"))
        t64 = tl.cast(t, tl.int64)
        tl.store(soft_ptr + t64 * plane + p, v, mask=pm)
        # max |S_t| over the finite cells of this program (max: exact in any order)
        tl.store(absmax_ptr + t64 * n_prog + pid, tl.max(tl.where(pm & _finite(v), tl.abs(v), 0.0), axis=0))


@triton.jit
def _rect_kernel(soft_ptr, margin_ptr, params_ptr, rect_ptr, Q, P, w, QB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    pm = p < P
    row = p // w
    col = p % w
    sigma = tl.load(params_ptr)
    plane = tl.cast(P, tl.int64)
    t0 = tl.program_id(1) * QB
    for t in range(t0, tl.minimum(t0 + QB, Q)):
        # the cells not clearly below sigma (label != 0): their first / last row and column
        t64 = tl.cast(t, tl.int64)
        v = tl.load(soft_ptr + t64 * plane + p, mask=pm, other=0)
        keep = pm & (_label(v, sigma, tl.load(margin_ptr + t)) != 0)
        out = rect_ptr + (t64 * n_prog + pid) * 4
        tl.store(out, tl.min(tl.where(keep, row, P), axis=0))
        tl.store(out + 1, tl.max(tl.where(keep, row, -1), axis=0))
        tl.store(out + 2, tl.min(tl.where(keep, col, P), axis=0))
        tl.store(out + 3, tl.max(tl.where(keep, col, -1), axis=0))


@triton.jit
def _bits_kernel(soft_ptr, margin_ptr, rect_ptr, params_ptr, bits_ptr, stats_ptr, Q, h, w, height, width, row_words,
                 stride, inv_stride, FMA: tl.constexpr, COPY: tl.constexpr, INTERPRET: tl.constexpr,
                 QB: tl.constexpr, WB: tl.constexpr):
    pid = tl.program_id(0)
    n_words = height * row_words
    word = pid * WB + tl.arange(0, WB)
    lane = tl.arange(0, 32)
    wm = word < n_words
    row = word // row_words  # 32-bit division, once per word and launch (not per query)
    col = word % row_words
    y = row[:, None]  # [WB, 1]
    x = col[:, None] * 32 + lane[None, :]  # [WB, 32]
    pix = wm[:, None] & (x < width)
    # the 4 grid neighbours of every output pixel and their weights
    y0, y1, wy0, wy1 = _tap(y, h, stride, inv_stride)
    x0, x1, wx0, wx1 = _tap(x, w, stride, inv_stride)
    i00, i01, i10, i11 = y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1
    sigma = tl.load(params_ptr)
    plane = tl.cast(h, tl.int64) * w
    t0 = tl.program_id(1) * QB
    for t in range(t0, tl.minimum(t0 + QB, Q)):
        t64 = tl.cast(t, tl.int64)
        r = rect_ptr + 4 * t64
        inside = pix & (y >= tl.load(r)) & (y < tl.load(r + 1)) & (x >= tl.load(r + 2)) & (x < tl.load(r + 3))
        bit = tl.zeros_like(inside)
        if tl.sum(inside.to(tl.int32)) > 0:  # else the whole block lies outside the rectangle
            base = soft_ptr + t64 * plane
            v00 = tl.load(base + i00, mask=inside, other=0)
            if COPY:
                bit = inside & (v00 >= sigma)
            else:
                v01 = tl.load(base + i01, mask=inside, other=0)
                v10 = tl.load(base + i10, mask=inside, other=0)
                v11 = tl.load(base + i11, mask=inside, other=0)
                margin = tl.load(margin_ptr + t)
                l00, l01 = _label(v00, sigma, margin), _label(v01, sigma, margin)
                l10, l11 = _label(v10, sigma, margin), _label(v11, sigma, margin)
                # all clearly below: 0; all clearly above: 1; else the interpolated value decides
                top = _pair(v00, wx0, v01, wx1, FMA, INTERPRET)
                bottom = _pair(v10, wx0, v11, wx1, FMA, INTERPRET)
                value = _pair(top, wy0, bottom, wy1, FMA, INTERPRET)
                bit = inside & ((l00 | l01 | l10 | l11) != 0) & (((l00 & l01 & l10 & l11) == 1) | (value >= sigma))
        # distinct powers of two: their sum is their OR
        words = tl.sum(bit.to(tl.int64) << lane.to(tl.int64)[None, :], axis=1).to(tl.int32)
        tl.store(bits_ptr + t64 * n_words + word, words, mask=wm)
        # the query's area and the rows / word columns of its non-zero words (STATS: all only grow)
        area = tl.sum(tl.sum(bit.to(tl.int32), axis=1), axis=0)
        if area > 0:
            some = words != 0
            stats = stats_ptr + t64 * STATS
            tl.atomic_add(stats, area)
            tl.atomic_max(stats + 1, height - tl.min(tl.where(some, row, height), axis=0))
            tl.atomic_max(stats + 2, tl.max(tl.where(some, row, -1), axis=0) + 1)
            tl.atomic_max(stats + 3, row_words - tl.min(tl.where(some, col, row_words), axis=0))
            tl.atomic_max(stats + 4, tl.max(tl.where(some, col, -1), axis=0) + 1)


@triton.jit
def _span(table, t, height, row_words):
    """Area of rank ``t``'s mask in the ``STATS`` table, and the words holding its pixels: rows
    ``[ya, yb)``, word columns ``[wa, wa + nw)`` (meaningful when the area is > 0)."""
    stats = table + tl.cast(t, tl.int64) * STATS
    wa = row_words - tl.load(stats + 3)
    return tl.load(stats), height - tl.load(stats + 1), tl.load(stats + 2), wa, tl.load(stats + 4) - wa


@triton.jit
def _rect_words(mask_row, taken_ptr, i, cells, ya, wa, nw, row_words):
    """Words ``i`` of a rectangle of ``nw`` words a row from row ``ya``, word ``wa`` (row by row, the
    first ``cells``): their address, whether they exist, the mask's words and the taken ones."""
    m = i < cells
    at = (ya + i // nw).to(tl.int64) * row_words + wa + i % nw
    return at, m, tl.load(mask_row + at, mask=m, other=0), tl.load(taken_ptr + at, mask=m, other=0)


@triton.jit
def _scan_kernel(bits_ptr, stats_ptr, eligible_ptr, thr_ptr, taken_ptr, accepted_ptr, free_ptr, Q, height, row_words,
                 WB: tl.constexpr):
    overlap_threshold = tl.load(thr_ptr)
    offs = tl.arange(0, WB)
    n_words = height * row_words
    for t in range(Q):
        area, ya, yb, wa, nw = _span(stats_ptr, t, height, row_words)
        if (tl.load(eligible_ptr + t) != 0) & (area > 0):
            cells = (yb - ya) * nw  # the words of the mask's box, row by row: outside it every word is 0
            mask_row = bits_ptr + tl.cast(t, tl.int64) * n_words
            overlap = tl.zeros([WB], dtype=tl.int64)
            for i0 in range(0, cells, WB):
                _, _, words, taken = _rect_words(mask_row, taken_ptr, i0 + offs, cells, ya, wa, nw, row_words)
                overlap += _popcount(words & taken)
            n_overlap = tl.sum(overlap, axis=0)
            free = area - n_overlap
            ratio = n_overlap.to(tl.float64) / area.to(tl.float64)
            if (free > 0) & (ratio <= overlap_threshold):
                for i0 in range(0, cells, WB):
                    at, m, words, taken = _rect_words(mask_row, taken_ptr, i0 + offs, cells, ya, wa, nw, row_words)
                    tl.store(taken_ptr + at, taken | words, mask=m)
                tl.store(accepted_ptr + t, 1)
                tl.store(free_ptr + t, free)
                tl.debug_barrier()  # the next box maps its words to other threads


@triton.jit
def _semantic_kernel(sem_ptr, out_ptr, C, P, BLOCK: tl.constexpr):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < P
    # compared in float32 (exact for float16/bfloat16: the same argmax; the interpreter has no
    # bfloat16 arithmetic)
    best = tl.load(sem_ptr + p, mask=pm, other=0).to(tl.float32)
    label = tl.zeros([BLOCK], dtype=tl.int32)
    plane = tl.cast(P, tl.int64)
    for c in range(1, C):
        v = tl.load(sem_ptr + c * plane + p, mask=pm, other=0).to(tl.float32)
        better = argmax_better(v, best)
        best = tl.where(better, v, best)
        label = tl.where(better, c, label)
    tl.store(out_ptr + p, label, mask=pm)


@triton.jit
def _paint_kernel(bits_ptr, accepted_ptr, stats_ptr, semantic_ptr, is_thing_ptr, seg_ptr, hist_ptr, K, w, stride, height,
                  width, row_words, WB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    n_words = height * row_words
    word = pid * WB + tl.arange(0, WB)
    lane = tl.arange(0, 32)
    wm = word < n_words
    y = (word // row_words)[:, None]
    x = (word % row_words)[:, None] * 32 + lane[None, :]
    pm = wm[:, None] & (x < width)
    # things: the first accepted mask (in painting order) covering the pixel
    seg = tl.zeros([WB, 32], dtype=tl.int32)
    for k in range(K):
        # rank and box in one load round (the accepted masks' STATS, gathered: no load waiting on t)
        t = tl.load(accepted_ptr + k)
        _, ya, yb, wa, nw = _span(stats_ptr, k, height, row_words)
        # the mask's words lie in [ya * row_words + wa, (yb - 1) * row_words + wa + nw): skip this
        # block's loads when it lies outside
        if (ya * row_words + wa < pid * WB + WB) & ((yb - 1) * row_words + wa + nw > pid * WB):
            words = tl.load(bits_ptr + tl.cast(t, tl.int64) * n_words + word, mask=wm, other=0)
            bit = ((words[:, None] >> lane[None, :]) & 1) != 0
            seg = tl.where((seg == 0) & bit, k + 1, seg)
    # stuff: the semantic class of the pixel's grid cell (nearest upsampling)
    label = tl.load(semantic_ptr + (y // stride) * w + x // stride, mask=pm, other=0)
    stuff = (seg == 0) & (tl.load(is_thing_ptr + label, mask=pm, other=1) == 0) & pm
    seg = tl.where(stuff, -(label + 1), seg)
    tl.store(seg_ptr + y.to(tl.int64) * width + x, seg, mask=pm)
    hist = tl.histogram(tl.where(stuff, label, 0).reshape([WB * 32]), CB, mask=stuff.reshape([WB * 32]))
    tl.store(hist_ptr + pid * CB + tl.arange(0, CB), hist)


def _touching(lo: torch.Tensor, hi: torch.Tensor, n_out: int, n_in: int, stride: int):
    """[first, last) of the output indices whose taps touch a grid index in [lo, hi] (per query;
    touching_outputs of upsample_math.h), from the taps of every output index (integers, exact)."""
    d = torch.arange(n_out, device=lo.device)
    i0 = (2 * d + 1 - stride).clamp(min=0) // (2 * stride)
    i1 = torch.where((i0 < n_in - 1) & (stride != 1), i0 + 1, i0)
    return torch.searchsorted(i1, lo.contiguous()), torch.searchsorted(i0, hi.contiguous(), right=True)


def build_bits(dense, sem, query_boxes, query_classes, order, stride, height, width, sigma, score, fma):
    """Passes 1-3: the masks of the queries in painting order ``order`` (int64 ``[Q]``) at output
    resolution, bit-packed in row-aligned words (int32 ``[Q, height * ceil(width / 32)]``, pixel
    ``(y, x)`` in bit ``x % 32`` of word ``y * ceil(width / 32) + x // 32``), and their ``STATS``
    (int32 ``[Q, 5]``; zeros for an empty mask).  ``sem`` contiguous."""
    device = dense.device
    _, h, w = dense.shape
    q, p = query_boxes.shape[0], h * w
    row_words = triton.cdiv(width, 32)
    n_words = height * row_words
    cell_block, qb, wb, qb_bits, _ = _sizes(p, n_words, q)
    i32 = dict(dtype=torch.int32, device=device)
    bits = torch.empty((q, n_words), **i32)  # every word written by _bits_kernel
    stats = torch.zeros((q, STATS), **i32)
    if q and n_words:
        n_cells_prog = triton.cdiv(p, cell_block)
        grid = (n_cells_prog, triton.cdiv(q, qb))
        soft = torch.empty((q, p), dtype=torch.float32, device=device)
        absmax = torch.empty((q, n_cells_prog), dtype=torch.float32, device=device)
        launch(_soft_kernel, grid, dense.contiguous(), sem, query_boxes.contiguous(), query_classes.to(torch.int64),
               order.to(torch.int32), scalars(torch.float32, dense, TRI_EPS), soft, absmax, q, p, sem.shape[0],
               TRI=SCORE_IDS[score] == 1, QB=qb, BLOCK=cell_block)
        margin = absmax.amax(1) * 2.0**-16 + torch.finfo(torch.float32).tiny  # label_margin, in float32
        params = scalars(torch.float32, dense, sigma)
        parts = torch.empty((q, n_cells_prog, 4), **i32)
        launch(_rect_kernel, grid, soft, margin, params, parts, q, p, w, QB=qb, BLOCK=cell_block)
        r0, r1 = parts[..., 0].amin(1), parts[..., 1].amax(1)
        c0, c1 = parts[..., 2].amin(1), parts[..., 3].amax(1)
        ya, yb = _touching(r0, r1, height, h, stride)
        xa, xb = _touching(c0, c1, width, w, stride)
        rect = torch.stack([ya, yb, xa, xb], 1)
        rect = rect.masked_fill(((r1 < 0) | (ya >= yb) | (xa >= xb))[:, None], 0).to(torch.int32).flatten()
        launch(_bits_kernel, (triton.cdiv(n_words, wb), triton.cdiv(q, qb_bits)), soft, margin, rect, params, bits,
               stats, q, h, w, height, width, row_words, stride, 1.0 / stride, FMA=bool(fma),
               COPY=stride == 1 and device.type in COPY_DEVICES, INTERPRET=triton_interpreting(), QB=qb_bits, WB=wb)
    return bits, stats


def panoptic_from_dense_release(dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing, stride,
                                height, width, sigma, score, score_threshold, overlap_threshold, stuff_area_limit,
                                fma):
    if dense_boxes.dtype == torch.float64:
        raise TypeError("panoptic_from_dense_release: the triton kernel takes float16, bfloat16 and float32, not "
                        "torch.float64 (the cuda, cpp and reference backends take it)")
    device = dense_boxes.device
    _, h, w = dense_boxes.shape
    n_classes = sem_probs.shape[0]
    q, p = query_boxes.shape[0], h * w
    n_out = height * width
    row_words = triton.cdiv(width, 32)
    n_words = height * row_words
    _, _, wb, _, scan_wb = _sizes(p, n_words, q)
    i32 = dict(dtype=torch.int32, device=device)

    order = torch.sort(query_scores, descending=True, stable=True).indices  # the reference's fusion order
    sem = sem_probs.contiguous()
    bits, stats = build_bits(dense_boxes, sem, query_boxes, query_classes, order, stride, height, width, sigma, score,
                             fma)
    accepted_flags = torch.zeros(q, **i32)
    free_area = torch.zeros(q, dtype=torch.int64, device=device)
    if q and n_out:
        # the reference skips query j when float(score_j) < score_threshold (float64 compare)
        eligible = (~(query_scores[order].double() < score_threshold)).to(torch.int32)
        thr = torch.tensor([overlap_threshold], dtype=torch.float64, device=device)
        taken = torch.zeros(n_words, **i32)
        launch(_scan_kernel, (1,), bits, stats, eligible, thr, taken, accepted_flags, free_area, q, height, row_words,
               WB=scan_wb, num_warps=8)
    accepted = torch.nonzero(accepted_flags).flatten()  # ranks in painting order
    k = accepted.numel()

    seg = torch.zeros((height, width), **i32)
    n_paint = triton.cdiv(n_words, wb)
    cb = max(16, triton.next_power_of_2(n_classes))
    hist = torch.zeros((max(n_paint, 1), cb), **i32)
    if n_out:
        semantic = torch.empty(p, **i32)
        block = 1024 if not large_blocks() else max(16, min(triton.next_power_of_2(p), 65536))
        launch(_semantic_kernel, (triton.cdiv(p, block),), sem, semantic, n_classes, p, BLOCK=block)
        launch(_paint_kernel, (n_paint,), bits, accepted.to(torch.int32), stats[accepted], semantic, is_thing.to(torch.int8), seg, hist,
               k, w, stride, height, width, row_words, WB=wb, CB=cb)
    stuff_area, keep_stuff, _ = number_stuff(seg, hist, is_thing, stuff_area_limit, k)
    stuff_classes = torch.nonzero(keep_stuff).flatten()

    thing_queries = order[accepted]
    n_stuff = stuff_classes.numel()
    return (
        seg,
        torch.cat([query_classes[thing_queries].to(torch.int64), stuff_classes]),
        torch.cat([thing_queries, torch.full((n_stuff,), -1, dtype=torch.int64, device=device)]),
        torch.cat([query_scores[thing_queries].to(torch.float32), torch.ones(n_stuff, device=device)]),
        torch.cat([free_area[accepted], stuff_area[stuff_classes]]),
    )
