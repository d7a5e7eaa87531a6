"""``select_queries``: the class-aware and class-agnostic suppression masks, then one sweep.

1. ``nms.suppression_mask`` twice over the score-sorted boxes: the class mask (IoU >
   ``nms_thresh`` and equal label) and, when the class-agnostic pass is on, the global mask
   (IoU > ``global_nms_thresh``), both rounded exactly like the reference's ``box_iou``.
2. ``_select_sweep_kernel`` (one program) visits the boxes in score order with two suppressed
   sets in registers: C's (every class-NMS survivor ORs its class row, also when the global pass
   rejects it, as in the three-step definition) and G's (every kept query ORs its global row);
   it stops once ``top_n`` queries are kept.

Everything stays on the device: the result is the fixed-size ``(keep [min(top_n, N)] padded
with -1, count 0-d)`` pair, so nothing waits for the GPU and the op can be captured in a CUDA
graph.  The masks take ``N * ceil(N / 32) * 4`` bytes each; N is limited to ``nms.MAX_BOXES``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch
from .nms import MAX_BOXES, suppression_mask


@triton.jit
def _select_sweep_kernel(class_ptr, global_ptr, out_ptr, count_ptr, N, NW, TOP_N, GLOBAL: tl.constexpr,
                         NWB: tl.constexpr):
    offs = tl.arange(0, NWB)
    wm = offs < NW
    class_removed = tl.zeros([NWB], dtype=tl.int32)
    global_removed = tl.zeros([NWB], dtype=tl.int32)
    count = 0
    w = 0
    while (w < NW) & (count < TOP_N):
        cword = tl.sum(tl.where(offs == w, class_removed, 0), axis=0)
        gword = tl.sum(tl.where(offs == w, global_removed, 0), axis=0)
        for b in range(32):
            i = w * 32 + b
            if (i < N) & (count < TOP_N) & (((cword >> b) & 1) == 0):  # i joins C
                row = tl.cast(i, tl.int64) * NW
                class_removed = class_removed | tl.load(class_ptr + row + offs, mask=wm, other=0)
                cword = cword | tl.load(class_ptr + row + w)
                if GLOBAL:
                    if ((gword >> b) & 1) == 0:  # i joins G
                        global_removed = global_removed | tl.load(global_ptr + row + offs, mask=wm, other=0)
                        gword = gword | tl.load(global_ptr + row + w)
                        tl.store(out_ptr + count, i)
                        count += 1
                else:
                    tl.store(out_ptr + count, i)
                    count += 1
        w += 1
    tl.store(count_ptr, count)


def select_queries(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms_thresh: float,
                   global_nms_thresh: float, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = boxes.shape[0]
    kept = min(top_n, n)
    positions = torch.full((kept,), -1, dtype=torch.int64, device=boxes.device)
    count = torch.zeros((), dtype=torch.int64, device=boxes.device)
    if n == 0 or kept == 0:
        return positions, count
    if n > MAX_BOXES:
        raise ValueError(f"select_queries: the triton backend takes at most {MAX_BOXES} boxes, got {n}")
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].contiguous()
    class_mask = suppression_mask(sorted_boxes, labels[order].contiguous(), nms_thresh)
    use_global = global_nms_thresh >= 0
    global_mask = suppression_mask(sorted_boxes, None, global_nms_thresh) if use_global else class_mask
    n_words = class_mask.shape[1]
    nwb = max(16, triton.next_power_of_2(n_words))
    launch(_select_sweep_kernel, (1,), class_mask, global_mask, positions, count, n, n_words, kept,
           GLOBAL=use_global, NWB=nwb, num_warps=4 if nwb <= 1024 else 8)
    # score-order positions -> input indices, on the device (-1 stays -1)
    keep = torch.where(positions >= 0, order[positions.clamp(min=0)], positions)
    return keep, count
