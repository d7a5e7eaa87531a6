"""``nms`` / ``batched_nms`` (and ``select_queries``'s two passes): the parallel form of greedy NMS
that torchvision's CUDA NMS uses, in Triton.

1. ``_nms_mask_kernel`` (many programs, one per [rows x 32-column words] tile of the score-sorted
   boxes on or above the diagonal): bit j of word ``j // 32`` of row i is ``IoU(i, j) > thresh``
   for ``j > i`` (and equal labels when ``labels`` are given); with ``GLOBAL`` a second mask gets,
   from the same IoU, ``IoU(i, j) > global_thresh`` (no label).  IoUs are computed and rounded
   exactly like the reference's ``box_iou`` (float16/bfloat16 in float32, then rounded back before
   the comparison; no FMA contraction).  Words left of a row's diagonal word are never written and
   never read.
2. ``_greedy_scan_kernel`` (one program): the greedy pass over the words, 32 boxes at a time,
   with the suppressed sets in registers.  Only the boxes still available cost a step: the next
   one is the lowest clear bit of the word (bit operations, no per-box test); it is kept, its
   diagonal word updates the word (a scalar load) and its later words are ORed into the set (one
   vector load of the row's words right of the diagonal).  Two sets for ``select_queries``
   (csrc/cpu/select_queries_kernel.cpp says why one sweep equals its three passes): C's (every
   class survivor ORs its class row) and G's (every output ORs its global row); the scan stops
   once ``top_n`` are output.

Nothing is read on the host: the scan writes the kept box indices (``order[position]``) and their
count.  A mask takes ``N * ceil(N / 32) * 4`` bytes (as torchvision's CUDA NMS); the scan keeps
``ceil(N / 32)`` words per set in registers, so N is limited to ``MAX_BOXES`` (larger inputs raise).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TL_DTYPES, large_blocks, launch, scalars
from .box_iou import load_boxes, pair_iou

# The scan keeps ceil(N / 32) words in registers; a mask takes N * ceil(N / 32) * 4 bytes (8 GiB
# at this limit).
MAX_BOXES = 32 * 8192


@triton.jit
def _nms_mask_kernel(box_ptr, label_ptr, order_ptr, thr_ptr, mask_ptr, global_ptr, N, NW, OUT: tl.constexpr,
                     UPCAST: tl.constexpr, LABELS: tl.constexpr, GLOBAL: tl.constexpr, BR: tl.constexpr,
                     WB: tl.constexpr):
    row0 = tl.program_id(0) * BR
    col0 = tl.program_id(1) * WB * 32
    if col0 + WB * 32 > row0:  # some column of the tile is right of some row: on or above the diagonal
        i = row0 + tl.arange(0, BR)
        word = tl.program_id(1) * WB + tl.arange(0, WB)
        j = col0 + tl.arange(0, WB * 32)
        im = i < N
        jm = j < N
        bi = tl.load(order_ptr + i, mask=im, other=0)
        bj = tl.load(order_ptr + j, mask=jm, other=0)
        ax1, ay1, ax2, ay2 = load_boxes(box_ptr, bi, im, UPCAST)
        bx1, by1, bx2, by2 = load_boxes(box_ptr, bj, jm, UPCAST)
        iou = pair_iou(ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None],
                       bx1[None, :], by1[None, :], bx2[None, :], by2[None, :]).to(OUT)
        later = (j[None, :] > i[:, None]) & jm[None, :] & im[:, None]
        over = (iou > tl.load(thr_ptr)) & later
        if LABELS:
            ci = tl.load(label_ptr + bi, mask=im, other=0)
            cj = tl.load(label_ptr + bj, mask=jm, other=0)
            over = over & (ci[:, None] == cj[None, :])
        offs = i[:, None].to(tl.int64) * NW + word[None, :]
        store = im[:, None] & (word < NW)[None, :]
        shift = (j % 32).to(tl.int64)[None, :]
        # distinct powers of two: their sum is their OR (tl.sum is fast in the interpreter too)
        bits = over.to(tl.int64) << shift
        tl.store(mask_ptr + offs, tl.sum(tl.reshape(bits, (BR, WB, 32)), axis=2).to(tl.int32), mask=store)
        if GLOBAL:
            gbits = ((iou > tl.load(thr_ptr + 1)) & later).to(tl.int64) << shift
            tl.store(global_ptr + offs, tl.sum(tl.reshape(gbits, (BR, WB, 32)), axis=2).to(tl.int32), mask=store)


@triton.jit
def _lowest_bit(bits):
    """(the lowest set bit of ``bits`` (int64 holding a 32-bit word, not 0), its index): the index is
    the exponent of the bit converted to float32 (exact for a power of two)."""
    low = bits & -bits
    return low, (low.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127


@triton.jit
def _greedy_scan_kernel(mask_ptr, global_ptr, order_ptr, keep_ptr, count_ptr, N, NW, TOP_N, GLOBAL: tl.constexpr,
                        NWB: tl.constexpr):
    offs = tl.arange(0, NWB)
    wm = offs < NW
    class_removed = tl.zeros([NWB], dtype=tl.int32)
    global_removed = tl.zeros([NWB], dtype=tl.int32)
    count = 0
    w = 0
    while (w < NW) & (count < TOP_N):
        later = wm & (offs > w)
        cword = tl.sum(tl.where(offs == w, class_removed, 0), axis=0).to(tl.int64) & 0xFFFFFFFF
        gword = tl.sum(tl.where(offs == w, global_removed, 0), axis=0).to(tl.int64) & 0xFFFFFFFF
        valid = (tl.full([], 1, tl.int64) << tl.minimum(N - w * 32, 32).to(tl.int64)) - 1
        avail = ~cword & valid
        while (avail != 0) & (count < TOP_N):
            low, b = _lowest_bit(avail)  # box w * 32 + b is the next one still available: it joins C
            row = mask_ptr + (w * 32 + b).to(tl.int64) * NW
            cword = cword | (tl.load(row + w).to(tl.int64) & 0xFFFFFFFF)
            class_removed = class_removed | tl.load(row + offs, mask=later, other=0)
            joins = True
            if GLOBAL:
                joins = (gword & low) == 0
                if joins:
                    grow = global_ptr + (w * 32 + b).to(tl.int64) * NW
                    gword = gword | (tl.load(grow + w).to(tl.int64) & 0xFFFFFFFF)
                    global_removed = global_removed | tl.load(grow + offs, mask=later, other=0)
            if joins:
                tl.store(keep_ptr + count, tl.load(order_ptr + w * 32 + b))
                count += 1
            avail = ~cword & valid & ~((low << 1) - 1)
        w += 1
    tl.store(count_ptr, count)


def suppress(boxes: torch.Tensor, order: torch.Tensor, labels: torch.Tensor | None, thresh: float,
             global_thresh: float, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy pass over ``boxes`` float ``[N, 4]`` (``1 <= N <= MAX_BOXES``) visited in the order
    ``order`` int64 ``[N]`` (decreasing score, stable): a box goes when an earlier kept box (of its
    label, when ``labels`` int ``[N]`` are given) has IoU > ``thresh``; with ``global_thresh >= 0`` a
    survivor also goes when an earlier kept one has IoU > ``global_thresh`` (any label).  Stops at
    ``top_n >= 1`` kept.  Returns ``keep`` int64 ``[min(top_n, N)]`` (box indices in visiting order,
    then -1) and ``count`` int64 0-d, both computed on the device."""
    n = boxes.shape[0]
    n_words = triton.cdiv(n, 32)
    if large_blocks():
        wb = max(1, min(triton.next_power_of_2(n_words), 16))
        br = max(1, min(triton.next_power_of_2(n), 16384 // (wb * 32)))
    else:
        br, wb = 32, 2
    use_global = global_thresh >= 0
    mask = torch.empty((n, n_words), dtype=torch.int32, device=boxes.device)
    global_mask = torch.empty_like(mask) if use_global else mask
    dtype = boxes.dtype
    launch(_nms_mask_kernel, (triton.cdiv(n, br), triton.cdiv(n_words, wb)), boxes.contiguous(),
           boxes if labels is None else labels.contiguous(), order, scalars(dtype, boxes, thresh, max(global_thresh, 0)),
           mask, global_mask, n, n_words, OUT=TL_DTYPES[dtype], UPCAST=dtype in (torch.float16, torch.bfloat16),
           LABELS=labels is not None, GLOBAL=use_global, BR=br, WB=wb)
    keep = torch.full((min(top_n, n),), -1, dtype=torch.int64, device=boxes.device)
    count = torch.zeros((), dtype=torch.int64, device=boxes.device)
    nwb = max(16, triton.next_power_of_2(n_words))
    launch(_greedy_scan_kernel, (1,), mask, global_mask, order, keep, count, n, n_words, top_n, GLOBAL=use_global,
           NWB=nwb, num_warps=4 if nwb <= 1024 else 8)
    return keep, count


def _nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None, iou_threshold: float) -> torch.Tensor:
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if n > MAX_BOXES:
        raise ValueError(f"nms: the triton backend takes at most {MAX_BOXES} boxes, got {n}")
    order = torch.sort(scores, descending=True, stable=True).indices
    keep, count = suppress(boxes, order, idxs, iou_threshold, -1.0, n)
    return keep[: int(count)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return _nms(boxes, scores, idxs, iou_threshold)
