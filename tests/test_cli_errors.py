"""The command line under hostile-but-honest use: a user's data is never deleted, a checkpoint is
never executed, outputs are checked before the work, and every error a user can fix is one line
on stderr with exit status 2 (issue 12)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import one_line_error
from PIL import Image

from rtpanoptic.cli import main

TINY = [
    "data.synthetic_num_train=8", "data.synthetic_num_val=4", "schedule.max_steps=2", "schedule.warmup_steps=1",
    "schedule.milestones=[]", "runtime.batch_size=2", "runtime.log_every=1", "runtime.progress=false",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny synthetic training run: ``(checkpoint, data root)``."""
    root = tmp_path_factory.mktemp("run")
    rc = main(["train", "--output-dir", str(root / "train"), "--device", "cpu", f"data.root={root / 'data'}", *TINY])
    assert rc == 0
    return root / "train" / "last.pt", root / "data"




def entry_point(*args, cwd=None):
    """The real entry point (``python -m rtpanoptic``) in a fresh process."""
    return subprocess.run([sys.executable, "-m", "rtpanoptic", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def user_dataset(root: Path) -> dict[str, bytes]:
    """A COCO-style dataset folder of a user (and a notes file): ``{relative path: bytes}``."""
    files = {
        "annotations/panoptic_val2017.json": json.dumps({"images": [], "annotations": [], "categories": []}).encode(),
        "annotations/panoptic_val2017/000001.png": b"\x89PNG not really",
        "images/000001.jpg": b"\xff\xd8 a photo",
        "panoptic/README": b"mine",
        "notes.txt": b"do not delete",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def assert_intact(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel
    assert not (root / "synthetic_config.json").exists()


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A .pt file whose unpickling would create ``marker`` (it must never be executed)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {}, "step": 1, "config": None, "payload": Payload()}, path)
    assert not marker.exists()
    return path


# ------------------------------------------------------------------------------ 1. data loss
def test_evaluate_never_deletes_a_users_dataset(run, tmp_path, capsys):
    ckpt, _ = run
    files = user_dataset(tmp_path / "coco")
    one_line_error(capsys, ["evaluate", "--checkpoint", str(ckpt), "--data-root", str(tmp_path / "coco"),
                            "--output-dir", str(tmp_path / "ev"), "--no-progress"],
                   str(tmp_path / "coco"), "annotations")
    assert_intact(tmp_path / "coco", files)


def test_train_never_deletes_a_users_dataset(tmp_path, capsys):
    files = user_dataset(tmp_path / "coco")
    one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                            f"data.root={tmp_path / 'coco'}", *TINY], str(tmp_path / "coco"))
    assert_intact(tmp_path / "coco", files)


def test_data_loss_through_the_real_entry_point(run, tmp_path):
    ckpt, _ = run
    files = user_dataset(tmp_path / "coco")
    proc = entry_point("evaluate", "--checkpoint", str(ckpt), "--data-root", str(tmp_path / "coco"),
                       "--output-dir", str(tmp_path / "ev"), "--no-progress")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(tmp_path / "coco") in proc.stderr
    assert_intact(tmp_path / "coco", files)


