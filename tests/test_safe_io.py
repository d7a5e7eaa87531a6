"""File safety through the command line (issue 25, items 1, 2, 6, 7, 11, 14-18): nothing is deleted
through a link or by name alone, no output replaces an input, an output folder holds exactly one
run and one run at a time, links in it are replaced, not written through, and files follow the
umask.  Every case runs ``rtpanoptic.cli.main`` (or ``python -m rtpanoptic``) and checks the exit
status, the one-line message and the bytes of the files before and after."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import exit_code, one_line_error
from PIL import Image

TINY = [
    "data.synthetic_num_train=8", "data.synthetic_num_val=4", "schedule.max_steps=1", "schedule.warmup_steps=1",
    "schedule.milestones=[]", "runtime.batch_size=2", "runtime.log_every=1", "runtime.progress=false",
]
SMALL_DATA = ["data.synthetic_num_train=2", "data.synthetic_num_val=3"]




def ok(capsys, argv) -> str:
    capsys.readouterr()
    rc = exit_code(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (links followed), or of the file ``root``."""
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An (untrained) checkpoint of the synthetic preset's network."""
    from rtpanoptic.config import to_dict
    from rtpanoptic.engine.checkpoint import save_checkpoint
    from rtpanoptic.pipeline import build_network, train_config

    cfg = train_config("synthetic")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "ck.pt"
    save_checkpoint(path, model=build_network(cfg), step=0, config=to_dict(cfg))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A small synthetic tree as the checkpoint's config (with SMALL_DATA) generates it."""
    from rtpanoptic.data import generate_synthetic
    from rtpanoptic.engine.factories import synthetic_config
    from rtpanoptic.pipeline import train_config

    root = tmp_path_factory.mktemp("data") / "syn"
    generate_synthetic(root, synthetic_config(train_config("synthetic", None, SMALL_DATA)), progress=False)
    return root


