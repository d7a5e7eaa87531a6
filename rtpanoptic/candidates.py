"""Candidate selection on dense detections (paper eq. 4), shared by inference, export and the mask loss.

Per FPN level and image: class probabilities ``p = sigmoid(class logits)``; a location and class
is a candidate when ``p > pre_nms_thresh`` (and, given the image's size, its cell centre lies
inside the image, not in the bottom/right padding); its score is ``p * sigmoid(centerness)``; the
``pre_nms_top_n`` best candidates of the level are kept, with the level's decoded box at their
location (boxes at cell centres, :func:`rtpanoptic.ops.decode_boxes`).  The levels' candidates are
concatenated in level order, each level's in decreasing score.  NMS comes after (the callers').
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .ops.grid import cells_before

# Score of a padded-out slot in ``fixed_count`` mode: below every real score (those lie in [0, 1]).
NO_CANDIDATE = -1.0


class Candidates(NamedTuple):
    """Candidates of one image, all levels concatenated."""

    boxes: Tensor  # [N, 4] xyxy input pixels (the decoded boxes' dtype; differentiable through them)
    scores: Tensor  # float32 [N] p * sigmoid(centerness); NO_CANDIDATE for padded slots
    labels: Tensor  # int64 [N] thing index 0..K-1


def select_candidates(
    boxes: Sequence[Tensor],
    class_logits: Sequence[Tensor],
    centerness: Sequence[Tensor],
    strides: Sequence[int],
    pre_nms_thresh: float,
    pre_nms_top_n: int,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    fixed_count: bool = False,
) -> list[Candidates]:
    """Eq. 4's candidates of every image of a batch.

    Args:
        boxes: per level the decoded boxes ``[B, 4, h, w]`` (xyxy pixels, :func:`ops.decode_boxes`).
        class_logits: per level ``[B, K, h, w]``; centerness: per level ``[B, 1, h, w]``
            (both computed on in float32).
        strides: the levels' strides (pixels).
        pre_nms_thresh: a candidate needs ``p > pre_nms_thresh``.
        pre_nms_top_n: at most this many candidates per level and image.
        image_sizes: ``(H, W)`` of each image inside the padded batch; locations whose cell centre
            lies outside are dropped.  None: every location counts (no padding).
        fixed_count: keep exactly ``min(pre_nms_top_n, K*h*w)`` slots per level, those that are no
            candidate scored :data:`NO_CANDIDATE` (shapes that do not depend on the data, for
            ``torch.export``); otherwise only the candidates.

    Returns one :class:`Candidates` per image.
    """
    n_images = class_logits[0].shape[0]
    per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(n_images)]
    for level_boxes, logits, ctr, stride in zip(boxes, class_logits, centerness, strides):
        prob = logits.float().sigmoid()
        passing = prob > pre_nms_thresh
        # [B, K, h, w]: the score where p passes, NO_CANDIDATE elsewhere (the padding: below)
        score = torch.where(passing, prob * ctr.float().sigmoid(), NO_CANDIDATE)
        hl, wl = prob.shape[2], prob.shape[3]
        hw = hl * wl
        for b in range(n_images):
            # the locations inside the image: the first rows and columns (cell centres increase)
            rows, cols = (hl, wl) if image_sizes is None else (
                cells_before(image_sizes[b][0], hl, stride), cells_before(image_sizes[b][1], wl, stride))
            if rows < hl:
                score[b, :, rows:] = NO_CANDIDATE
            if cols < wl:
                score[b, :, :, cols:] = NO_CANDIDATE
            s = score[b].reshape(-1)
            n = min(pre_nms_top_n, s.numel()) if fixed_count else min(int(passing[b, :, :rows, :cols].sum()),
                                                                        pre_nms_top_n)
            top, idx = s.topk(n)
            per_image[b].append((level_boxes[b].reshape(4, hw)[:, idx % hw].t(), top, idx // hw))
    return [Candidates(*(torch.cat(parts) for parts in zip(*levels))) for levels in per_image]
