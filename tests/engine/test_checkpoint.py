"""Checkpoints: loaded with ``weights_only=True`` only (a crafted file is refused, never executed),
the RNG states as plain tensors / lists / ints, one-line errors, stale temporaries cleaned,
the loss history kept across resumes."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from rtpanoptic.config import load_config
from rtpanoptic.engine import TrainConfig, train
from rtpanoptic.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    read_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def hostile(path, marker):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {}, "step": 3, "payload": Payload()}, path)
    return path


def test_crafted_checkpoint_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = hostile(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*not loaded") as info:
        load_checkpoint(path, model=torch.nn.Linear(2, 2))
    assert "\n" not in str(info.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


def test_pipeline_load_model_refuses_it_too(tmp_path):
    from rtpanoptic.pipeline import UsageError, load_model

    marker = tmp_path / "pwned"
    with pytest.raises(UsageError, match="evil.pt"):
        load_model(hostile(tmp_path / "evil.pt", marker))
    assert not marker.exists()


def test_legacy_numpy_rng_checkpoint_gets_a_clear_message(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"model": {}, "step": 1, "rng": {"numpy": np.random.get_state()}}, path)
    with pytest.raises(CheckpointError, match=r"old\.pt.*numpy") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_saved_checkpoint_loads_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, step=5, config={"a": [1, 2]},
                    extra={"history": [{"step": 1, "total": 0.5}]})
    state = torch.load(tmp_path / "c.pt", weights_only=True)  # plain tensors, lists, ints only
    assert state["step"] == 5 and state["extra"]["history"] == [{"step": 1, "total": 0.5}]


def test_rng_state_round_trip_is_exact():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's legacy state
    state = rng_state()
    pickle.dumps(state)  # plain objects
    expect = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1])
    assert expect[2] == got[2] and expect[3] == got[3]


def test_truncated_and_foreign_checkpoints_are_one_line(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "c.pt", model=model, step=1)
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt") as info:
        load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"c\.pt.*fc|c\.pt.*weight") as info:
        load_checkpoint(tmp_path / "c.pt", model=torch.nn.Sequential(torch.nn.Linear(3, 4)))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    with pytest.raises(CheckpointError, match=r"none\.pt.*does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_disk_full_is_named_and_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    import builtins

    atomic_save({"a": 1}, tmp_path / "c.pt")

    def full_disk(path, mode="r", *args, **kwargs):  # the temporary file opened for writing: a full disk
        return builtins.open("/dev/full", mode, *args, **kwargs)

    monkeypatch.setattr("rtpanoptic.engine.checkpoint.open", full_disk, raising=False)
    with pytest.raises(CheckpointError, match=r"c\.pt.*disk.*full") as info:
        atomic_save({"a": torch.zeros(10000)}, tmp_path / "c.pt")
    assert isinstance(info.value.__cause__, OSError)
    assert torch.load(tmp_path / "c.pt", weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_remove_stale_temporaries_only_ours(tmp_path):
    ours = [".last.pt.ab12_xyz.tmp", ".step_0000200.pt.k9q2m1zz.tmp"]
    theirs = ["last.pt", ".last.pt.tmp", "notes.tmp", ".other.pt.ab12cd34.tmp", ".last.pt.ab12cd34.tmp.bak"]
    for name in ours + theirs:
        (tmp_path / name).write_text(name)
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path)) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------------------------------ training
TINY = [
    "data.synthetic_num_train=8", "data.synthetic_num_val=4", "schedule.warmup_steps=1", "schedule.milestones=[]",
    "runtime.batch_size=2", "runtime.log_every=1", "runtime.progress=false", "runtime.checkpoint_every=1",
]


def tiny_config(tmp_path, steps):
    from rtpanoptic.engine import train_preset

    return load_config(TrainConfig, None, [*TINY, f"schedule.max_steps={steps}", f"data.root={tmp_path / 'data'}",
                                           f"runtime.output_dir={tmp_path / 'run'}"], base=train_preset("synthetic"))


def test_history_survives_a_resume_and_stale_temporaries_go(tmp_path):
    straight = train(tiny_config(tmp_path / "a", 3))
    train(tiny_config(tmp_path / "b", 2))
    stale = tmp_path / "b" / "run" / ".last.pt.zz99yy88.tmp"  # a save killed mid-write
    stale.write_bytes(b"\0" * 1000)
    resumed = train(tiny_config(tmp_path / "b", 3))
    assert not stale.exists()
    assert [h["step"] for h in resumed.history] == [1, 2, 3]
    assert [h["total"] for h in resumed.history] == [h["total"] for h in straight.history]
    saved = torch.load(tmp_path / "b" / "run" / "last.pt", weights_only=True)
    assert [h["step"] for h in saved["extra"]["history"]] == [1, 2, 3]
