"""``nms`` / ``batched_nms``: IoU bitmask tiles, then a sequential sweep, both in Triton.

1. ``_nms_mask_kernel`` (parallel over [rows x 32-column words] tiles of the score-sorted boxes):
   bit j of row i is ``IoU(i, j) > iou_threshold`` for ``j > i`` (and equal category for
   ``batched_nms``), with the IoU computed and rounded exactly like the reference's ``box_iou``
   (float16/bfloat16 in float32, then rounded back before the comparison; no FMA contraction).
2. ``_nms_sweep_kernel`` (one program): the greedy pass in score order, the suppressed-set
   bitmap kept in registers; a kept box ORs its row into it.

The bitmask takes ``N * ceil(N / 32) * 4`` bytes (like torchvision's CUDA NMS); the sweep keeps
``ceil(N / 32)`` words in registers, so N is limited to ``MAX_BOXES`` (larger inputs raise).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TL_DTYPES, large_blocks, launch, scalars
from .box_iou import load_boxes, pair_iou

# The sweep keeps ceil(N / 32) words in registers; the bitmask takes N * ceil(N / 32) * 4 bytes
# (8 GiB at this limit).
MAX_BOXES = 32 * 8192


@triton.jit
def _nms_mask_kernel(box_ptr, cls_ptr, thr_ptr, mask_ptr, N, NW, OUT: tl.constexpr, UPCAST: tl.constexpr,
                     BATCHED: tl.constexpr, BR: tl.constexpr, WB: tl.constexpr):
    i = tl.program_id(0) * BR + tl.arange(0, BR)
    word = tl.program_id(1) * WB + tl.arange(0, WB)
    j = tl.program_id(1) * WB * 32 + tl.arange(0, WB * 32)
    im = i < N
    jm = j < N
    ax1, ay1, ax2, ay2 = load_boxes(box_ptr, i, im, UPCAST)
    bx1, by1, bx2, by2 = load_boxes(box_ptr, j, jm, UPCAST)
    iou = pair_iou(ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None],
                   bx1[None, :], by1[None, :], bx2[None, :], by2[None, :]).to(OUT)
    over = (iou > tl.load(thr_ptr)) & (j[None, :] > i[:, None]) & jm[None, :] & im[:, None]
    if BATCHED:
        ci = tl.load(cls_ptr + i, mask=im, other=0)
        cj = tl.load(cls_ptr + j, mask=jm, other=0)
        over = over & (ci[:, None] == cj[None, :])
    # distinct powers of two: their sum is their OR (tl.sum is fast in the interpreter too)
    bits = over.to(tl.int64) << (j % 32).to(tl.int64)[None, :]
    words = tl.sum(tl.reshape(bits, (BR, WB, 32)), axis=2).to(tl.int32)
    offs = i[:, None].to(tl.int64) * NW + word[None, :]
    tl.store(mask_ptr + offs, words, mask=im[:, None] & (word < NW)[None, :])


@triton.jit
def _nms_sweep_kernel(mask_ptr, keep_ptr, N, NW, NWB: tl.constexpr):
    """Greedy sweep in score order, 32 boxes (one word of the suppressed set) at a time: the
    word is extracted from the register-resident set once per 32 boxes, then updated with
    scalar loads as boxes are kept."""
    offs = tl.arange(0, NWB)
    wm = offs < NW
    removed = tl.zeros([NWB], dtype=tl.int32)
    for w in range(NW):
        word = tl.sum(tl.where(offs == w, removed, 0), axis=0)
        for b in range(32):
            i = w * 32 + b
            if (i < N) & (((word >> b) & 1) == 0):
                tl.store(keep_ptr + i, 1)
                row_start = mask_ptr + tl.cast(i, tl.int64) * NW
                removed = removed | tl.load(row_start + offs, mask=wm, other=0)
                word = word | tl.load(row_start + w)


def suppression_mask(sorted_boxes: torch.Tensor, cls: torch.Tensor | None, iou_threshold: float) -> torch.Tensor:
    """int32 ``[N, ceil(N / 32)]``: bit j of row i is ``IoU(i, j) > iou_threshold`` for ``j > i``
    (and ``cls[i] == cls[j]`` when ``cls``, int64 ``[N]``, is given), for boxes in score order."""
    n = sorted_boxes.shape[0]
    n_words = triton.cdiv(n, 32)
    if large_blocks():
        wb = max(1, min(triton.next_power_of_2(n_words), 16))
        br = max(1, min(triton.next_power_of_2(n), 16384 // (wb * 32)))
    else:
        br, wb = 32, 2
    mask = torch.empty((n, n_words), dtype=torch.int32, device=sorted_boxes.device)
    dtype = sorted_boxes.dtype
    launch(_nms_mask_kernel, (triton.cdiv(n, br), triton.cdiv(n_words, wb)), sorted_boxes,
           sorted_boxes if cls is None else cls, scalars(dtype, sorted_boxes, iou_threshold), mask, n, n_words,
           OUT=TL_DTYPES[dtype], UPCAST=dtype in (torch.float16, torch.bfloat16), BATCHED=cls is not None,
           BR=br, WB=wb)
    return mask


def _nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None, iou_threshold: float) -> torch.Tensor:
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if n > MAX_BOXES:
        raise ValueError(f"nms: the triton backend takes at most {MAX_BOXES} boxes, got {n}")
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].contiguous()
    cls = idxs[order].to(torch.int64).contiguous() if idxs is not None else None
    mask = suppression_mask(sorted_boxes, cls, iou_threshold)
    n_words = mask.shape[1]
    keep = torch.zeros(n, dtype=torch.int32, device=boxes.device)
    nwb = max(16, triton.next_power_of_2(n_words))
    launch(_nms_sweep_kernel, (1,), mask, keep, n, n_words, NWB=nwb, num_warps=4 if nwb <= 1024 else 8)
    return order[torch.nonzero(keep).flatten()]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return _nms(boxes, scores, idxs, iou_threshold)
