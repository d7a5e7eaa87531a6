"""The evaluation loop, its metric keys, and a ready-made evaluation hook for
:func:`rtpanoptic.engine.train`.

:func:`predict_samples` is the one loop: samples of a dataset (a list of indices, so a caller can
shard them) through a :class:`~rtpanoptic.inference.Predictor` in batches, each ``(index, sample,
result)`` handed to the caller's accumulators; the statistics live in those.  :func:`pq_metrics`
names the PQ / SQ / RQ results (``PQ``, ``SQ``, ``RQ``, ``PQ_th`` ..., ``RQ_st``, in percent) for
``rtpanoptic evaluate`` and for the training hook alike.

``train(cfg, evaluator=PanopticEvaluator(val_set))`` runs :class:`PanopticEvaluator` every
``runtime.eval_every`` steps and after the last one; any ``callable(model, step) -> {name: value}``
works in its place.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

# consume(index, sample, result): an accumulator of the evaluation loop
Consumer = Callable[[int, dict, object], None]

PQ_GROUPS = (("All", ""), ("Things", "_th"), ("Stuff", "_st"))


def pq_metrics(pq: dict) -> dict[str, float]:
    """A PQ result (``{"All" | "Things" | "Stuff": {"pq", "sq", "rq"}}``, fractions, as
    :func:`~rtpanoptic.evaluation.pq_compute` and :class:`~rtpanoptic.evaluation.PanopticQualityEvaluator`
    return) -> ``{"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"}`` in percent."""
    return {f"{key.upper()}{suffix}": 100.0 * float(pq[group][key])
            for group, suffix in PQ_GROUPS for key in ("pq", "sq", "rq")}


def predict_samples(predictor, dataset, indices: Sequence[int], consumers: Sequence[Consumer],
                    batch_size: int = 8, progress: bool = False) -> float:
    """Predict the samples ``indices`` of ``dataset`` (sample dicts as :mod:`rtpanoptic.data.coco_panoptic`
    describes: ``image`` uint8 ``[3, H, W]`` ...) with ``predictor``, ``batch_size`` images per call, in order; every consumer
    gets ``(index, sample, result)`` of each.  Returns the seconds spent in the predictor."""
    from tqdm import tqdm

    indices = list(indices)
    seconds = 0.0
    with tqdm(total=len(indices), desc="evaluate", unit="img", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            samples = [dataset[i] for i in chunk]
            t0 = time.perf_counter()
            results = predictor([s["image"] for s in samples])
            seconds += time.perf_counter() - t0
            for i, sample, result in zip(chunk, samples, results):
                for consume in consumers:
                    consume(i, sample, result)
            bar.update(len(samples))
    return seconds


class PanopticEvaluator:
    """PQ / SQ / RQ (all, things, stuff; in percent, :func:`pq_metrics` keys) of a model on the
    samples of ``dataset``.

    Args:
        dataset: un-augmented sample dicts (:mod:`rtpanoptic.data.coco_panoptic`), with ``.description``.
        max_images: evaluate only the first ones.
        batch_size: images per forward pass.
        backend: ``rtpanoptic.ops`` backend of the post-processing (None: fastest).
        **options: :class:`rtpanoptic.inference.Predictor` options (``sigma``, ``score_threshold``...).
    """

    def __init__(self, dataset, max_images: int | None = None, batch_size: int = 8,
                 backend: str | None = None, **options):
        self.dataset = dataset
        self.max_images = max_images
        self.batch_size = int(batch_size)
        self.backend = backend
        self.options = options

    def __call__(self, model: torch.nn.Module, step: int = 0) -> dict[str, float]:
        from ..evaluation import PanopticQualityEvaluator, sample_to_panoptic
        from ..inference import Predictor

        was_training = model.training
        description = self.dataset.description
        # the model is being trained: keep its memory format (Predictor's default may switch it)
        predictor = Predictor(model, backend=self.backend, **{"channels_last": False, **self.options})
        pq = PanopticQualityEvaluator(description, use_train_ids=True)

        def add(index: int, sample: dict, result) -> None:
            gt_ids, gt_segments = sample_to_panoptic(sample, description)
            pred_segments = [{"id": s["id"], "category_id": s["train_id"]} for s in result.segments_info]
            pq.update(gt_ids, gt_segments, result.panoptic, pred_segments, sample.get("image_id", str(index)))

        n = len(self.dataset) if self.max_images is None else min(self.max_images, len(self.dataset))
        predict_samples(predictor, self.dataset, range(n), [add], self.batch_size)
        model.train(was_training)
        return pq_metrics(pq.compute())
