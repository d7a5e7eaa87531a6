"""Parameter-free mask construction (paper eqs. 5, 7) fused with panoptic fusion."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import _dispatch, _validate
from .reference import SCORES


class PanopticSegments(NamedTuple):
    """Output of :func:`panoptic_from_dense` for one image.

    ``segment_map`` int32 ``[H, W]``: 0 is void, k > 0 is segment k, described by entry
    k - 1 of the other fields.  Thing segments come first (painting order: decreasing
    query score), then stuff segments in increasing class.
    """

    segment_map: Tensor  # int32 [H, W]
    classes: Tensor  # int64 [S] semantic class (contiguous train id)
    queries: Tensor  # int64 [S] query index, -1 for stuff
    scores: Tensor  # float32 [S] query score, 1.0 for stuff
    areas: Tensor  # int64 [S] pixels in segment_map

    def segments_info(self) -> list[dict]:
        """A list of dicts ``{id, category_id, isthing, score, area, query}``."""
        out = []
        for k, (c, q, s, a) in enumerate(
            zip(self.classes.tolist(), self.queries.tolist(), self.scores.tolist(), self.areas.tolist())
        ):
            out.append({"id": k + 1, "category_id": c, "isthing": q >= 0, "score": s, "area": a, "query": q})
        return out


def panoptic_from_dense(
    dense_boxes: Tensor,
    sem_probs: Tensor,
    query_boxes: Tensor,
    query_classes: Tensor,
    query_scores: Tensor,
    is_thing: Tensor | Sequence[bool],
    *,
    sigma: float = 0.3,
    score: str = "iou",
    score_threshold: float = 0.0,
    overlap_threshold: float = 0.5,
    stuff_area_limit: int = 0,
    backend: str | None = None,
) -> PanopticSegments:
    """Instance masks from box attention, then panoptic fusion, for one image.

    Mask of query j: ``score(B(x, y), B_j) * P_sem(x, y, c_j) > sigma`` (eqs. 5-7).  Fusion:
    queries by decreasing score; skip scores ``< score_threshold``, empty masks and masks of
    which a fraction ``> overlap_threshold`` is already taken; paint the free pixels.  Then
    each stuff class, in increasing order, takes the free pixels where it is the semantic
    argmax if there are ``>= stuff_area_limit`` of them; the rest is void.

    Args:
        dense_boxes: ``[4, H, W]`` xyxy box per pixel, e.g. from :func:`gather_levelness`.
        sem_probs: ``[C, H, W]`` semantic probabilities (softmax over C), same grid.
        query_boxes: ``[Q, 4]`` boxes after NMS (same coordinates as ``dense_boxes``).
        query_classes: int ``[Q]`` semantic class index of each query (a thing class).
        query_scores: ``[Q]`` detection confidence.
        is_thing: bool ``[C]`` (or a sequence), True for thing classes.
        sigma: mask threshold σ (0.3 in the paper; 0.4 with the "tri" score of the release).
        stuff_area_limit: minimum stuff segment area, in pixels of this grid.

    Returns:
        :class:`PanopticSegments`.  No ``[Q, H, W]`` float tensor is built by the fast backends.
    """
    query_classes, query_scores, is_thing, sigma, score_threshold, overlap_threshold, device = checked_fusion_args(
        "panoptic_from_dense", dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing,
        sigma, score, score_threshold, overlap_threshold, stuff_area_limit,
    )
    fn = _dispatch.select("panoptic_from_dense", backend, device)
    return PanopticSegments(
        *fn(
            dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing,
            sigma, score, score_threshold, overlap_threshold, stuff_area_limit,
        )
    )


def checked_fusion_args(
    op: str, dense_boxes: Tensor, sem_probs: Tensor, query_boxes: Tensor, query_classes: Tensor,
    query_scores: Tensor, is_thing: Tensor | Sequence[bool], sigma: float, score: str, score_threshold: float,
    overlap_threshold: float, stuff_area_limit: int,
) -> tuple:
    """Validate the arguments of :func:`panoptic_from_dense` (as ``op``) and return them canonical:
    ``(query_classes int64, query_scores in dense_boxes' dtype, is_thing on the device, sigma,
    score_threshold, overlap_threshold, device)``."""
    _validate.tensor(op, "dense_boxes", dense_boxes, shape=(4, None, None), floating=True)
    _, h, w = dense_boxes.shape
    _validate.tensor(op, "sem_probs", sem_probs, shape=(None, h, w), floating=True)
    _validate.boxes(op, "query_boxes", query_boxes)
    _validate.tensor(op, "query_classes", query_classes, ndim=1, integer=True)
    _validate.tensor(op, "query_scores", query_scores, ndim=1, floating=True)
    _validate.same_length(op, query_boxes=query_boxes, query_classes=query_classes, query_scores=query_scores)
    _validate.same_dtype(op, dense_boxes=dense_boxes, sem_probs=sem_probs, query_boxes=query_boxes)
    device = _validate.same_device(
        op, dense_boxes=dense_boxes, sem_probs=sem_probs, query_boxes=query_boxes,
        query_classes=query_classes, query_scores=query_scores,
    )
    if not isinstance(is_thing, Tensor):
        is_thing = torch.as_tensor(list(is_thing), dtype=torch.bool)
    _validate.tensor(op, "is_thing", is_thing, ndim=1, boolean=True)
    n_classes = sem_probs.shape[0]
    if is_thing.shape[0] != n_classes:
        raise ValueError(f"{op}: is_thing has {is_thing.shape[0]} entries but sem_probs has {n_classes} classes")
    if n_classes == 0:
        raise ValueError(f"{op}: sem_probs must have at least one class")
    is_thing = is_thing.to(device)
    sigma = _validate.number(op, "sigma", sigma, low=None)
    _validate.choice(op, "score", score, SCORES)
    score_threshold = _validate.number(op, "score_threshold", score_threshold, low=None)
    overlap_threshold = _validate.number(op, "overlap_threshold", overlap_threshold, low=0.0, high=1.0)
    if isinstance(stuff_area_limit, bool) or not isinstance(stuff_area_limit, int) or stuff_area_limit < 0:
        raise ValueError(f"{op}: stuff_area_limit must be a non-negative int, got {stuff_area_limit!r}")
    query_classes = query_classes.to(torch.int64)
    if not torch.compiler.is_compiling() and query_classes.numel():
        lo, hi = int(query_classes.min()), int(query_classes.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"{op}: query_classes must lie in [0, {n_classes}), got values in [{lo}, {hi}]")
    query_scores = query_scores.to(dense_boxes.dtype)
    return query_classes, query_scores, is_thing, sigma, score_threshold, overlap_threshold, device
