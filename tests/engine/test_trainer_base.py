"""The trainer's skeleton: steps, stopping, hooks in order; the schedule rebuilt at a step."""
import pytest
import torch

from rtpanoptic.config import load_config
from rtpanoptic.engine import TrainConfig, WarmupMultiStep
from rtpanoptic.engine.trainer import HookBase, TrainerBase, build_optimizer, build_scheduler, scaled_lr


class Counting(TrainerBase):
    def __init__(self, hooks, stop_at=None, fail_at=None):
        super().__init__(hooks)
        self.stop_at, self.fail_at, self.done = stop_at, fail_at, []

    def run_step(self):
        if self.step == self.fail_at:
            raise RuntimeError("boom")
        self.done.append(self.step)

    def stop_now(self):
        return self.step == self.stop_at


class Recorder(HookBase):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def before_train(self):
        self.log.append((self.name, "before"))

    def after_step(self):
        self.log.append((self.name, self.trainer.step, self.trainer.last))

    def after_train(self):
        self.log.append((self.name, "after"))


def test_steps_hooks_in_order_and_early_stop():
    log = []
    t = Counting([Recorder("a", log), Recorder("b", log)], stop_at=3)
    assert t.train(1, 10) == 3 and t.done == [2, 3]
    assert log == [("a", "before"), ("b", "before"), ("a", 2, False), ("b", 2, False),
                   ("a", 3, True), ("b", 3, True), ("a", "after"), ("b", "after")]


def test_nothing_left_and_last_step():
    log = []
    assert Counting([Recorder("a", log)]).train(5, 5) == 5 and log == [("a", "before"), ("a", "after")]
    log.clear()
    assert Counting([Recorder("a", log)]).train(0, 2) == 2 and log[-2] == ("a", 2, True)


def test_after_train_runs_after_an_error():
    log = []
    with pytest.raises(RuntimeError, match="boom"):
        Counting([Recorder("a", log)], fail_at=2).train(0, 4)
    assert log == [("a", "before"), ("a", 1, False), ("a", "after")]


@pytest.mark.parametrize("step", [0, 1, 3, 7])
def test_scheduler_at_a_step_follows_the_config(step):
    cfg = load_config(TrainConfig, None, ["optim.lr=0.02", "schedule.warmup_steps=4", "schedule.milestones=[6]",
                                          "schedule.warmup_factor=0.25", "optim.scale_lr_with_world_size=true"])
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GroupNorm(1, 2))
    opt = build_optimizer(model, cfg, world_size=2)
    opt.param_groups[0]["lr"] = 123.0  # a loaded optimiser's saved lr does not survive
    sched = build_scheduler(opt, cfg, world_size=2, step=step)
    base = scaled_lr(cfg, 2)
    expected = base * WarmupMultiStep(4, 0.25, [6], cfg.schedule.gamma)(step)
    assert base == pytest.approx(0.02 * 2 / cfg.optim.reference_world_size)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([expected] * len(opt.param_groups))
    assert sched.last_epoch == step
    fresh = build_optimizer(model, cfg, world_size=2)
    straight = build_scheduler(fresh, cfg, world_size=2)
    for _ in range(step):
        fresh.step()
        straight.step()
    assert fresh.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
