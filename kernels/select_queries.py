"""``select_queries``: class-aware NMS, optional class-agnostic NMS and the top N as one greedy pass
in the parallel form of ``nms.suppress``: one launch of many programs writes the class mask (IoU >
``nms_thresh`` and equal label) and the global mask (IoU > ``global_nms_thresh``) from one IoU per
pair, then one program scans both masks' words with the two suppressed sets of
csrc/cpu/select_queries_kernel.cpp's sweep, stopping once ``top_n`` queries are kept.

Everything stays on the device: the result is the fixed-size ``(keep [min(top_n, N)] padded
with -1, count 0-d)`` pair, so nothing waits for the GPU and the op can be captured in a CUDA
graph.  The masks take ``N * ceil(N / 32) * 4`` bytes each; N is limited to ``nms.MAX_BOXES``.
"""
from __future__ import annotations

import torch

from .nms import MAX_BOXES, suppress


def select_queries(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms_thresh: float,
                   global_nms_thresh: float, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = boxes.shape[0]
    if n == 0 or top_n == 0:
        return (torch.full((min(top_n, n),), -1, dtype=torch.int64, device=boxes.device),
                torch.zeros((), dtype=torch.int64, device=boxes.device))
    if n > MAX_BOXES:
        raise ValueError(f"select_queries: the triton backend takes at most {MAX_BOXES} boxes, got {n}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return suppress(boxes, order, labels, nms_thresh, global_nms_thresh, top_n)
