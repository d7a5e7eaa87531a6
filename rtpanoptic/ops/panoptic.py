"""Parameter-free mask construction (paper eqs. 5, 7) fused with panoptic fusion."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _dispatch, registry
from ._padded import count_on_host


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

    def padded(self, slots: int) -> PaddedPanopticSegments:
        """These segments in the fixed-size layout of :class:`PaddedPanopticSegments` with ``slots``
        (>= the segment count) slots; the inverse of :meth:`PaddedPanopticSegments.trimmed`."""
        count = self.classes.shape[0]
        pad = (0, slots - count)
        return PaddedPanopticSegments(
            self.segment_map, F.pad(self.classes, pad, value=-1), F.pad(self.queries, pad, value=-1),
            F.pad(self.scores, pad), F.pad(self.areas, pad),
            torch.full((), count, dtype=torch.int64, device=self.classes.device))


class PaddedPanopticSegments(NamedTuple):
    """Output of :func:`panoptic_from_dense` with ``padded=True``: fixed sizes, the count on the device.

    ``S = Q + C`` segment slots (the most segments there can be): slots ``0 .. count-1`` are the
    segments of :class:`PanopticSegments`, the others hold class -1, query -1, score 0, area 0.
    """

    segment_map: Tensor  # int32 [H, W], as PanopticSegments.segment_map
    classes: Tensor  # int64 [S]
    queries: Tensor  # int64 [S]
    scores: Tensor  # float32 [S]
    areas: Tensor  # int64 [S]
    count: Tensor  # int64 0-d: the number of segments

    def trimmed(self) -> PanopticSegments:
        """The segments alone (reads ``count`` on the host: one synchronisation on a GPU)."""
        k = count_on_host(self.count, self.classes.shape[0])
        return PanopticSegments(self.segment_map, self.classes[:k], self.queries[:k], self.scores[:k], self.areas[:k])


@overload
def panoptic_from_dense(dense_boxes: Tensor, sem_probs: Tensor, query_boxes: Tensor, query_classes: Tensor,
                        query_scores: Tensor, is_thing: Tensor | Sequence[bool], *, sigma: float = ...,
                        score: str = ..., score_threshold: float = ..., overlap_threshold: float = ...,
                        stuff_area_limit: int = ..., num_queries: Tensor | None = ...,
                        padded: Literal[False] = ..., backend: str | None = ...) -> PanopticSegments: ...
@overload
def panoptic_from_dense(dense_boxes: Tensor, sem_probs: Tensor, query_boxes: Tensor, query_classes: Tensor,
                        query_scores: Tensor, is_thing: Tensor | Sequence[bool], *, sigma: float = ...,
                        score: str = ..., score_threshold: float = ..., overlap_threshold: float = ...,
                        stuff_area_limit: int = ..., num_queries: Tensor | None = ..., padded: Literal[True],
                        backend: str | None = ...) -> PaddedPanopticSegments: ...


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
    num_queries: Tensor | None = None,
    padded: bool = False,
    backend: str | None = None,
) -> PanopticSegments | PaddedPanopticSegments:
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
        num_queries: int64 0-d tensor on the device (e.g. ``select_queries(..., padded=True)``'s
            count): queries ``j >= num_queries`` are absent, as if only the first ``num_queries``
            had been passed (their boxes, classes and scores may hold anything).  None: all Q.
        padded: return the fixed-size :class:`PaddedPanopticSegments` (``Q + C`` segment slots
            and the count, computed on the device) instead of :class:`PanopticSegments`.

    Returns:
        :class:`PanopticSegments`; the default form reads the segment count on the host (one
        synchronisation on a GPU).  With ``padded=True``, :class:`PaddedPanopticSegments`: on a
        GPU (cuda, triton) nothing waits for the device, so the call can be captured in a CUDA
        graph.  No ``[Q, H, W]`` float tensor is built by the fast backends.

    Checks that read tensor values (``query_classes`` in ``[0, C)``, ``num_queries`` in
    ``[0, Q]``: :class:`ValueError`) run where they cost no synchronisation: on CPU tensors,
    and on a GPU in the default form, which synchronises anyway; not in the padded form on a GPU
    nor while a CUDA stream is capturing.  There the kernels clamp ``num_queries`` to ``[0, Q]``
    and give a present query with a class outside ``[0, C)`` an empty mask.
    """
    args = registry.validate(
        "panoptic_from_dense", dense_boxes, sem_probs, query_boxes, query_classes, query_scores, is_thing,
        sigma=sigma, score=score, score_threshold=score_threshold, overlap_threshold=overlap_threshold,
        stuff_area_limit=stuff_area_limit, num_queries=num_queries, padded=padded,
    )
    out = PaddedPanopticSegments(*_dispatch.select("panoptic_from_dense", backend, dense_boxes.device)(*args))
    return out if padded else out.trimmed()
