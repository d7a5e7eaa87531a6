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
5. the segment-id map (not the Q float masks) is upsampled (nearest) to the input size; segment
   areas and boxes follow from the grid; the semantic map is :func:`ops.upsample_argmax` of the
   semantic logits (no ``C x H x W`` or ``Q x H x W`` tensor at input resolution).

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
from .candidates import select_candidates
from .data.description import DatasetDescription
from .execution import NetworkRunner
from .model.config import InferenceConfig, validate_config
from .model.outputs import HeadOutputs
from .stream import StageTimer, stream_results

# The rtpanoptic.ops used by the pipeline (``backend=`` applies to all of them).
PIPELINE_OPS = (
    "decode_boxes", "batched_nms", "nms", "gather_levelness", "panoptic_from_dense", "upsample_argmax",
)


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
        """Per-level thresholds and top-k (:func:`~rtpanoptic.candidates.select_candidates`, candidates
        in the padding dropped), decoding, NMS: the queries of every image."""
        o, be = self.options, self.backend
        boxes = [ops.decode_boxes(offsets, stride, backend=be)
                 for offsets, stride in zip(outputs.box_offsets, self.model.strides)]
        candidates = select_candidates(boxes, outputs.class_logits, outputs.centerness, self.model.strides,
                                       o.pre_nms_thresh, o.pre_nms_top_n, image_sizes=sizes)
        results = []
        for (boxes, scores, labels), size in zip(candidates, sizes):
            boxes, keep = nms_queries(boxes, scores, labels, size, o, be)
            results.append(Detections(boxes[keep], scores[keep], labels[keep]))
        return results

    @torch.no_grad()
    def postprocess(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> list[PanopticResult]:
        """Network outputs of a padded batch + the input sizes -> one result per image.

        Nothing of size ``C x H x W`` or ``Q x H x W`` at input resolution is built: masks and
        fusion run on the levelness grid, the semantic map comes from :func:`ops.upsample_argmax`,
        the segment areas and boxes from the grid (:func:`segment_areas_and_boxes`)."""
        be = self.backend
        detections = self.detect(outputs, sizes)
        ls, ss = self.model.levelness_stride, self.model.semantic_stride
        dense, _ = ops.gather_levelness(list(outputs.box_offsets), outputs.levelness, out_stride=ls, backend=be)
        sem_logits = outputs.semantic
        sem_probs = semantic_probs_on(sem_logits, dense.shape[-2:])
        semantic_size = (sem_logits.shape[2] * ss, sem_logits.shape[3] * ss)
        results = []
        for b, (h, w) in enumerate(sizes):
            seg, map_stride = self._fuse(dense[b], sem_probs[b], detections[b], (h, w))
            semantic = ops.upsample_argmax(sem_logits[b : b + 1], semantic_size, (h, w), backend=be)[0]
            results.append(self._result(seg, map_stride, (h, w), semantic, detections[b]))
        return results

    def _fuse(self, dense: Tensor, sem_probs: Tensor, det: Detections,
              size: tuple[int, int]) -> tuple[ops.PanopticSegments, int]:
        """Masks and panoptic fusion of one image from its padded levelness grid ``dense [4, h, w]``,
        ``sem_probs [C, h, w]`` -> the segments and the stride of their segment map (the grid's for
        ``mask_mode="grid"``; 1 for ``"release"``, whose map is at input resolution)."""
        o, ls = self.options, self.model.levelness_stride
        h, w = size
        hv, wv = math.ceil(h / ls), math.ceil(w / ls)
        is_thing = self._is_thing.to(dense.device)
        classes = self._thing_train_ids.to(dense.device)[det.labels]
        common = dict(sigma=o.sigma, score=o.score, score_threshold=o.score_threshold,
                      overlap_threshold=o.overlap_threshold, backend=self.backend)
        if o.mask_mode == "release":  # one grid cell of padding: the bilinear upsampling reads it
            hr, wr = min(hv + 1, dense.shape[-2]), min(wv + 1, dense.shape[-1])
            boxes = torch.minimum(det.boxes, det.boxes.new_tensor([w - 1, h - 1, w - 1, h - 1]))
            seg = ops.panoptic_from_dense_release(
                dense[:, :hr, :wr].contiguous(), sem_probs[:, :hr, :wr].contiguous(), boxes, classes, det.scores,
                is_thing, stride=ls, size=(h, w), stuff_area_limit=o.stuff_area_limit, **common)
            return seg, 1
        seg = ops.panoptic_from_dense(
            dense[:, :hv, :wv].contiguous(), sem_probs[:, :hv, :wv].contiguous(), det.boxes, classes, det.scores,
            is_thing, stuff_area_limit=o.stuff_area_limit // (ls * ls), **common)
        return seg, ls

    def _result(self, seg: ops.PanopticSegments, ls: int, size: tuple[int, int], semantic: Tensor,
                det: Detections):
        grid = seg.segment_map.cpu()
        n = int(seg.classes.numel())
        areas, bboxes = segment_areas_and_boxes(grid, n, ls, size)
        infos = []
        for k, (c, q, s) in enumerate(zip(seg.classes.tolist(), seg.queries.tolist(), seg.scores.tolist())):
            infos.append({
                "id": k + 1,
                "category_id": self.description.categories[c].id,
                "train_id": c,
                "isthing": q >= 0,
                "score": float(s),
                "area": areas[k],
                "bbox": bboxes[k],
            })
        det = Detections(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
        panoptic = upsample_ids(grid, ls, size)
        return PanopticResult(panoptic, infos, semantic.cpu(), det, self.description)


def nms_queries(boxes: Tensor, scores: Tensor, labels: Tensor, size: tuple[int, int], options, backend=None):
    """Candidates of one image -> ``(boxes clipped to [0, W] x [0, H], kept indices)``: class-aware NMS,
    then the optional class-agnostic NMS, then the ``post_nms_top_n`` best (the queries)."""
    h, w = size
    boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
    keep = ops.select_queries(boxes, scores, labels, options.nms_thresh, options.global_nms_thresh,
                              options.post_nms_top_n, backend=backend)
    return boxes, keep


def semantic_probs_on(logits: Tensor, grid) -> Tensor:
    """Semantic probabilities ``[B, C, *grid]``: softmax of the logits, bilinearly resampled to the
    levelness grid first when the semantic stride differs (the TRI preset's stride 8)."""
    if logits.shape[-2:] != grid:
        logits = F.interpolate(logits, size=grid, mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)


def upsample_ids(grid: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of an id map ``[h, w]`` by an integer ``stride``, cropped to ``size``
    ``(H, W)`` (``H <= h * stride``, ``W <= w * stride``): ``out[y, x] = grid[y // stride, x // stride]``."""
    hv, wv = grid.shape
    return grid[:, None, :, None].expand(hv, stride, wv, stride).reshape(hv * stride, wv * stride)[: size[0], : size[1]]


def segment_areas_and_boxes(grid: Tensor, n: int, stride: int, size: tuple[int, int]
                            ) -> tuple[list[int], list[list[int]]]:
    """Pixel count and COCO ``[x, y, w, h]`` box of segments 1..n of ``upsample_ids(grid, stride, size)``,
    from the grid alone (O(hw)): a cell covers ``stride x stride`` pixels, the last row and column
    of cells only what is left of ``size``.  Segments without pixels get area 0 and ``[0, 0, 0, 0]``."""
    hv, wv = grid.shape
    h, w = size
    flat = grid.reshape(-1).long()
    cell_h = torch.full((hv,), stride, dtype=torch.int64)
    cell_w = torch.full((wv,), stride, dtype=torch.int64)
    cell_h[-1], cell_w[-1] = h - (hv - 1) * stride, w - (wv - 1) * stride
    cells = (cell_h[:, None] * cell_w[None, :]).reshape(-1)
    areas = torch.zeros(n + 1, dtype=torch.int64).index_add_(0, flat, cells)[1:]
    ys = torch.arange(hv).repeat_interleave(wv)
    xs = torch.arange(wv).repeat(hv)
    big = torch.full((n + 1,), max(hv, wv), dtype=torch.int64)
    none = torch.full((n + 1,), -1, dtype=torch.int64)
    x0 = big.scatter_reduce(0, flat, xs, "amin")[1:] * stride
    y0 = big.scatter_reduce(0, flat, ys, "amin")[1:] * stride
    x1 = torch.clamp((none.scatter_reduce(0, flat, xs, "amax")[1:] + 1) * stride, max=w)  # exclusive
    y1 = torch.clamp((none.scatter_reduce(0, flat, ys, "amax")[1:] + 1) * stride, max=h)
    boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1)
    boxes[areas == 0] = 0
    return areas.tolist(), boxes.tolist()