def images(folder: Path, names=("a", "b"), size=(64, 64)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        Image.fromarray(np.full((*size, 3), 40 * k + 20, np.uint8)).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def predict(ckpt, inputs, out, *extra) -> list:
    argv = ["predict", "--checkpoint", ckpt, "--output-dir", out, "--no-progress", "--device", "cpu", *extra]
    for i in inputs:
        argv += ["-i", i]
    return argv


def evaluate(ckpt, data, out, *extra) -> list:
    return ["evaluate", "--checkpoint", ckpt, "--data-root", data, "--output-dir", out, "--no-progress",
            "--device", "cpu", "--overlays", "1", *SMALL_DATA, *extra]


# ------------------------------------------------------------------------------ 1. deleting through links
def _linked_tree(tmp_path: Path, other: Path, record: bool) -> Path:
    """A folder holding a copy of ``other``'s marker (and record) and links to its three folders."""
    b = tmp_path / "b"
    b.mkdir()
    (b / "synthetic_config.json").write_bytes((other / "synthetic_config.json").read_bytes())
    if record and (other / ".synthetic_files.jsonl").exists():  # (a record is what a hostile copy could add)
        (b / ".synthetic_files.jsonl").write_bytes((other / ".synthetic_files.jsonl").read_bytes())
    for name in ("images", "panoptic", "annotations"):
        (b / name).symlink_to(other / name, target_is_directory=True)
    return b


@pytest.mark.parametrize("record", [False, True])
def test_train_never_deletes_through_a_linked_synthetic_tree(data_root, tmp_path, capsys, record):
    import shutil

    other = tmp_path / "a"
    shutil.copytree(data_root, other)
    before = digest(other)
    b = _linked_tree(tmp_path, other, record)
    one_line_error(capsys, ["train", "--output-dir", tmp_path / "t", "--device", "cpu", f"data.root={b}", *TINY],
                   b, "images")
    assert digest(other) == before  # the linked tree is whole
    assert all((b / n).is_symlink() for n in ("images", "panoptic", "annotations"))


def test_a_users_file_of_a_generator_name_is_not_deleted(data_root, tmp_path, capsys):
    """The marker alone (copied) with a user's file named as the generator names its files."""
    b = tmp_path / "b"
    (b / "images" / "train").mkdir(parents=True)
    (b / "synthetic_config.json").write_bytes((data_root / "synthetic_config.json").read_bytes())
    photo = b / "images" / "train" / "train_000000.png"
    photo.write_bytes(b"my holiday photo")
    one_line_error(capsys, ["train", "--output-dir", tmp_path / "t", "--device", "cpu", f"data.root={b}", *TINY],
                   b, "train_000000.png")
    assert photo.read_bytes() == b"my holiday photo"


def test_a_changed_generated_file_is_not_deleted(tmp_path):
    """A recorded file whose size changed (the user replaced it) is foreign: nothing is deleted."""
    from rtpanoptic.data import DatasetError, SyntheticConfig, generate_synthetic

    root = tmp_path / "syn"
    generate_synthetic(root, SyntheticConfig(num_train=2, num_val=1, seed=1), progress=False)
    mine = root / "images" / "train" / "train_000001.png"
    mine.write_bytes(b"the user's own picture")
    before = digest(root)
    with pytest.raises(DatasetError, match="train_000001.png"):
        generate_synthetic(root, SyntheticConfig(num_train=1, num_val=1, seed=2), progress=False)
    assert digest(root) == before


# ------------------------------------------------------------------------------ 2, 11. outputs over inputs
def test_export_output_is_the_checkpoint(checkpoint, tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(checkpoint.read_bytes())
    before = digest(ck)
    os.link(ck, tmp_path / "hard.pt")
    (tmp_path / "soft.pt").symlink_to(ck)
    for out in (ck, tmp_path / "hard.pt", tmp_path / "soft.pt", tmp_path / "." / "ck.pt"):
        one_line_error(capsys, ["export", "--checkpoint", ck, "--output", out, "--no-check"], "--output", "ck.pt")
    assert digest(ck) == before


@pytest.mark.parametrize("command", ["evaluate", "benchmark"])
def test_json_output_is_the_checkpoint(command, checkpoint, data_root, tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(checkpoint.read_bytes())
    before = digest(ck)
    argv = (evaluate(ck, data_root, tmp_path / "ev", "--json", ck) if command == "evaluate" else
            ["benchmark", "--checkpoint", ck, "--json", ck, "--iters", "1", "--image-size", "128", "128", "--no-ops",
             "--device", "cpu"])
    one_line_error(capsys, argv, "--json", "ck.pt")
    assert digest(ck) == before
    assert not (tmp_path / "ev").exists()  # refused before any work


def test_evaluate_json_is_the_datasets_annotations(checkpoint, data_root, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    before = digest(data)
    one_line_error(capsys, evaluate(checkpoint, data, tmp_path / "ev", "--json", data / "annotations" / "panoptic_val.json"),
                   "--json", "panoptic_val.json")
    assert digest(data) == before


def test_evaluate_predictions_folder_is_the_ground_truth(checkpoint, data_root, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    before = digest(data)
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "predictions").symlink_to(data / "panoptic" / "val", target_is_directory=True)
    one_line_error(capsys, evaluate(checkpoint, data, tmp_path / "ev"), "predictions", "annotation PNGs")
    assert digest(data) == before


def test_predict_output_is_the_input_photo(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    (holiday,) = images(photos / "panoptic", ["holiday"])
    before = digest(photos)
    one_line_error(capsys, predict(checkpoint, [holiday], photos), "holiday.png", "is the input")
    assert digest(photos) == before and not (photos / "panoptic.json").exists()


def test_predict_output_hard_linked_to_an_input(checkpoint, tmp_path, capsys):
    (a,) = images(tmp_path / "in", ["a"])
    (tmp_path / "out" / "overlays").mkdir(parents=True)
    os.link(a, tmp_path / "out" / "overlays" / "a.png")
    before = digest(tmp_path / "in")
    one_line_error(capsys, predict(checkpoint, [a], tmp_path / "out"), "overlays", "a.png")
    assert digest(tmp_path / "in") == before


def test_train_config_yaml_is_the_users_config(tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "config.yaml").write_text("optim:\n  lr: 0.001\n")
    one_line_error(capsys, ["train", "--config", out / "config.yaml", "--output-dir", out, "--device", "cpu",
                            f"data.root={tmp_path / 'd'}", *TINY], "config.yaml", "--config")
    assert (out / "config.yaml").read_text() == "optim:\n  lr: 0.001\n"
    assert not (tmp_path / "d").exists()  # before any work


def _video(tmp_path: Path) -> Path:
    pytest.importorskip("av")
    from rtpanoptic.video import VideoWriter

    path = tmp_path / "in.mkv"
    with VideoWriter(path, 25, (64, 64), codec="ffv1") as w:
        for t in range(2):
            w.write(np.full((64, 64, 3), 60 * t, np.uint8))
    return path


def test_video_stats_json_is_the_video(checkpoint, tmp_path, capsys):
    video = _video(tmp_path)
    before = digest(video)
    base = ["predict", "--checkpoint", checkpoint, "--video", video, "--no-progress", "--device", "cpu", "--codec", "ffv1"]
    one_line_error(capsys, [*base, "--output", tmp_path / "o.mkv", "--stats-json", tmp_path / "o.mkv"],
                   "--stats-json", "o.mkv", "same file")
    assert not (tmp_path / "o.mkv").exists()
    one_line_error(capsys, [*base, "--output", tmp_path / "o.mkv", "--stats-json", video, "--overwrite"],
                   "--stats-json", "in.mkv")
    assert digest(video) == before


# ------------------------------------------------------------------------------ 6, 17. one run per folder
def test_predict_twice_into_one_folder_keeps_only_the_last_run(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "panoptic").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "panoptic" / "mine.png").write_bytes(b"mine")
    ok(capsys, predict(checkpoint, images(tmp_path / "first", ["a", "b"]), out))
    ok(capsys, predict(checkpoint, images(tmp_path / "second", ["c"]), out))
    index = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in index["annotations"]] == ["c.png"]
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == ["c.png", "mine.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["c.png"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "panoptic" / "mine.png").read_bytes() == b"mine"


def _interrupt_after(monkeypatch, n: int) -> None:
    """The n+1-th PNG written raises KeyboardInterrupt (Ctrl-C in the middle of a run)."""
    import rtpanoptic.viz as viz

    real, calls = viz.write_coco_panoptic, {"n": 0}

    def write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(viz, "write_coco_panoptic", write)


def test_interrupted_predict_leaves_no_stale_index(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    ok(capsys, predict(checkpoint, images(tmp_path / "in", ["a", "b", "c"]), out))
    new = images(tmp_path / "new", ["a", "b", "c"], size=(64, 96))
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert exit_code(predict(checkpoint, new, out)) == 130
    assert not (out / "panoptic.json").exists()  # the folder does not look complete
    ok(capsys, predict(checkpoint, new[:2], out))
    index = json.loads((out / "panoptic.json").read_text())
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == sorted(a["file_name"] for a in index["annotations"])
    assert all(Image.open(out / "panoptic" / f"{n}.png").size == (96, 64) for n in ("a", "b"))


def test_interrupted_evaluate_leaves_no_stale_metrics(checkpoint, data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ev"
    ok(capsys, evaluate(checkpoint, data_root, out))
    assert (out / "metrics.json").is_file()
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert exit_code(evaluate(checkpoint, data_root, out)) == 130
    assert not (out / "metrics.json").exists() and not (out / "predictions.json").exists()
    assert len(list((out / "predictions").iterdir())) == 1  # only what the interrupted run wrote


# ------------------------------------------------------------------------------ 7. one run at a time
@pytest.fixture
def held_folder(tmp_path):
    """A folder that another process holds (the lock protocol: flock on .rtpanoptic.lock, its pid inside)."""
    folder = tmp_path / "busy"
    folder.mkdir()
    code = ("import fcntl, os, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write(str(os.getpid())); f.flush(); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / ".rtpanoptic.lock")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc.pid
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_a_second_run_into_a_held_folder(command, held_folder, checkpoint, data_root, tmp_path, capsys):
    folder, pid = held_folder
    temporary = folder / ".last.pt.abcd1234.tmp"  # the first run's checkpoint being written
    temporary.write_bytes(b"half a checkpoint")
    argv = {
        "train": ["train", "--output-dir", folder, "--device", "cpu", f"data.root={tmp_path / 'd'}", *TINY],
        "predict": predict(checkpoint, images(tmp_path / "in", ["a"]), folder),
        "evaluate": evaluate(checkpoint, data_root, folder),
    }[command]
    one_line_error(capsys, argv, folder, f"pid {pid}")
    assert temporary.read_bytes() == b"half a checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == [".last.pt.abcd1234.tmp", ".rtpanoptic.lock"]


def test_held_folder_through_the_real_entry_point(held_folder, checkpoint, tmp_path):
    folder, pid = held_folder
    proc = subprocess.run([sys.executable, "-m", "rtpanoptic",
                           *map(str, predict(checkpoint, images(tmp_path / "in", ["a"]), folder))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(folder) in proc.stderr and f"pid {pid}" in proc.stderr


# ------------------------------------------------------------------------------ 14. links in the output folder
def test_links_in_the_output_folder_are_replaced(checkpoint, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.png"
    victim.write_bytes(b"not yours")
    (outside / "index.json").write_text("{}")
    (outside / "a.png").write_bytes(b"not yours either")
    out = tmp_path / "out"
    (out / "panoptic").mkdir(parents=True)
    (out / "panoptic" / "a.png").symlink_to(victim)
    (out / "panoptic.json").symlink_to(outside / "index.json")
    (out / "overlays").symlink_to(outside, target_is_directory=True)
    before = digest(outside)
    ok(capsys, predict(checkpoint, images(tmp_path / "in", ["a"]), out))
    assert digest(outside) == before
    for p in (out / "panoptic" / "a.png", out / "panoptic.json", out / "overlays"):
        assert not p.is_symlink(), p
    assert Image.open(out / "panoptic" / "a.png").size == (64, 64)


def test_a_json_output_link_is_replaced(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    (tmp_path / "b.json").symlink_to(victim)
    ok(capsys, ["benchmark", "--device", "cpu", "--iters", "1", "--image-size", "128", "128", "--no-ops",
                "--json", tmp_path / "b.json"])
    assert victim.read_text() == "not yours"
    assert not (tmp_path / "b.json").is_symlink() and json.loads((tmp_path / "b.json").read_text())


# ------------------------------------------------------------------------------ 15, 16. video and weights options
def test_unknown_codec_names_the_users_output(checkpoint, tmp_path, capsys, monkeypatch):
    video = _video(tmp_path)
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, ["predict", "--checkpoint", checkpoint, "--video", video, "--output",
                                  tmp_path / "elsewhere" / "o.mkv", "--codec", "nonsense", "--device", "cpu"],
                         "o.mkv", "nonsense")
    assert ".o-" not in err and ".tmp" not in err
    assert not (tmp_path / "runs").exists()  # --output elsewhere: no empty ./runs/predict


def test_video_output_elsewhere_creates_no_runs_folder(checkpoint, tmp_path, capsys, monkeypatch):
    video = _video(tmp_path)
    monkeypatch.chdir(tmp_path)
    ok(capsys, ["predict", "--checkpoint", checkpoint, "--video", video, "--output", tmp_path / "v" / "o.mkv",
                "--codec", "ffv1", "--device", "cpu", "--no-progress"])
    assert (tmp_path / "v" / "o.mkv").is_file() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("pair", [["--checkpoint", "A.pt", "--weights", "B.pt"],
                                  ["--weights", "A.pt", "--checkpoint", "B.pt"],
                                  ["--checkpoint", "A.pt", "--checkpoint", "B.pt"]])
@pytest.mark.parametrize("command", ["predict", "evaluate", "benchmark", "export"])
def test_weights_given_twice_is_refused(command, pair, capsys):
    one_line_error(capsys, [command, *pair, "--device", "cpu"], "A.pt", "B.pt", "twice")


# ------------------------------------------------------------------------------ 18. file modes
@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_checkpoint_and_outputs_follow_the_umask(umask_022, tmp_path, capsys):
    ok(capsys, ["train", "--output-dir", tmp_path / "t", "--device", "cpu", f"data.root={tmp_path / 'd'}", *TINY])
    for p in (tmp_path / "t" / "last.pt", tmp_path / "t" / "config.yaml", tmp_path / "d" / "images" / "train" /
              "train_000000.png"):
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))


def test_video_and_stats_follow_the_umask(umask_022, checkpoint, tmp_path, capsys):
    video = _video(tmp_path)
    out = tmp_path / "o.mkv"
    ok(capsys, ["predict", "--checkpoint", checkpoint, "--video", video, "--output", out, "--codec", "ffv1",
                "--device", "cpu", "--no-progress", "--panoptic-dir", tmp_path / "pan"])
    for p in (out, tmp_path / "o.latency.json", tmp_path / "pan" / "panoptic.json", tmp_path / "pan" / "frame_000000.png"):
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))
