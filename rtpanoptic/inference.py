"""Inference: images in, panoptic segmentation out (paper §3).

Pipeline of :class:`Predictor` (every box/mask stage goes through :mod:`rtpanoptic.ops`, so
``backend=`` applies end to end):

1. group the images by their size padded to a multiple of 128, pad each group (zeros,
   bottom/right), normalise, run the network once per group: the network sees every image
   exactly as it would alone, so a result never depends on the other images of a batch;
2. per level: ``p = sigmoid(class logits)``, candidates ``p > pre_nms_thresh`` at locations
   inside the image (not in the padding), score
   ``p * sigmoid(centerness)``, the ``pre_nms_top_n`` best per level, boxes from
   :func:`ops.decode_boxes` clipped to the image;
3. class-aware NMS (:func:`ops.batched_nms`), optionally class-agnostic NMS
   (:func:`ops.nms`, the release's 0.97), the ``post_nms_top_n`` best: the queries B_query;
4. dense boxes B(x, y) from :func:`ops.gather_levelness` (eq. 14), semantic probabilities on
   the same grid, masks and fusion by :func:`ops.panoptic_from_dense` (eqs. 5-7) on the
   image's part of the grid;
5. the segment-id map (not the Q float masks) is upsampled (nearest) to the input size.

With the ``tri-cityscapes-r50`` preset the options follow the authors' release (threshold 0.06
on p before the centerness product, 1000 per level, class NMS 0.6 then class-agnostic 0.97,
top 100, "tri" score, sigma 0.4, semantic logits resized to the stride-4 grid before the
softmax).  Known differences from the released code: its masks are ``soft >= 0.4`` after a x4
bilinear upsampling of the soft masks, here by default (``mask_mode="grid"``) ``soft > sigma`` on
the stride-4 grid and the id map is upsampled — ``mask_mode="release"`` reproduces the release's
masks exactly (:func:`ops.panoptic_from_dense_release`, mask boxes clipped to ``[0, W-1] x [0, H-1]``);
it has no panoptic fusion (masks may overlap), here masks are fused (overlap 0.5);
boxes are clipped to ``[0, W] x [0, H]`` (no -1); the top 100 are taken exactly (no kthvalue
ties); candidates in the padding are dropped.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .data.description import DatasetDescription
from .execution import NetworkRunner
from .model.config import InferenceConfig, validate_config
from .model.outputs import HeadOutputs
from .stream import StageTimer, stream_results

# The rtpanoptic.ops used by the pipeline (``backend=`` applies to all of them).
PIPELINE_OPS = ("decode_boxes", "batched_nms", "nms", "gather_levelness", "panoptic_from_dense")


@dataclass
class Detections:
    """Queries of one image (after NMS), in decreasing score order."""

    boxes: Tensor  # float32 [Q, 4] xyxy input pixels
    scores: Tensor  # float32 [Q]
    labels: Tensor  # int64 [Q] thing index 0..K-1


@dataclass
class PanopticResult:
    """Panoptic segmentation of one image, at its input resolution ``[H, W]`` (CPU tensors).

    ``panoptic`` int32 ``[H, W]``: 0 is void, k > 0 is the segment ``segments_info[k - 1]``
    (``{"id", "category_id" (dataset id), "train_id", "isthing", "score", "area", "bbox"
    [x, y, w, h]}``).  ``semantic`` int64 ``[H, W]``: semantic train ids (argmax of the
    upsampled logits).  ``detections``: every query, also those that lost the fusion.
    """

    panoptic: Tensor
    segments_info: list[dict]
    semantic: Tensor
    detections: Detections
    description: DatasetDescription = field(repr=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.panoptic.shape)

    @property
    def thing_segments(self) -> list[dict]:
        return [s for s in self.segments_info if s["isthing"]]

    @property
    def instance_masks(self) -> Tensor:
        """bool ``[N, H, W]``: the thing segments (non-overlapping), in ``thing_segments`` order."""
        ids = torch.tensor([s["id"] for s in self.thing_segments], dtype=self.panoptic.dtype)
        return self.panoptic[None] == ids[:, None, None]

    @property
    def category_map(self) -> Tensor:
        """int64 ``[H, W]`` dataset category id per pixel, -1 where void."""
        lut = torch.tensor([-1] + [s["category_id"] for s in self.segments_info], dtype=torch.int64)
        return lut[self.panoptic.long()]

    @property
    def instance_map(self) -> Tensor:
        """int64 ``[H, W]``: k for the k-th thing segment (1-based), 0 for stuff and void."""
        lut = torch.zeros(len(self.segments_info) + 1, dtype=torch.int64)
        for k, s in enumerate(self.thing_segments):
            lut[s["id"]] = k + 1
        return lut[self.panoptic.long()]


def to_image_tensors(images) -> list[Tensor]:
    """uint8 RGB images as HWC numpy arrays, PIL images, ``[3, H, W]`` / ``[B, 3, H, W]`` tensors,
    ``[B, H, W, 3]`` arrays, or a list of those -> list of ``[3, H, W]`` uint8 tensors."""
    if isinstance(images, (list, tuple)):
        out: list[Tensor] = []
        for i, im in enumerate(images):
            converted = to_image_tensors(im)
            if len(converted) != 1 and not isinstance(im, (list, tuple)):
                raise ValueError(f"images[{i}]: expected one image, got a batch of {len(converted)}")
            out.extend(converted)
        return out
    if hasattr(images, "convert") and hasattr(images, "size"):  # PIL
        images = np.array(images.convert("RGB"))
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"images: numpy images must be uint8 RGB, got {images.dtype}")
        if images.ndim == 3 and images.shape[2] == 3:
            return [torch.from_numpy(np.ascontiguousarray(images)).permute(2, 0, 1)]
        if images.ndim == 4 and images.shape[3] == 3:
            return [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
        raise ValueError(f"images: numpy images must be [H, W, 3] or [B, H, W, 3], got {images.shape}")
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"images: tensors must be uint8 RGB, got {images.dtype}")
        if images.dim() == 3 and images.shape[0] == 3:
            return [images]
        if images.dim() == 4 and images.shape[1] == 3:
            return list(images.unbind(0))
        raise ValueError(f"images: tensors must be [3, H, W] or [B, 3, H, W], got {list(images.shape)}")
    raise TypeError(f"images: expected numpy arrays, PIL images or uint8 tensors, got {type(images).__name__}")


def padded_size(height: int, width: int, divisor: int = 128) -> tuple[int, int]:
    """``(H, W)`` rounded up to multiples of ``divisor``: the size the network runs an image at."""
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def pad_batch(images: Sequence[Tensor], divisor: int = 128) -> Tensor:
    """Zero-pad ``[3, H_i, W_i]`` images (bottom/right) to a common size, a multiple of ``divisor``."""
    hp, wp = padded_size(max(im.shape[1] for im in images), max(im.shape[2] for im in images), divisor)
    out = images[0].new_zeros((len(images), 3, hp, wp))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out


class Predictor:
    """Run a :class:`~rtpanoptic.model.PanopticNet` on images and return :class:`PanopticResult` s.

    Args:
        model: the network (put in eval mode here).
        backend: ``rtpanoptic.ops`` backend for every post-processing op (None: fastest).
        precision: ``"fp32"`` | ``"bf16"`` | ``"fp16"``: autocast dtype of the network; the
            post-processing always runs in fp32 (:mod:`rtpanoptic.execution`).
        channels_last: NHWC network (weights converted in place); None: where measured faster
            (CPU; CUDA with bf16 / fp16).  Not bit-equal to NCHW (float rounding).
        compile: ``torch.compile`` the network (True, or a dict of its keyword arguments).
        **options: fields of :class:`~rtpanoptic.model.config.InferenceConfig` overriding the
            model's defaults (``model.cfg.inference``): ``sigma``, ``score``,
            ``pre_nms_thresh``, ``pre_nms_top_n``, ``nms_thresh``, ``global_nms_thresh``,
            ``post_nms_top_n``, ``score_threshold``, ``overlap_threshold``, ``stuff_area_limit``.
    """

    def __init__(self, model, backend: str | None = None, precision: str = "fp32",
                 channels_last: bool | None = None, compile: bool | dict = False, **options):
        if backend is not None and backend not in ops.BACKENDS:
            raise ValueError(f"Predictor: backend must be one of {ops.BACKENDS} or None, got {backend!r}")
        base = getattr(getattr(model, "cfg", None), "inference", None)
        if not isinstance(base, InferenceConfig):
            raise TypeError("Predictor: model must be a PanopticNet (with cfg.inference)")
        names = {f.name for f in dataclasses.fields(InferenceConfig)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"Predictor: unknown option(s) {sorted(unknown)}; valid: {sorted(names)}")
        self.options = dataclasses.replace(base, **options)
        validate_config(dataclasses.replace(model.cfg, inference=self.options))
        self.model = model.eval()
        self.backend = backend
        if backend is not None:
            avail = ops.available_backends(self.device)
            missing = [op for op in PIPELINE_OPS if backend not in avail[op]]
            if missing:
                raise ValueError(
                    f"Predictor: backend {backend!r} cannot run {missing} on {self.device.type} here "
                    f"(see rtpanoptic.ops.available_backends()); use backend=None for the fastest per op"
                )
        self.description: DatasetDescription = model.description
        self._thing_train_ids = torch.tensor(self.description.thing_train_ids, dtype=torch.int64)
        self._is_thing = torch.tensor(self.description.is_thing, dtype=torch.bool)
        self.network = NetworkRunner(self.model, precision, channels_last, compile)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------- stages
    def preprocess(self, images) -> tuple[Tensor, list[tuple[int, int]]]:
        """-> (normalised padded batch ``[B, 3, Hp, Wp]`` on the model's device, input sizes)."""
        tensors = to_image_tensors(images)
        if not tensors:
            raise ValueError("images: got an empty batch")
        sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
        if min(min(s) for s in sizes) == 0:
            raise ValueError(f"images: every image needs a positive size, got {sizes}")
        batch = pad_batch(tensors, self.model.size_divisibility).to(self.device)
        return self.model.normalize(batch), sizes

    @torch.no_grad()
    def __call__(self, images) -> list[PanopticResult]:
        """One result per image, in input order.  Images of different padded sizes run in separate
        forward passes (the padding of a larger neighbour would change what the network sees
        near an image's border)."""
        tensors = to_image_tensors(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(padded_size(t.shape[1], t.shape[2], self.model.size_divisibility), []).append(i)
        results: list[PanopticResult | None] = [None] * len(tensors)
        for members in groups.values() or [[]]:
            batch, sizes = self.preprocess([tensors[i] for i in members])  # also raises for an empty batch
            for i, result in zip(members, self.postprocess(self.network(batch), sizes)):
                results[i] = result
        return results

    def stream(self, frames: Iterable, batch_size: int = 1, cuda_graph: bool = False,
               timer: StageTimer | None = None) -> Iterator[PanopticResult]:
        """Results of ``frames`` (any iterable of images, one per item: HWC uint8 arrays, PIL images,
        ``[3, H, W]`` uint8 tensors), lazily and in order, up to ``batch_size`` frames of one
        padded size per forward pass.

        On CUDA the next batch is read and copied (pinned memory, ``non_blocking``, a copy stream)
        while the network runs; ``cuda_graph`` replays the network from a CUDA graph captured per
        input size (frames of one size: one graph).  ``timer`` (:class:`~rtpanoptic.stream.StageTimer`)
        collects per-frame stage times: decode (taking a frame from ``frames``), preprocess,
        network, postprocess.  See :mod:`rtpanoptic.stream`.
        """
        return stream_results(self, frames, batch_size=batch_size, cuda_graph=cuda_graph, timer=timer)

    @torch.no_grad()
    def detect(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Per-level thresholds and top-k, decoding, NMS: the queries of every image."""
        o, be = self.options, self.backend
        per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in sizes]
        for stride, logits, ctr, offsets in zip(
            self.model.strides, outputs.class_logits, outputs.centerness, outputs.box_offsets
        ):
            boxes = ops.decode_boxes(offsets, stride, backend=be)  # [B, 4, h, w]
            prob = logits.sigmoid()
            score = prob * ctr.sigmoid()
            hl, wl = prob.shape[2], prob.shape[3]
            hw = hl * wl
            centres_y = torch.arange(hl, device=prob.device) * stride + stride // 2
            centres_x = torch.arange(wl, device=prob.device) * stride + stride // 2
            for b, (h, w) in enumerate(sizes):
                # candidates: p above the threshold at a location inside the image (not the padding)
                inside = (centres_y[:, None] < h) & (centres_x[None, :] < w)
                _p, s = prob[b].flatten(), score[b].flatten()
                passing = ((prob[b] > o.pre_nms_thresh) & inside).flatten()
                s = torch.where(passing, s, torch.full_like(s, -1.0))
                n = min(int(passing.sum()), o.pre_nms_top_n)
                top, idx = s.topk(n)
                loc = idx % hw
                per_image[b].append((boxes[b].reshape(4, hw)[:, loc].t(), top, idx // hw))
        results = []
        for b, (h, w) in enumerate(sizes):
            boxes = torch.cat([t[0] for t in per_image[b]])
            scores = torch.cat([t[1] for t in per_image[b]])
            labels = torch.cat([t[2] for t in per_image[b]])
            boxes, keep = nms_queries(boxes, scores, labels, (h, w), o, be)
            results.append(Detections(boxes[keep], scores[keep], labels[keep]))
        return results

    @torch.no_grad()
    def postprocess(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> list[PanopticResult]:
        """Network outputs of a padded batch + the input sizes -> one result per image."""
        o, be = self.options, self.backend
        detections = self.detect(outputs, sizes)
        ls = self.model.levelness_stride
        dense, _ = ops.gather_levelness(list(outputs.box_offsets), outputs.levelness, out_stride=ls, backend=be)
        sem_logits = outputs.semantic
        sem_probs = semantic_probs_on(sem_logits, dense.shape[-2:])
        is_thing = self._is_thing.to(dense.device)
        thing_train_ids = self._thing_train_ids.to(dense.device)
        results = []
        for b, (h, w) in enumerate(sizes):
            hv, wv = math.ceil(h / ls), math.ceil(w / ls)
            det = detections[b]
            if o.mask_mode == "release":  # one grid cell of padding: the bilinear upsampling reads it
                hr, wr = min(hv + 1, dense.shape[-2]), min(wv + 1, dense.shape[-1])
                seg = ops.panoptic_from_dense_release(
                    dense[b, :, :hr, :wr].contiguous(), sem_probs[b, :, :hr, :wr].contiguous(),
                    torch.minimum(det.boxes, det.boxes.new_tensor([w - 1, h - 1, w - 1, h - 1])),
                    thing_train_ids[det.labels], det.scores, is_thing, stride=ls, size=(h, w),
                    sigma=o.sigma, score=o.score, score_threshold=o.score_threshold,
                    overlap_threshold=o.overlap_threshold, stuff_area_limit=o.stuff_area_limit, backend=be,
                )
                panoptic = seg.segment_map
            else:
                seg = ops.panoptic_from_dense(
                    dense[b, :, :hv, :wv].contiguous(), sem_probs[b, :, :hv, :wv].contiguous(),
                    det.boxes, thing_train_ids[det.labels], det.scores, is_thing,
                    sigma=o.sigma, score=o.score, score_threshold=o.score_threshold,
                    overlap_threshold=o.overlap_threshold, stuff_area_limit=o.stuff_area_limit // (ls * ls),
                    backend=be,
                )
                panoptic = seg.segment_map.repeat_interleave(ls, 0).repeat_interleave(ls, 1)[:h, :w]
            semantic = upsample_argmax(sem_logits[b], self.model.semantic_stride, (h, w))
            results.append(self._result(panoptic, seg, semantic, det))
        return results

    def _result(self, panoptic: Tensor, seg: ops.PanopticSegments, semantic: Tensor, det: Detections):
        panoptic = panoptic.cpu()
        n = int(seg.classes.numel())
        areas, bboxes = segment_areas_and_boxes(panoptic, n)
        infos = []
        for k, (c, q, s) in enumerate(zip(seg.classes.tolist(), seg.queries.tolist(), seg.scores.tolist())):
            infos.append({
                "id": k + 1,
                "category_id": self.description.categories[c].id,
                "train_id": c,
                "isthing": q >= 0,
                "score": float(s),
                "area": int(areas[k]),
                "bbox": bboxes[k],
            })
        det = Detections(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
        return PanopticResult(panoptic, infos, semantic.cpu(), det, self.description)


def nms_queries(boxes: Tensor, scores: Tensor, labels: Tensor, size: tuple[int, int], options, backend=None):
    """Candidates of one image -> ``(boxes clipped to [0, W] x [0, H], kept indices)``: class-aware NMS,
    then the optional class-agnostic NMS, then the ``post_nms_top_n`` best (the queries)."""
    h, w = size
    boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
    keep = ops.batched_nms(boxes, scores, labels, options.nms_thresh, backend=backend)
    if options.global_nms_thresh is not None:
        keep = keep[ops.nms(boxes[keep], scores[keep], options.global_nms_thresh, backend=backend)]
    return boxes, keep[: options.post_nms_top_n]


def semantic_probs_on(logits: Tensor, grid) -> Tensor:
    """Semantic probabilities ``[B, C, *grid]``: softmax of the logits, bilinearly resampled to the
    levelness grid first when the semantic stride differs (the TRI preset's stride 8)."""
    if logits.shape[-2:] != grid:
        logits = F.interpolate(logits, size=grid, mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)


def upsample_argmax(logits: Tensor, scale: int, size: tuple[int, int], band: int = 32) -> Tensor:
    """``argmax_c`` of ``logits [C, h, w]`` bilinearly upsampled by ``scale`` (align_corners=False),
    cropped to ``size``; computed in bands of ``band`` input rows, so no ``[C, H, W]`` full-size
    tensor is built (133 COCO classes at 800x1333 would be 0.5 GB).  Equal to the one-shot result:
    each band carries one input row of context on either side."""
    _c, h, w = logits.shape
    out_h, out_w = size
    rows = []
    for a in range(0, math.ceil(out_h / scale), band):
        b = min(a + band, h)
        lo, hi = max(a - 1, 0), min(b + 1, h)
        up = F.interpolate(logits[None, :, lo:hi], size=((hi - lo) * scale, w * scale), mode="bilinear",
                           align_corners=False)[0]
        start = (a - lo) * scale
        rows.append(up[:, start : start + (b - a) * scale, :out_w].argmax(dim=0))
    return torch.cat(rows, dim=0)[:out_h]


def segment_areas_and_boxes(panoptic: Tensor, n: int) -> tuple[list[int], list[list[int]]]:
    """Pixel count and COCO ``[x, y, w, h]`` box of segments 1..n of an id map, in O(HW)."""
    flat = panoptic.reshape(-1).long()
    areas = torch.bincount(flat, minlength=n + 1)[1:]
    h, w = panoptic.shape
    ys = torch.arange(h).repeat_interleave(w)
    xs = torch.arange(w).repeat(h)
    big = torch.full((n + 1,), max(h, w), dtype=torch.int64)
    x0 = big.scatter_reduce(0, flat, xs, "amin")[1:]
    y0 = big.scatter_reduce(0, flat, ys, "amin")[1:]
    x1 = torch.full((n + 1,), -1, dtype=torch.int64).scatter_reduce(0, flat, xs, "amax")[1:]
    y1 = torch.full((n + 1,), -1, dtype=torch.int64).scatter_reduce(0, flat, ys, "amax")[1:]
    boxes = [
        [int(a), int(b), int(c - a + 1), int(d - b + 1)] if area > 0 else [0, 0, 0, 0]
        for a, b, c, d, area in zip(x0, y0, x1, y1, areas)
    ]
    return areas.tolist(), boxes
