"""A ready-made evaluation hook for :func:`rtpanoptic.engine.train`: panoptic quality on a dataset.

``train(cfg, evaluator=PanopticEvaluator(val_set))`` runs it every ``runtime.eval_every`` steps
and after the last one; any ``callable(model, step) -> {name: value}`` works in its place.
"""
from __future__ import annotations

import torch


class PanopticEvaluator:
    """PQ / SQ / RQ (all, things, stuff; in percent) of a model on the samples of ``dataset``.

    Args:
        dataset: CONTRACT.md samples (un-augmented), with ``.description``.
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
        n = len(self.dataset) if self.max_images is None else min(self.max_images, len(self.dataset))
        for start in range(0, n, self.batch_size):
            samples = [self.dataset[i] for i in range(start, min(n, start + self.batch_size))]
            results = predictor([s["image"] for s in samples])
            for sample, result in zip(samples, results):
                gt_ids, gt_segments = sample_to_panoptic(sample, description)
                pred_segments = [{"id": s["id"], "category_id": s["train_id"]} for s in result.segments_info]
                pq.update(gt_ids, gt_segments, result.panoptic, pred_segments, sample.get("image_id", str(start)))
        out = pq.compute()
        model.train(was_training)
        metrics = {}
        for group, prefix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for key in ("pq", "sq", "rq"):
                metrics[f"{key}{prefix}"] = 100.0 * float(out[group][key])
        return metrics
