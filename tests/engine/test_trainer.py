"""Engine tests on a toy network and an in-memory dataset (fast, CPU)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rtpanoptic.config import load_config
from rtpanoptic.engine import (
    NonFiniteLossError,
    TrainConfig,
    WarmupMultiStep,
    atomic_save,
    load_checkpoint,
    train,
    train_preset,
)
from rtpanoptic.engine.distributed import SeededDataset, StepSampler

# The toy network and dataset, also written into the torchrun script of the DDP test.
TOY_SRC = textwrap.dedent(
    '''
    import torch
    import torch.nn.functional as F
    from torch import nn
    from rtpanoptic.data.description import Category, DatasetDescription
    from rtpanoptic.model.outputs import HeadOutputs

    TOY = DatasetDescription("toy", (Category(1, "box", True, (200, 0, 0)), Category(2, "disc", True, (0, 200, 0)),
                                     Category(3, "bg", False, (0, 0, 200))))


    class ToyNet(nn.Module):
        strides = (8, 16, 32, 64, 128)
        levelness_stride = 4
        semantic_stride = 4

        def __init__(self, k=2, c=3, ch=8):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, stride=4, padding=1), nn.BatchNorm2d(ch), nn.ReLU())
            self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            self.off = nn.Conv2d(ch, 4, 3, padding=1)
            self.ctr = nn.Conv2d(ch, 1, 3, padding=1)
            self.cls = nn.Conv2d(ch, k, 3, padding=1)
            self.lvl = nn.Conv2d(ch, 6, 3, padding=1)
            self.sem = nn.Conv2d(ch, c, 3, padding=1)
            nn.init.constant_(self.cls.bias, -2.0)

        def normalize(self, images):
            return images.float() / 255.0 - 0.5

        def forward(self, x):
            f = self.stem(x)
            feats, g = [], f
            for s in self.strides:
                g = F.relu(self.down(g))
                feats.append(g)
            offs = [torch.exp(self.off(g).clamp(max=6.0)) * s for g, s in zip(feats, self.strides)]
            return HeadOutputs(offs, [self.ctr(g) for g in feats], [self.cls(g) for g in feats],
                               self.lvl(f), self.sem(f))


    class ToySet(torch.utils.data.Dataset):
        description = TOY

        def __init__(self, n=6, size=128, seed=0):
            g = torch.Generator().manual_seed(seed)
            self.items = []
            for _ in range(n):
                sem = torch.full((size, size), 2, dtype=torch.int64)
                masks, labels = [], []
                for k in range(2):
                    y0, x0 = torch.randint(0, size - 48, (2,), generator=g).tolist()
                    m = torch.zeros((size, size), dtype=torch.bool)
                    m[y0:y0 + 40, x0:x0 + 40] = True
                    for prev in masks:
                        m &= ~prev
                    masks.append(m)
                    labels.append(k)
                    sem[m] = k
                masks = torch.stack(masks)
                img = torch.zeros((3, size, size), dtype=torch.uint8)
                for k in range(3):
                    img[k][sem == k] = 200
                self.items.append((img, sem, masks, torch.tensor(labels)))

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            img, sem, masks, labels = self.items[i]
            if float(torch.rand(())) < 0.5:  # a random flip: augmentation must replay on resume
                img, sem, masks = img.flip(-1), sem.flip(-1), masks.flip(-1)
            boxes = []
            for m in masks:
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            return {"image": img, "semantic": sem, "instance_masks": masks,
                    "boxes": torch.tensor(boxes, dtype=torch.float32), "labels": labels,
                    "crowd_mask": torch.zeros(sem.shape, dtype=torch.bool), "image_id": str(i), "file_name": ""}
    '''
)
exec(TOY_SRC)  # defines ToyNet, ToySet, TOY


def toy_config(out_dir, steps=6, **runtime):
    overrides = [
        f"runtime.output_dir={out_dir}", f"schedule.max_steps={steps}", "schedule.warmup_steps=2",
        "schedule.milestones=[4]", "runtime.batch_size=2", "runtime.progress=false", "runtime.log_every=1",
        "runtime.checkpoint_every=3", "optim.lr=0.01", "optim.clip_grad_norm=10.0", "runtime.threads=1",
        "loss.mask_pre_nms_thresh=0.0", "loss.mask_min_iou=0.1", "loss.mask_post_nms_top_n=20",
    ] + [f"runtime.{k}={v}" for k, v in runtime.items()]
    return load_config(TrainConfig, None, overrides)


def _run(cfg):
    torch.manual_seed(0)
    return train(cfg, model=ToyNet(), train_set=ToySet())


def test_resume_is_exact(tmp_path):
    straight = _run(toy_config(tmp_path / "a", steps=6))
    assert straight.step == 6 and (tmp_path / "a" / "last.pt").is_file()
    assert [h["step"] for h in straight.history] == [1, 2, 3, 4, 5, 6]
    assert max(h["num_queries"] for h in straight.history) > 0  # the mask loss took part

    first = _run(toy_config(tmp_path / "b", steps=3))
    assert first.step == 3
    resumed = _run(toy_config(tmp_path / "b", steps=6))  # resume="auto" picks b/last.pt
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]  # the history before the resume is kept
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the logged losses of the resumed steps equal the straight run's
    for ha, hb in zip(straight.history, resumed.history, strict=True):
        assert ha["total"] == hb["total"]
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6


def test_toy_network_overfits(tmp_path):
    """Every loss term trains: on four images the total loss falls below half its start in 40 steps."""
    cfg = load_config(TrainConfig, None, ["schedule.milestones=[1000]", "runtime.checkpoint_every=1000"],
                      base=toy_config(tmp_path / "o", steps=40))
    torch.manual_seed(0)
    result = train(cfg, model=ToyNet(), train_set=ToySet(n=4))
    totals = [h["total"] for h in result.history if "total" in h]
    assert len(totals) == 40 and all(torch.isfinite(torch.tensor(totals)))
    first, last = sum(totals[:3]) / 3, sum(totals[-5:]) / 5
    assert last < first / 2, (first, last)
    assert max(h["num_queries"] for h in result.history[-10:]) > 0  # the mask loss takes part to the end


def test_resume_follows_the_new_schedule(tmp_path):
    _run(toy_config(tmp_path / "c", steps=3))
    cfg = load_config(TrainConfig, None, ["optim.lr=0.02"], base=toy_config(tmp_path / "c", steps=5))
    resumed = _run(cfg)
    # warm-up (2 steps) is over; milestone 4: lr 0.02 for step 4 (scheduler epoch 3), 0.002 after
    assert [h["lr"] for h in resumed.history[3:]] == pytest.approx([0.02, 0.002])


def test_time_limit_stops_cleanly_and_resumes(tmp_path):
    calls = []
    cfg = toy_config(tmp_path / "t", steps=4, time_limit_s=0.0)
    result = train(cfg, model=ToyNet(), train_set=ToySet(), evaluator=lambda m, s: calls.append(s) or {"pq": 1.0})
    assert result.step == 1 and calls == [1]  # stopped after the first step, evaluated once
    assert load_checkpoint(tmp_path / "t" / "last.pt", restore_rng=False)["step"] == 1
    rest = train(toy_config(tmp_path / "t", steps=4), model=ToyNet(), train_set=ToySet())
    assert rest.step == 4 and [h["step"] for h in rest.history if "total" in h] == [1, 2, 3, 4]
    again = train(toy_config(tmp_path / "t", steps=4), model=ToyNet(), train_set=ToySet())
    assert again.step == 4 and again.history == rest.history  # nothing left to do


def test_nonfinite_loss_stops_with_named_part(tmp_path, monkeypatch):
    import rtpanoptic.losses as losses

    calls = {"n": 0}
    real = losses.bootstrapped_cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(losses, "bootstrapped_cross_entropy", poisoned)
    cfg = toy_config(tmp_path / "n", steps=6)
    with pytest.raises(NonFiniteLossError, match=r"step 4: semantic"):
        _run(cfg)
    # the checkpoint of step 3 is intact and no temporary file is left behind
    assert load_checkpoint(tmp_path / "n" / "last.pt", restore_rng=False)["step"] == 3
    assert [p.name for p in (tmp_path / "n").iterdir() if p.name.endswith(".tmp")] == []


def test_scheduler_and_sampler():
    f = WarmupMultiStep(warmup_steps=10, warmup_factor=0.1, milestones=(20, 30), gamma=0.1)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == 1.0
    assert f(19) == 1.0 and f(20) == pytest.approx(0.1) and f(30) == pytest.approx(0.01)
    ds = list(range(10))
    full = StepSampler(ds, 0, 2, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(12)]  # 5 per epoch per rank: crosses two epoch boundaries
    assert sorted(i for i, _ in stream[:5]) == sorted(set(i for i, _ in stream[:5]))
    it = iter(StepSampler(ds, 0, 2, seed=3, start=7))
    assert [next(it) for _ in range(5)] == stream[7:12]
    other = iter(StepSampler(ds, 1, 2, seed=3))
    assert not set(i for i, _ in stream[:5]) & set(next(other)[0] for _ in range(5))  # disjoint ranks
    seeded = SeededDataset(ToySet(n=2))
    state = torch.get_rng_state()
    assert torch.equal(seeded[(0, 123)]["image"], seeded[(0, 123)]["image"])
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Boom()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_presets_follow_the_paper(tmp_path):
    cs, coco, syn = train_preset("cityscapes"), train_preset("coco"), train_preset("synthetic")
    assert (cs.optim.lr, cs.schedule.max_steps, cs.schedule.milestones) == (0.013, 48000, (36000, 44000))
    assert cs.runtime.batch_size == 1 and cs.data.crop_size == (900, 1800) and cs.data.scale == (0.7, 1.3)
    assert (coco.optim.lr, coco.schedule.max_steps, coco.schedule.milestones) == (0.01, 180000, (120000, 160000))
    assert coco.runtime.batch_size == 2 and coco.data.min_sizes == (640, 720, 800) and coco.loss.semantic == 0.4
    for cfg in (cs, coco, syn):
        assert cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 1e-4
    from rtpanoptic.config import save_config

    for name, cfg in (("cs", cs), ("coco", coco), ("syn", syn)):  # YAML round trip (inf size range)
        save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config(TrainConfig, tmp_path / f"{name}.yaml") == cfg
    from rtpanoptic.engine import make_config

    made = make_config("coco", None, ["optim.lr=0.02", "runtime.batch_size=4"])
    assert made.optim.lr == 0.02 and made.runtime.batch_size == 4 and made.loss.semantic == 0.4
    with pytest.raises(ValueError, match="unknown training preset"):
        train_preset("imagenet")
    bad = load_config(TrainConfig, None, ["runtime.amp=fp8"])
    with pytest.raises(ValueError, match="runtime.amp"):
        train(bad, model=ToyNet(), train_set=ToySet())


DDP_SCRIPT = '''
import os, sys
import torch
{toy}
from rtpanoptic.config import load_config
from rtpanoptic.engine import TrainConfig, train

out = sys.argv[1]
cfg = load_config(TrainConfig, None, [
    f"runtime.output_dir={{out}}", "schedule.max_steps=3", "schedule.warmup_steps=1", "runtime.batch_size=1",
    "runtime.progress=false", "runtime.log_every=1", "runtime.threads=1", "runtime.resume=null",
    "loss.mask_pre_nms_thresh=0.0", "loss.mask_min_iou=0.1", "loss.mask_post_nms_top_n=10",
])
torch.manual_seed(int(os.environ["RANK"]))  # different local init: DDP must broadcast rank 0's
model = ToyNet()
torch.save(model.state_dict(), os.path.join(out, f"init{{os.environ['RANK']}}.pt"))
result = train(cfg, model=model, train_set=ToySet())
torch.save(result.model.state_dict(), os.path.join(out, f"rank{{os.environ['RANK']}}.pt"))
'''


def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(toy=TOY_SRC))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    init0, init1 = torch.load(tmp_path / "init0.pt"), torch.load(tmp_path / "init1.pt")
    assert not torch.equal(init0["off.weight"], init1["off.weight"])  # the ranks started apart
    for k in a:
        assert torch.equal(a[k], b[k]), k  # rank 0's weights were broadcast, the steps averaged
    # and training moved rank 0's own initial weights (every trained tensor)
    for k in ("stem.0.weight", "off.weight", "cls.weight", "lvl.weight", "sem.weight"):
        assert not torch.equal(a[k], init0[k]), k
    # only rank 0 wrote the checkpoint and config
    names = sorted(p.name for p in Path(tmp_path).iterdir())
    assert "last.pt" in names and "config.yaml" in names


def test_tensorboard_and_progress_bar(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    cfg = toy_config(tmp_path / "tb", steps=2, tensorboard="true", progress="true")
    calls = []

    def evaluator(model, step):
        assert not model.training
        calls.append(step)
        return {"pq": 12.5}

    result = train(cfg, model=ToyNet(), train_set=ToySet(), evaluator=evaluator)
    assert calls == [2] and result.metrics == {"pq": 12.5} and result.model.training
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb" / "tb").iterdir())
    err = capsys.readouterr().err
    assert "train" in err and "img/s" in err and "box_reg" in err
