"""Inference: images in, panoptic segmentation out (paper §3).

Pipeline of :class:`Predictor` (every box/mask stage goes through :mod:`rtpanoptic.ops`, so
``backend=`` applies end to end):

1. group the images by their size padded to a multiple of 128, pad each group (zeros,
   bottom/right), normalise, run the network once per group: the network sees every image
   exactly as it would alone, so a result never depends on the other images of a batch;
2. per level: ``p = sigmoid(class logits)``, candidates ``p > pre_nms_thresh`` at locations
   inside the image (not in the padding), score
   ``p * sigmoid(centerness)``, the ``pre_nms_top_n`` best per level (a fixed-size top-k: slots
   without a candidate score ``NO_CANDIDATE``), boxes from :func:`ops.decode_boxes` clipped to the
   image (:func:`clip_boxes`);
3. class-aware NMS, optionally class-agnostic NMS (the release's 0.97), the ``post_nms_top_n``
   best: the queries B_query (:func:`ops.select_queries`, fixed-size, the count on the device);
4. dense boxes B(x, y) from :func:`ops.gather_levelness` (eq. 14), semantic probabilities on
   the same grid, masks and fusion by :func:`ops.panoptic_from_dense` (eqs. 5-7) on the
   image's part of the grid;
5. the segment-id map (not the Q float masks) is upsampled (nearest) to the input size; segment
   areas and boxes follow from the grid; the semantic map is :func:`ops.upsample_argmax` of the
   semantic logits (no ``C x H x W`` or ``Q x H x W`` tensor at input resolution).

Steps 2-5 are the device stage (:class:`DevicePostprocess`, :meth:`Predictor.postprocess_device`):
fixed shapes for fixed input sizes, nothing read back to the host, so it can be captured in a
CUDA graph (:meth:`Predictor.capture_postprocess`); the host stage (:meth:`Predictor.to_results`)
reads the counts and builds the :class:`PanopticResult` s.

With the ``tri-cityscapes-r50`` preset the options follow the authors' release (threshold 0.06
on p before the centerness product, 1000 per level, class NMS 0.6 then class-agnostic 0.97,
top 100, "tri" score, sigma 0.4, semantic logits resized to the stride-4 grid before the
softmax).  Known differences from the released code: its masks are ``soft >= 0.4`` after a x4
bilinear upsampling of the soft masks, here by default (``mask_mode="grid"``) ``soft > sigma`` on
the stride-4 grid and the id map is upsampled — ``mask_mode="release"`` reproduces the release's
masks exactly (:func:`ops.panoptic_from_dense_release`, mask boxes clipped to ``[0, W-1] x [0, H-1]``);
it has no panoptic fusion (masks may overlap), here masks are fused (overlap 0.5);
by default boxes are clipped to ``[0, W] x [0, H]`` (no -1; ``mask_mode="release"`` clips the
candidates to ``[0, W-1] x [0, H-1]`` before NMS, as the release); the top 100 are taken exactly
(no kthvalue ties); candidates in the padding are dropped.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from . import ops
from .candidates import NO_CANDIDATE, select_candidates
from .data.description import DatasetDescription
from .execution import NetworkRunner, capture_cuda_graph, run_options
from .images import pad_batch, padded_size, to_image_tensors
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


class PaddedQueries(NamedTuple):
    """The queries of one image in fixed-size form (:meth:`DevicePostprocess.queries`): ``Qm`` slots,
    ``Qm = min(post_nms_top_n, N)`` with ``N`` the fixed number of candidate slots, so ``Qm`` depends
    on the input size only.  Slots ``0 .. count-1`` hold the queries in decreasing score order
    (:class:`Detections`); the others hold a harmless copy of some candidate slot."""

    boxes: Tensor  # float32 [Qm, 4] xyxy input pixels, clipped to the image
    scores: Tensor  # float32 [Qm]
    labels: Tensor  # int64 [Qm] thing index 0..K-1
    count: Tensor  # int64 0-d: the number of queries


class DeviceResult(NamedTuple):
    """One image's post-processing as device tensors of fixed shapes (:meth:`Predictor.postprocess_device`):
    for a fixed input size every shape is fixed and every count is a 0-d tensor, so the stage that
    computes them can be captured in a CUDA graph.  ``S = Qm + C`` segment slots: slots
    ``0 .. segment_count-1`` are the segments of :class:`PanopticResult` (``id = slot + 1``), the
    others hold class -1, query -1, score 0, area 0, box ``[0, 0, 0, 0]``."""

    panoptic: Tensor  # int32 [H, W]: 0 void, k the segment in slot k - 1
    semantic: Tensor  # int64 (options.semantic_dtype) [H, W] semantic train ids
    queries: PaddedQueries
    segment_class: Tensor  # int64 [S] semantic train id
    segment_query: Tensor  # int64 [S] query slot, -1 for stuff
    segment_score: Tensor  # float32 [S]
    segment_area: Tensor  # int64 [S] pixels of panoptic
    segment_box: Tensor  # int64 [S, 4] COCO [x, y, w, h] in input pixels
    segment_count: Tensor  # int64 0-d


@dataclass
class PanopticResult:
    """Panoptic segmentation of one image, at its input resolution ``[H, W]`` (CPU tensors).

    ``panoptic`` int32 ``[H, W]``: 0 is void, k > 0 is the segment ``segments_info[k - 1]``
    (``{"id", "category_id" (dataset id), "train_id", "isthing", "score", "area", "bbox"
    [x, y, w, h]}``).  ``semantic`` int64 ``[H, W]`` (or the narrower ``semantic_dtype`` option):
    semantic train ids (argmax of the upsampled logits).  ``detections``: every query, also those that lost the fusion.
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