# ------------------------------------------------------------------------------ 2. code execution
@pytest.mark.parametrize("command", ["predict", "evaluate", "benchmark", "export", "train-resume"])
def test_a_checkpoint_is_never_executed(command, tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = str(hostile_checkpoint(tmp_path / "evil.pt", marker))
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    argv = {
        "predict": ["predict", "--checkpoint", ckpt, "-i", str(img), "--output-dir", str(tmp_path / "p")],
        "evaluate": ["evaluate", "--checkpoint", ckpt, "--output-dir", str(tmp_path / "e")],
        "benchmark": ["benchmark", "--checkpoint", ckpt, "--iters", "1", "--image-size", "128", "128"],
        "export": ["export", "--checkpoint", ckpt, "--output", str(tmp_path / "m.onnx")],
        "train-resume": ["train", "--output-dir", str(tmp_path / "t"), "--device", "cpu", f"runtime.resume={ckpt}",
                         f"data.root={tmp_path / 'data'}", *TINY],
    }[command]
    one_line_error(capsys, argv, "evil.pt")
    assert not marker.exists()


def test_checkpoint_not_executed_through_the_real_entry_point(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = hostile_checkpoint(tmp_path / "evil.pt", marker)
    proc = entry_point("predict", "--checkpoint", str(ckpt), "-i", str(tmp_path), "--output-dir", str(tmp_path / "p"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------ 3. predict names
def _predict(ckpt, inputs, out):
    argv = ["predict", "--checkpoint", str(ckpt), "--output-dir", str(out), "--no-progress"]
    for i in inputs:
        argv += ["-i", str(i)]
    assert main(argv) == 0
    return json.loads((out / "panoptic.json").read_text())


def test_predict_same_stem_gives_distinct_outputs(run, tmp_path, capsys):
    ckpt, _ = run
    a = np.zeros((64, 96, 3), np.uint8)
    b = np.full((80, 48, 3), 200, np.uint8)
    Image.fromarray(a).save(tmp_path / "img.png")
    Image.fromarray(b).save(tmp_path / "img.jpg", quality=100)
    (tmp_path / "other").mkdir()
    Image.fromarray(b).save(tmp_path / "other" / "img.png")
    data = _predict(ckpt, [tmp_path / "img.png", tmp_path / "img.jpg", tmp_path / "other" / "img.png"], tmp_path / "o")
    anns = data["annotations"]
    assert len(anns) == 3 and "3 images" in capsys.readouterr().out
    assert len({a["image_id"] for a in anns}) == 3 and len({a["file_name"] for a in anns}) == 3
    assert sorted(p.name for p in (tmp_path / "o" / "panoptic").iterdir()) == sorted(a["file_name"] for a in anns)
    shapes = {a["image_id"]: np.array(Image.open(tmp_path / "o" / "panoptic" / a["file_name"])).shape[:2] for a in anns}
    assert sorted(shapes.values()) == [(64, 96), (80, 48), (80, 48)]
    assert [im["id"] for im in data["images"]] == [a["image_id"] for a in anns]


def test_predict_one_file_given_twice_is_predicted_once(run, tmp_path, capsys):
    ckpt, _ = run
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img.png")
    data = _predict(ckpt, [tmp_path / "img.png", tmp_path / "img.png", tmp_path], tmp_path / "o")
    assert [a["image_id"] for a in data["annotations"]] == ["img"]
    assert "1 images" in capsys.readouterr().out


# ------------------------------------------------------------------------------ 8, 9. overrides
def test_float_spellings_are_numbers(tmp_path):
    from rtpanoptic.config import load_config
    from rtpanoptic.engine import TrainConfig

    for text, value in (("1e-3", 1e-3), ("1E-3", 1e-3), ("+2.5e+1", 25.0), ("1_000.5", 1000.5), (".5", 0.5)):
        assert load_config(TrainConfig, None, [f"optim.lr={text}"]).optim.lr == value
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-3\n  clip_grad_norm: 5e0\n")
    cfg = load_config(TrainConfig, tmp_path / "c.yaml")
    assert cfg.optim.lr == 1e-3 and cfg.optim.clip_grad_norm == 5.0
    assert load_config(TrainConfig, None, ["runtime.time_limit_s=6e2"]).runtime.time_limit_s == 600.0


def test_float_override_on_the_command_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-3\n")
    rc = main(["train", "--output-dir", str(tmp_path / "t"), "--device", "cpu", f"data.root={tmp_path / 'd'}",
               *TINY, "schedule.max_steps=1", "optim.lr=1e-3", "--config", str(tmp_path / "c.yaml")])
    assert rc == 0
    saved = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    assert saved["config"]["optim"]["lr"] == 1e-3


def test_non_numbers_are_still_refused(capsys):
    one_line_error(capsys, ["train", "optim.lr=fast"], "optim.lr", "expected a number")
    one_line_error(capsys, ["train", "optim.lr=true"], "expected a number")


def test_overrides_anywhere_on_the_line(tmp_path, capsys):
    rc = main(["train", *TINY, "--device", "cpu", "schedule.max_steps=1", "--output-dir", str(tmp_path / "t"),
               "runtime.log_every=3", f"data.root={tmp_path / 'd'}"])
    assert rc == 0
    saved = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    assert saved["step"] == 1 and saved["config"]["runtime"]["log_every"] == 3


def test_unknown_option_is_one_line(capsys):
    one_line_error(capsys, ["train", "--devcie", "cpu"], "--devcie")


# ------------------------------------------------------------------------------ 10. one-line errors
@pytest.fixture
def read_only_dir(tmp_path):
    """An existing folder nobody may write into (root ignores permission bits: /sys then)."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


def test_train_output_dir_read_only(read_only_dir, tmp_path, capsys):
    one_line_error(capsys, ["train", "--output-dir", str(read_only_dir / "run"), "--device", "cpu",
                            f"data.root={tmp_path / 'd'}", *TINY], str(read_only_dir))


def test_train_output_dir_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "f"), "--device", "cpu",
                            f"data.root={tmp_path / 'd'}", *TINY], str(tmp_path / "f"))


def test_predict_output_dir_read_only(run, read_only_dir, tmp_path, capsys):
    ckpt, _ = run
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    one_line_error(capsys, ["predict", "--checkpoint", str(ckpt), "-i", str(tmp_path / "img.png"),
                            "--output-dir", str(read_only_dir)], str(read_only_dir))


def test_predict_output_dir_is_a_file(run, tmp_path, capsys):
    ckpt, _ = run
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "f").write_text("x")
    one_line_error(capsys, ["predict", "--checkpoint", str(ckpt), "-i", str(tmp_path / "img.png"),
                            "--output-dir", str(tmp_path / "f")], str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "x"


def test_evaluate_corrupt_dataset_file(run, tmp_path, capsys):
    ckpt, data = run
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    bad = sorted((copy / "images" / "val").glob("*.png"))[1]
    bad.write_bytes(b"not a png")
    one_line_error(capsys, ["evaluate", "--checkpoint", str(ckpt), "--data-root", str(copy),
                            "--output-dir", str(tmp_path / "ev"), "--no-progress"], bad.name)


def test_evaluate_unknown_split(run, tmp_path, capsys):
    ckpt, _ = run
    one_line_error(capsys, ["evaluate", "--checkpoint", str(ckpt), "--split", "test",
                            "--output-dir", str(tmp_path / "ev"), "--no-progress"], "'test'")


def test_evaluate_negative_max_images(run, tmp_path, capsys):
    ckpt, _ = run
    one_line_error(capsys, ["evaluate", "--checkpoint", str(ckpt), "--max-images", "-3",
                            "--output-dir", str(tmp_path / "ev"), "--no-progress"], "--max-images")


@pytest.mark.parametrize("args", [["--iters", "0"], ["--batch", "0"], ["--image-size", "0", "0"]])
def test_benchmark_bad_sizes(args, capsys):
    one_line_error(capsys, ["benchmark", "--device", "cpu", *args], args[0])


def test_benchmark_json_is_checked_before_the_work(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    err = one_line_error(capsys, ["benchmark", "--device", "cpu", "--iters", "1", "--image-size", "128", "128",
                                  "--no-ops", "--json", str(tmp_path / "f" / "b.json")], str(tmp_path / "f"))
    assert "network" not in capsys.readouterr().out + err  # nothing was timed


def test_benchmark_json_into_a_new_folder(tmp_path, capsys):
    js = tmp_path / "new" / "sub" / "b.json"
    rc = main(["benchmark", "--device", "cpu", "--iters", "1", "--image-size", "128", "128", "--no-ops",
               "--json", str(js)])
    assert rc == 0 and json.loads(js.read_text())["end_to_end_ms"] > 0


def test_train_disk_full_during_checkpoint_save(tmp_path, capsys, monkeypatch):
    import builtins

    def full_disk(path, mode="r", *args, **kwargs):  # the checkpoint's temporary file lies on a full disk
        return builtins.open("/dev/full", mode, *args, **kwargs)

    monkeypatch.setattr("rtpanoptic.engine.checkpoint.open", full_disk, raising=False)
    one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "t"), "--device", "cpu",
                            f"data.root={tmp_path / 'd'}", *TINY], "disk", "full")
    assert [p.name for p in (tmp_path / "t").iterdir() if p.name.endswith(".tmp")] == []


def test_resume_from_a_truncated_checkpoint(run, tmp_path, capsys):
    ckpt, data = run
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "t"), "--device", "cpu",
                            f"runtime.resume={cut}", f"data.root={data}", *TINY], "cut.pt")


def test_resume_from_another_architecture(run, tmp_path, capsys):
    ckpt, data = run
    err = one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "t"), "--device", "cpu",
                                  f"runtime.resume={ckpt}", f"data.root={data}", *TINY,
                                  "model.overrides=[backbone.norm=bn,fpn.channels=16]"], "last.pt")
    assert len(err) < 400


def test_resume_from_a_missing_path(run, tmp_path, capsys):
    _, data = run
    one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "t"), "--device", "cpu",
                            f"runtime.resume={tmp_path / 'none.pt'}", f"data.root={data}", *TINY], "none.pt")


def test_optional_fields_are_type_checked(capsys):
    # float | None fields: their values are checked as floats too (a string used to pass through)
    one_line_error(capsys, ["train", "optim.clip_grad_norm=abc"], "optim.clip_grad_norm", "expected a number")
    one_line_error(capsys, ["train", "runtime.eval_max_images=lots"], "expected an integer")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("flags, named", [
    (["--precision", "fp32"], "drop --precision or --fast"),
    (["--no-channels-last", "--compile"], "drop --[no-]channels-last, --compile or --fast"),
])
def test_fast_with_the_options_it_chooses_is_refused(command, flags, named, tmp_path, capsys):
    """--fast picks precision, memory format and compilation: giving one of them too is a one-line
    error, before any model or dataset is read (the checkpoint does not exist)."""
    inputs = ["-i", str(tmp_path / "img.png")] if command == "predict" else []
    one_line_error(capsys, [command, "--checkpoint", str(tmp_path / "missing.pt"), *inputs, "--device", "cpu",
                            "--output-dir", str(tmp_path / "out"), "--fast", *flags],
                   "--fast chooses the precision, memory format and compilation itself", named)
