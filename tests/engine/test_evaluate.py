"""The one evaluation loop (predict_samples) and its metric keys, shared by `rtpanoptic evaluate`
(pipeline.evaluate_model) and the training hook (PanopticEvaluator)."""
import math

import pytest
import torch

from rtpanoptic.data import SyntheticConfig
from rtpanoptic.engine.evaluate import PanopticEvaluator, pq_metrics, predict_samples
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model

PQ_KEYS = {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"}


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    from rtpanoptic.data import synthetic_dataset

    root = str(tmp_path_factory.mktemp("synthetic"))
    return synthetic_dataset(root, "val", SyntheticConfig(num_train=0, num_val=5, seed=4), progress=False)


def _model(stuff="ground"):
    torch.manual_seed(0)
    m = build_model("r18-fpn", description="synthetic", channels=16).eval()
    with torch.no_grad():  # a random network that still finds things
        m.panoptic_head.box_cls_logits.bias.fill_(0.0)
        m.panoptic_head.bbox_pred.bias.fill_(math.log(16.0))
        m.panoptic_head.cls_logits.weight.mul_(0.1)
        m.panoptic_head.cls_logits.bias[m.description.class_names.index(stuff)] = 5.0  # one stuff class everywhere
    return m


def test_pq_metrics_keys_and_percent():
    pq = {g: {"pq": 0.5, "sq": 0.75, "rq": 0.25} for g in ("All", "Things", "Stuff")}
    pq["Stuff"] = {"pq": 0.1, "sq": 0.2, "rq": 0.3}
    m = pq_metrics(pq)
    assert set(m) == PQ_KEYS
    assert (m["PQ"], m["SQ_th"], m["RQ_st"]) == (50.0, 75.0, pytest.approx(30.0))


def test_shards_see_every_sample_once_in_order(val_set):
    predictor = Predictor(_model())
    seen = []

    def record(index, sample, result):
        seen.append((index, sample["image_id"], int(result.panoptic.max())))

    full = []
    predict_samples(predictor, val_set, range(5), [lambda i, s, r: full.append((i, s["image_id"], int(r.panoptic.max())))],
                    batch_size=2)
    for shard in ([0, 2, 4], [1, 3]):  # a list of images in, statistics out
        predict_samples(predictor, val_set, shard, [record], batch_size=2)
    assert [e[0] for e in full] == [0, 1, 2, 3, 4]
    assert sorted(seen) == sorted(full)
    assert seen[:3] == [full[0], full[2], full[4]]


def test_training_hook_and_evaluate_command_agree(val_set, tmp_path):
    from rtpanoptic.pipeline import evaluate_model

    model = _model()
    hook = PanopticEvaluator(val_set, batch_size=2)(model)
    command = evaluate_model(model, val_set, tmp_path, num_overlays=0, batch_size=3, progress=False)
    assert set(hook) == PQ_KEYS and set(command) >= PQ_KEYS
    assert command["images"] == 5
    for k in PQ_KEYS:
        assert hook[k] == pytest.approx(command[k], abs=1e-9), k
    assert command["PQ"] > 0  # the biased network finds segments: the comparison is not 0 == 0