class Predictor:
    """Run a :class:`~rtpanoptic.model.PanopticNet` on images and return :class:`PanopticResult` s.

    Args:
        model: the network (put in eval mode here).
        backend: ``rtpanoptic.ops`` backend for every post-processing op (None: fastest).
        precision: ``"fp32"`` | ``"bf16"`` | ``"fp16"``: autocast dtype of the network; the
            post-processing always runs in fp32 (:mod:`rtpanoptic.execution`).  None: ``"fp32"``.
        channels_last: NHWC network (weights converted in place); None: where measured faster
            (CPU; CUDA with bf16 / fp16).  Not bit-equal to NCHW (float rounding).
        compile: ``torch.compile`` the network (True, or a dict of its keyword arguments).
        fast: the fastest settings for the model's device in one option
            (:func:`~rtpanoptic.execution.run_options`): bf16 where the CPU has native bf16 (else
            fp32; bf16 on CUDA), channels_last, ``torch.compile`` with weight freezing.  The first
            call at each input size compiles.  ValueError if precision, channels_last or compile is
            given too.
        quantize: ``"int8"``: the network quantized to int8 by PT2E with torchao's x86 Inductor
            quantizer (:class:`~rtpanoptic.quantize.Int8Network`; CPU only, needs torchao).  Opt-in:
            it costs accuracy (docs/inference.md).  ValueError with ``fast``, ``precision`` or
            ``channels_last``, on CUDA, or without ``calibration``; ImportError without torchao.
            ``compile`` (a bool) then says whether the int8 graphs are compiled: default True.
        calibration: with ``quantize``, the images (as for ``__call__``) whose activation ranges set
            the int8 scales: a few representative ones (each a forward pass).
        **options: fields of :class:`~rtpanoptic.model.config.InferenceConfig` overriding the
            model's defaults (``model.cfg.inference``): ``sigma``, ``score``,
            ``pre_nms_thresh``, ``pre_nms_top_n``, ``nms_thresh``, ``global_nms_thresh``,
            ``post_nms_top_n``, ``score_threshold``, ``overlap_threshold``, ``stuff_area_limit``.

    ``postprocess`` = ``to_results(postprocess_device(...))``: the device stage is ``self.stage``
    (:class:`DevicePostprocess`, capturable with :meth:`capture_postprocess`).
    """

    def __init__(self, model, backend: str | None = None, precision: str | None = None,
                 channels_last: bool | None = None, compile: bool | dict | None = None, fast: bool = False,
                 quantize: str | None = None, calibration: Iterable | None = None, **options):
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
        self.stage = DevicePostprocess(self.model, self.options, backend)
        self._thing_train_ids, self._is_thing = self.stage.thing_train_ids, self.stage.is_thing  # CPU copies
        if quantize is not None or calibration is not None:
            self.network = self._quantized(quantize, calibration, precision, channels_last, compile, fast)
            return
        try:
            run = run_options(self.device, precision, channels_last, False if compile is None else compile, fast)
        except ValueError as exc:
            raise ValueError(f"Predictor: {exc}") from None
        self.network = NetworkRunner(self.model, **run)

    def _quantized(self, quantize, calibration, precision, channels_last, compile, fast):
        """The :class:`~rtpanoptic.quantize.Int8Network` of ``quantize="int8"``, its options checked."""
        from .quantize import QUANTIZE_MODES, Int8Network, int8_conflicts

        if quantize is None:
            raise ValueError("Predictor: calibration is for quantize='int8': give quantize or drop calibration")
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"Predictor: quantize must be one of {QUANTIZE_MODES} or None, got {quantize!r}")
        given = int8_conflicts(fast, precision, channels_last)
        if given:
            raise ValueError(f"Predictor: quantize={quantize!r} runs the network in int8 itself: "
                             f"drop {', '.join(given)} or quantize")
        if calibration is None:
            raise ValueError(f"Predictor: quantize={quantize!r} needs calibration images (calibration=[...])")
        with torch.no_grad():  # Int8Network refuses a model off the CPU (ValueError) before reading an image
            batches = (self.preprocess([image])[0] for image in calibration)
            try:
                return Int8Network(self.model, batches, compile=True if compile is None else compile)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"Predictor: {exc}") from None

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
        in the padding dropped), decoding, NMS: the queries of every image (the query part of the
        device stage, :meth:`DevicePostprocess.queries`, trimmed on the host)."""
        return [_detections(q) for q in self.stage.queries(outputs, sizes)]

    @torch.no_grad()
    def postprocess(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> list[PanopticResult]:
        """Network outputs of a padded batch + the input sizes -> one result per image:
        :meth:`to_results` of :meth:`postprocess_device`.

        Nothing of size ``C x H x W`` or ``Q x H x W`` at input resolution is built: masks and
        fusion run on the levelness grid, the semantic map comes from :func:`ops.upsample_argmax`,
        the segment areas and boxes from the grid (:func:`segment_stats`)."""
        return self.to_results(self.postprocess_device(outputs, sizes))

    @torch.no_grad()
    def postprocess_device(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> list[DeviceResult]:
        """The device stage of :meth:`postprocess` (:class:`DevicePostprocess`): fixed shapes for
        fixed input sizes, nothing read back to the host (with ``mask_mode="grid"``)."""
        return self.stage(outputs, sizes)

    def to_results(self, results: Sequence[DeviceResult]) -> list[PanopticResult]:
        """The host stage of :meth:`postprocess`: device results -> :class:`PanopticResult` s on the
        CPU.  The only place the post-processing reads values (copies to the host: on a GPU it
        waits for the device)."""
        return [self._result(_to_cpu(r)) for r in results]

    def capture_postprocess(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> CapturedPostprocess:
        """The device stage captured in a CUDA graph for head outputs of ``outputs``' shapes and
        these input ``sizes`` (``outputs`` also serves for the warm-up runs).  Call the returned
        :class:`CapturedPostprocess` with new outputs of the same shapes: one ``graph.replay()``
        and the host stage.  CUDA and ``mask_mode="grid"`` only."""
        return CapturedPostprocess(self, outputs, sizes)

    def _result(self, r: DeviceResult) -> PanopticResult:
        k = int(r.segment_count)
        fields = (r.segment_class, r.segment_query, r.segment_score, r.segment_area, r.segment_box)
        infos = []
        for i, (c, q, score, area, box) in enumerate(zip(*(t[:k].tolist() for t in fields))):
            infos.append({
                "id": i + 1,
                "category_id": self.description.categories[c].id,
                "train_id": c,
                "isthing": q >= 0,
                "score": float(score),
                "area": area,
                "bbox": box,
            })
        return PanopticResult(r.panoptic, infos, r.semantic, _detections(r.queries), self.description)


class DevicePostprocess:
    """The device stage of :meth:`Predictor.postprocess`, on one padded batch: candidates, queries,
    masks and fusion, the id map, segment areas and boxes, the semantic map (:class:`DeviceResult`).

    For fixed input sizes every shape is fixed and nothing is read back to the host (no ``.item()``,
    no boolean-mask indexing, no data-dependent size), so on a GPU the stage can be captured in a
    CUDA graph (cuda and triton backends; :meth:`Predictor.capture_postprocess`) and it traces
    under ``torch.compile(fullgraph=True)``:

    * candidates: :func:`~rtpanoptic.candidates.select_candidates` with ``fixed_count`` (slots that
      hold no candidate score :data:`~rtpanoptic.candidates.NO_CANDIDATE`, below every candidate:
      they sort after all of them, so they suppress nothing and are decided after every candidate);
    * queries: :func:`ops.select_queries` ``padded=True``, gathers at the kept slots (-1 read as
      slot 0), the count of kept slots that hold candidates (a prefix of the kept ones);
    * masks and fusion: :func:`ops.panoptic_from_dense` ``padded=True`` with that count as
      ``num_queries``;
    * the id map upsampled from the grid, areas and boxes from the grid (:func:`segment_stats`),
      :func:`ops.upsample_argmax` of the semantic logits.

    ``mask_mode="release"`` runs :func:`ops.panoptic_from_dense_release`, whose outputs have
    data-dependent sizes: it reads the query count on the host and pads its segments, so that mode
    cannot be captured.  Also used by :class:`rtpanoptic.export.PanopticProgram`.
    """

    def __init__(self, model, options: InferenceConfig, backend: str | None = None):
        self.model = model
        self.options = options
        self.backend = backend
        self.semantic_dtype: torch.dtype = getattr(torch, options.semantic_dtype)
        description = model.description
        self.thing_train_ids = torch.tensor(description.thing_train_ids, dtype=torch.int64)  # [K], CPU
        self.is_thing = torch.tensor(description.is_thing, dtype=torch.bool)  # [C], CPU
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(is_thing bool [C], thing_train_ids int64 [K])`` on ``device``, copied there once (a
        copy from the host inside a CUDA graph capture is not allowed)."""
        if device not in self._on_device:
            self._on_device[device] = (self.is_thing.to(device), self.thing_train_ids.to(device))
        return self._on_device[device]

    def queries(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> list[PaddedQueries]:
        """Candidates (padding dropped), decoding, NMS: the queries of every image, fixed-size."""
        o, be = self.options, self.backend
        boxes = [ops.decode_boxes(offsets, stride, backend=be)
                 for offsets, stride in zip(outputs.box_offsets, self.model.strides)]
        candidates = select_candidates(boxes, outputs.class_logits, outputs.centerness, self.model.strides,
                                       o.pre_nms_thresh, o.pre_nms_top_n, image_sizes=sizes, fixed_count=True)
        results = []
        for (boxes, scores, labels), size in zip(candidates, sizes):
            boxes, keep, _ = nms_queries(boxes, scores, labels, size, o, be, padded=True)
            slot = keep.clamp(min=0)
            kept_scores = scores[slot]
            count = ((keep >= 0) & (kept_scores != NO_CANDIDATE)).sum()
            results.append(PaddedQueries(boxes[slot], kept_scores, labels[slot], count))
        return results

    def __call__(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]) -> list[DeviceResult]:
        be, ss = self.backend, self.model.semantic_stride
        sem_logits = outputs.semantic
        semantic_size = (sem_logits.shape[2] * ss, sem_logits.shape[3] * ss)
        results = []
        for b, (panoptic, seg, map_stride, q) in enumerate(self.segments(outputs, sizes)):
            size = sizes[b]
            areas, boxes = segment_stats(seg.segment_map, seg.classes.shape[0], map_stride, size)
            semantic = ops.upsample_argmax(sem_logits[b : b + 1], semantic_size, size, out_dtype=self.semantic_dtype,
                                           backend=be)[0]
            results.append(DeviceResult(panoptic, semantic, q, seg.classes, seg.queries, seg.scores,
                                        areas, boxes, seg.count))
        return results

    def segments(self, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]
                 ) -> list[tuple[Tensor, ops.PaddedPanopticSegments, int, PaddedQueries]]:
        """The panoptic part of the stage, per image: ``(panoptic id map int32 [H, W], the padded
        segments, the stride of their segment map, the padded queries)`` -- without the semantic map
        and the segment statistics, which :meth:`__call__` adds."""
        ls = self.model.levelness_stride
        queries = self.queries(outputs, sizes)
        dense, _ = ops.gather_levelness(list(outputs.box_offsets), outputs.levelness, out_stride=ls,
                                        backend=self.backend)
        sem_probs = semantic_probs_on(outputs.semantic, dense.shape[-2:])
        out = []
        for b, size in enumerate(sizes):
            seg, map_stride = self._fuse(dense[b], sem_probs[b], queries[b], size)
            out.append((upsample_ids(seg.segment_map, map_stride, size), seg, map_stride, queries[b]))
        return out

    def _fuse(self, dense: Tensor, sem_probs: Tensor, q: PaddedQueries,
              size: tuple[int, int]) -> tuple[ops.PaddedPanopticSegments, int]:
        """Masks and panoptic fusion of one image from its padded levelness grid ``dense [4, h, w]``,
        ``sem_probs [C, h, w]`` -> the segments (``Qm + C`` slots) and the stride of their segment
        map (the grid's for ``mask_mode="grid"``; 1 for ``"release"``, whose map is at input resolution)."""
        o, ls = self.options, self.model.levelness_stride
        h, w = size
        hv, wv = math.ceil(h / ls), math.ceil(w / ls)
        is_thing, thing_train_ids = self.constants(dense.device)
        classes = thing_train_ids[q.labels]
        common = dict(sigma=o.sigma, score=o.score, score_threshold=o.score_threshold,
                      overlap_threshold=o.overlap_threshold, backend=self.backend)
        if o.mask_mode == "release":  # one grid cell of padding: the bilinear upsampling reads it
            hr, wr = min(hv + 1, dense.shape[-2]), min(wv + 1, dense.shape[-1])
            n = int(q.count)  # the release op takes the queries alone (and has data-dependent outputs)
            seg = ops.panoptic_from_dense_release(
                dense[:, :hr, :wr].contiguous(), sem_probs[:, :hr, :wr].contiguous(), q.boxes[:n], classes[:n],
                q.scores[:n], is_thing, stride=ls, size=(h, w), stuff_area_limit=o.stuff_area_limit, **common)
            return seg.padded(q.boxes.shape[0] + is_thing.shape[0]), 1
        seg = ops.panoptic_from_dense(
            dense[:, :hv, :wv].contiguous(), sem_probs[:, :hv, :wv].contiguous(), q.boxes, classes, q.scores,
            is_thing, stuff_area_limit=o.stuff_area_limit // (ls * ls), num_queries=q.count, padded=True, **common)
        return seg, ls


class CapturedPostprocess:
    """:meth:`Predictor.postprocess` with its device stage replayed from a CUDA graph, for head
    outputs of one set of shapes and fixed input sizes (:meth:`Predictor.capture_postprocess`).

    ``captured(outputs)`` copies ``outputs`` into the graph's input buffers, replays the graph and
    runs the host stage (:meth:`Predictor.to_results`) -> ``list[PanopticResult]``;
    :meth:`device_results` stops before the host stage (its tensors are rewritten by the next call).
    """

    def __init__(self, predictor: Predictor, outputs: HeadOutputs, sizes: Sequence[tuple[int, int]]):
        if predictor.options.mask_mode != "grid":
            raise ValueError("capture_postprocess: mask_mode='release' cannot be captured in a CUDA graph "
                             "(ops.panoptic_from_dense_release has data-dependent output sizes); use mask_mode='grid'")
        device = outputs.levelness.device
        if device.type != "cuda":
            raise ValueError(f"capture_postprocess: CUDA graphs need head outputs on a CUDA device, got {device}")
        self.predictor = predictor
        self.sizes = [(int(h), int(w)) for h, w in sizes]
        self.inputs = _map_tensors(outputs, lambda t: t.detach().clone())
        with torch.no_grad():
            self.graph, self.outputs = capture_cuda_graph(lambda: predictor.stage(self.inputs, self.sizes), device)

    def device_results(self, outputs: HeadOutputs) -> list[DeviceResult]:
        """Replay the device stage on ``outputs`` (same shapes as at capture)."""
        for dst, src in zip(_tensors(self.inputs), _tensors(outputs)):
            if dst.shape != src.shape:
                raise ValueError(f"captured postprocess: expected head outputs of shape {list(dst.shape)}, "
                                 f"got {list(src.shape)} (capture another graph for this size)")
            dst.copy_(src)
        self.graph.replay()
        return self.outputs

    def __call__(self, outputs: HeadOutputs) -> list[PanopticResult]:
        return self.predictor.to_results(self.device_results(outputs))


def _tensors(outputs: HeadOutputs) -> list[Tensor]:
    return [t for f in outputs for t in (f if isinstance(f, (list, tuple)) else [f])]


def _map_tensors(outputs: HeadOutputs, fn) -> HeadOutputs:
    return HeadOutputs(*[[fn(t) for t in f] if isinstance(f, (list, tuple)) else fn(f) for f in outputs])


def _to_cpu(r: DeviceResult) -> DeviceResult:
    return DeviceResult(*(PaddedQueries(*(t.cpu() for t in v)) if isinstance(v, PaddedQueries) else v.cpu()
                          for v in r))


def _detections(q: PaddedQueries) -> Detections:
    """The queries alone (reads ``count`` on the host)."""
    n = int(q.count)
    return Detections(q.boxes[:n], q.scores[:n], q.labels[:n])


def clip_boxes(boxes: Tensor, size: tuple[int, int], mask_mode: str = "grid") -> Tensor:
    """xyxy boxes ``[N, 4]`` clipped to the image ``(H, W)``: to ``[0, W] x [0, H]``, or with
    ``mask_mode="release"`` to ``[0, W-1] x [0, H-1]`` as the release (maskrcnn-benchmark's
    ``clip_to_image``).  A new tensor; NaN stays NaN."""
    h, w = size
    inset = 1 if mask_mode == "release" else 0
    out = boxes.clamp(min=0)
    out[:, 0::2] = out[:, 0::2].clamp(max=w - inset)
    out[:, 1::2] = out[:, 1::2].clamp(max=h - inset)
    return out


def nms_queries(boxes: Tensor, scores: Tensor, labels: Tensor, size: tuple[int, int], options, backend=None,
                padded: bool = False):
    """Candidates of one image -> ``(boxes clipped to the image, kept indices)``: class-aware NMS,
    then the optional class-agnostic NMS, then the ``post_nms_top_n`` best (the queries).

    Boxes are clipped by :func:`clip_boxes`: to ``[0, W] x [0, H]``, and with
    ``options.mask_mode == "release"`` to ``[0, W-1] x [0, H-1]`` (the release's NMS sees those).
    ``padded``: ``(boxes, keep, count)`` with the fixed-size ``keep`` of :func:`ops.select_queries`
    (-1 after the ``count`` kept indices; nothing read on the host)."""
    boxes = clip_boxes(boxes, size, options.mask_mode)
    selected = ops.select_queries(boxes, scores, labels, options.nms_thresh, options.global_nms_thresh,
                                  options.post_nms_top_n, padded=padded, backend=backend)
    return (boxes, *selected) if padded else (boxes, selected)


def semantic_probs_on(logits: Tensor, grid) -> Tensor:
    """Semantic probabilities ``[B, C, *grid]``: softmax of the logits, bilinearly resampled to the
    levelness grid first when the semantic stride differs (the TRI preset's stride 8):
    :func:`ops.upsample.semantic_probs`, one pass on the CPU."""
    if logits.shape[-2:] != grid:
        return ops.semantic_probs(logits, tuple(grid))
    return logits.softmax(dim=1)


def upsample_ids(grid: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of an id map ``[h, w]`` by an integer ``stride``, cropped to ``size``
    ``(H, W)`` (``H <= h * stride``, ``W <= w * stride``): ``out[y, x] = grid[y // stride, x // stride]``,
    same dtype and device as ``grid``.

    Columns first, on the ``ceil(H / stride)`` rows that are needed (a copy ``stride`` times smaller
    than the output), then every row repeated: the output is written in contiguous runs of ``W``
    values instead of runs of ``stride``."""
    h, w = size
    g = grid[: -(-h // stride), : -(-w // stride)]
    hn, wn = g.shape
    wide = g[:, :, None].expand(hn, wn, stride).reshape(hn, wn * stride)[:, :w]
    return wide[:, None, :].expand(hn, stride, wide.shape[1]).reshape(hn * stride, wide.shape[1])[:h]


def segment_stats(grid: Tensor, n: int, stride: int, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pixel count and COCO ``[x, y, w, h]`` box of segments 1..n of ``upsample_ids(grid, stride, size)``,
    from the grid alone (O(hw)), as tensors on the grid's device: int64 ``[n]`` and ``[n, 4]`` (no
    value is read on the host).  A cell covers ``stride x stride`` pixels, the last row and column
    of cells only what is left of ``size``.  Segments without pixels get area 0 and ``[0, 0, 0, 0]``.
    Id 0 is no segment; an id above ``n`` or below 0 raises ``IndexError`` (on a GPU: a device-side
    assertion).

    Two fixed-size scatters over the cells (:func:`_cells_per_row_and_column`) give each segment's
    cells per row ``[n, h]`` and per column ``[n, w]``; the box is the first and last row and column
    that hold any, the area follows from the same counts (:func:`_cell_pixels`).

    With ``stride`` 1 (the full-resolution map of ``mask_mode="release"``) from the runs of equal
    ids along the rows instead (:func:`_segment_stats_from_runs`), which reads their count on the
    host: that mode has host reads already, the grid's (``stride > 1``) path has none."""
    if stride == 1:
        return _segment_stats_from_runs(grid[: size[0], : size[1]], n)
    hv, wv = grid.shape
    h, w = size
    rows, cols = _cells_per_row_and_column(grid, n)
    y0, y1 = _first_and_end(rows)
    x0, x1 = _first_and_end(cols)
    x0, y0 = x0 * stride, y0 * stride
    x1, y1 = torch.clamp(x1 * stride, max=w), torch.clamp(y1 * stride, max=h)  # exclusive
    corner = grid[-1, -1] == torch.arange(1, n + 1, device=grid.device)
    areas = _cell_pixels(rows.sum(1, dtype=torch.int64), rows[:, -1], cols[:, -1], corner, stride,
                         h - (hv - 1) * stride, w - (wv - 1) * stride)
    return areas, _coco_boxes(x0, y0, x1, y1, areas).long()  # int32 pixel coordinates until here


def _cells_per_row_and_column(grid: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Cells of each segment 1..n of the id map ``grid [h, w]`` per row and per column: int32
    ``[n, h]`` and ``[n, w]``.  Fixed-size scatters (no ``bincount``: its size would depend on the
    data).  The column count runs first, an ``index_add_`` at ``id * w + x``, in range exactly for
    ids 0..n: any other id raises ``IndexError`` there (id 0: dropped)."""
    hv, wv = grid.shape
    device = grid.device
    i32 = dict(dtype=torch.int32, device=device)
    ones = torch.ones(hv * wv, **i32)
    # ids clamped to -1..n+1 stay out of range if they were, and id * w cannot overflow int32
    at_dtype = torch.int32 if (n + 2) * wv < 2**31 else torch.int64
    at = torch.add(torch.arange(wv, dtype=at_dtype, device=device), grid.clamp(-1, n + 1), alpha=wv)
    cols = torch.zeros((n + 1) * wv, **i32).index_add_(0, at.reshape(-1), ones).view(n + 1, wv)[1:]
    rows = torch.zeros(hv, n + 1, **i32).scatter_add_(1, grid.long(), ones.view(hv, wv))
    return rows[:, 1:].t().contiguous(), cols


def _first_and_end(counts: Tensor) -> tuple[Tensor, Tensor]:
    """``counts [n, L]`` (>= 0) -> ``[n]`` in its dtype: the first index with a non-zero count and the last
    one + 1 (for a row of zeros: ``L`` and 0).  Max-reductions of the 0/1 presence times ``L - i``
    and ``i + 1``."""
    length = counts.shape[1]
    present = counts.clamp(max=1)
    ramp = dict(dtype=counts.dtype, device=counts.device)
    end = (present * torch.arange(1, length + 1, **ramp)).amax(1)
    first = length - (present * torch.arange(length, 0, -1, **ramp)).amax(1)
    return first, end


def _cell_pixels(cells: Tensor, last_row: Tensor, last_column: Tensor, corner: Tensor, stride: int,
                 last_h: int, last_w: int) -> Tensor:
    """Pixels of each segment (int64 ``[n]``) from its ``cells`` (its count of grid cells), its cells
    in the last row ``last_row`` and in the last column ``last_column`` and whether it holds the
    corner cell ``corner`` (bool); full cells are ``stride x stride`` pixels, those of the last row
    ``last_h`` pixels tall, those of the last column ``last_w`` wide.

    With ``a = stride - last_h`` and ``b = stride - last_w``, the cell in row i and column j covers
    ``(stride - a [i last]) * (stride - b [j last])
    = stride^2 - stride a [i last] - stride b [j last] + a b [i last and j last]`` pixels; summed
    over the cells of a segment: ``stride^2 cells - stride a last_row - stride b last_column
    + a b corner``.  Exact: integers throughout, int64 from the int64 ``cells`` on (the int32 terms
    stay within about the grid's height or width times ``stride``)."""
    a, b = stride - last_h, stride - last_w
    return stride * (stride * cells - b * last_column) - a * (stride * last_row - b * corner)


def _segment_stats_from_runs(ids: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """:func:`segment_stats` of the id map ``ids`` ``[H, W]`` itself (stride 1), from its row runs:
    a run starts at column 0 and wherever the id changes along a row, and ends where the next run
    starts (the next row's first run ends the last one of a row).  O(HW) for the run starts, then
    O(runs) (scatters over the runs, not over the pixels)."""
    h, w = ids.shape
    i64 = dict(dtype=torch.int64, device=ids.device)
    flat = ids.reshape(-1)
    padded = (h * w + 7) // 8 * 8
    starts = torch.empty(padded, dtype=torch.bool, device=ids.device)
    torch.ne(flat[1:], flat[:-1], out=starts[1 : h * w])  # one contiguous comparison, then the rows' first pixels
    starts[h * w :] = False
    starts[: h * w].view(h, w)[:, 0] = True
    # nonzero in two steps: the 8-pixel words that hold a start, then the starts in them (row-major)
    word = starts.view(torch.int64).nonzero().reshape(-1)
    row, col = starts.view(-1, 8)[word].nonzero(as_tuple=True)
    start = word[row] * 8 + col
    segment = flat[start].long()
    y = torch.div(start, w, rounding_mode="floor")
    x0 = start - y * w
    x1 = torch.cat([start[1:], torch.full((1,), h * w, **i64)]) - y * w  # exclusive: <= w
    areas = torch.zeros(n + 1, **i64).index_add_(0, segment, x1 - x0)[1:]
    big = torch.full((n + 1,), max(h, w), **i64)
    none = torch.full((n + 1,), -1, **i64)
    bx0 = big.scatter_reduce(0, segment, x0, "amin")[1:]
    by0 = big.scatter_reduce(0, segment, y, "amin")[1:]
    bx1 = none.scatter_reduce(0, segment, x1, "amax")[1:]
    by1 = none.scatter_reduce(0, segment, y + 1, "amax")[1:]
    return areas, _coco_boxes(bx0, by0, bx1, by1, areas)


def _coco_boxes(x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor, areas: Tensor) -> Tensor:
    """COCO ``[x, y, w, h]`` boxes ``[n, 4]`` (the dtype of the corners) from the first pixel
    ``(x0, y0)`` and the exclusive last ``(x1, y1)`` of each segment, ``[0, 0, 0, 0]`` where
    ``areas`` is 0 (the corners of an empty segment are placeholders)."""
    boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1)
    return torch.where((areas == 0)[:, None], 0, boxes)


def segment_areas_and_boxes(grid: Tensor, n: int, stride: int, size: tuple[int, int]
                            ) -> tuple[list[int], list[list[int]]]:
    """:func:`segment_stats` as Python lists (read on the host)."""
    areas, boxes = segment_stats(grid, n, stride, size)
    return areas.tolist(), boxes.tolist()
