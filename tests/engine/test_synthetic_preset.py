"""The real network on the generated synthetic set, through the "synthetic" preset (a few steps)."""
import torch

from rtpanoptic.config import load_config
from rtpanoptic.engine import TrainConfig, train, train_preset
from rtpanoptic.engine.evaluate import PanopticEvaluator
from rtpanoptic.engine.factories import build_dataset_from_config


def test_synthetic_preset_trains_and_evaluates(tmp_path):

    cfg = load_config(TrainConfig, None, [
        f"data.root={tmp_path / 'data'}", "data.synthetic_num_train=4", "data.synthetic_num_val=2",
        f"runtime.output_dir={tmp_path / 'run'}", "schedule.max_steps=2", "runtime.batch_size=2",
        "runtime.progress=false", "runtime.log_every=1",
    ], base=train_preset("synthetic"))
    val = build_dataset_from_config(cfg, "val", train=False)
    result = train(cfg, evaluator=PanopticEvaluator(val, batch_size=2))
    assert result.step == 2 and len([h for h in result.history if "total" in h]) == 2
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in result.history if "total" in h)
    assert set(result.metrics) >= {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"}
    assert 0 <= result.metrics["PQ"] <= 100
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert result.model.training  # handed back in train mode
