"""Inputs are checked before they are used (issue 25): evaluate names its predictions as predict
does, a dataset file is validated whole before any work, every image is read by one function
(every PIL mode, 16-bit scaled, EXIF orientation, a pixel limit, unreadable files skipped and
reported), every numeric config field has a range, weights never become non-finite unnoticed,
and config files and ``backbone.pretrained`` files give one line.  Each case runs the CLI's
``main`` (the entry point ``python -m rtpanoptic`` calls) and checks its exit status, its one
line on stderr and its outputs."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import one_line_error
from PIL import Image

from rtpanoptic.cli import main

TINY = [
    "data.synthetic_num_train=4", "data.synthetic_num_val=3", "schedule.max_steps=1", "schedule.warmup_steps=0",
    "schedule.milestones=[]", "runtime.batch_size=2", "runtime.log_every=1", "runtime.progress=false",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step synthetic training run: ``(checkpoint, data root)``."""
    root = tmp_path_factory.mktemp("run")
    assert main(["train", "--output-dir", str(root / "train"), "--device", "cpu", f"data.root={root / 'data'}",
                 *TINY]) == 0
    return root / "train" / "last.pt", root / "data"




# ------------------------------------------------------------------------------ datasets
def dataset_copy(data: Path, dst: Path, edit=None) -> Path:
    """A copy of the synthetic tree whose val JSON ``edit(json)`` changed (in place)."""
    shutil.copytree(data, dst)
    path = dst / "annotations" / "panoptic_val.json"
    content = json.loads(path.read_text())
    if edit is not None:
        edit(content)
    path.write_text(json.dumps(content))
    return dst


def evaluate(ckpt, root: Path, out: Path) -> list[str]:
    return ["evaluate", "--checkpoint", ckpt, "--data-root", root, "--output-dir", out, "--no-progress",
            "--overlays", "0", "--device", "cpu"]


def _two_frames(content: dict, names: tuple[str, str]) -> None:
    """Keep the first two val images, renamed ``names`` (files moved by the caller)."""
    content["images"] = content["images"][:2]
    content["annotations"] = content["annotations"][:2]
    for img, name in zip(content["images"], names):
        img["file_name"] = name


def test_evaluate_names_predictions_like_predict(run, tmp_path, capsys):
    # a/frame.png and b/frame.png were both written to predictions/frame.png (PQ of a mix-up, exit 0)
    ckpt, data = run
    scores = {}
    for layout, names in (("nested", ("a/frame.png", "b/frame.png")), ("flat", ("x.png", "y.png"))):
        root = dataset_copy(data, tmp_path / layout, lambda c, n=names: _two_frames(c, n))
        val = root / "images" / "val"
        for src, name in zip(("val_000000.png", "val_000001.png"), names):
            (val / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(val / src, val / name)
        assert main([str(a) for a in evaluate(ckpt, root, tmp_path / f"ev_{layout}")]) == 0
        scores[layout] = json.loads((tmp_path / f"ev_{layout}" / "metrics.json").read_text())
    nested, flat = tmp_path / "ev_nested", tmp_path / "ev_flat"
    preds = json.loads((nested / "predictions.json").read_text())["annotations"]
    # predict's names for two files of one name: <stem>_<suffix>, then _2 (pipeline.output_names)
    assert [(a["image_id"], a["file_name"]) for a in preds] == [("val_000000", "frame_png.png"),
                                                                ("val_000001", "frame_png_2.png")]
    assert sorted(p.name for p in (nested / "predictions").iterdir()) == ["frame_png.png", "frame_png_2.png"]
    for mine, same in (("frame_png.png", "x.png"), ("frame_png_2.png", "y.png")):  # each image its own PNG
        assert (nested / "predictions" / mine).read_bytes() == (flat / "predictions" / same).read_bytes()
    for key in ("PQ", "SQ", "RQ", "mIoU"):
        assert scores["nested"][key] == scores["flat"][key], key


def _repeat_image_id(c):
    c["images"][1]["id"] = c["images"][0]["id"]
    c["annotations"] = c["annotations"][:1] + c["annotations"][2:]


def _repeat_annotation(c):
    c["annotations"][1] = dict(c["annotations"][1], image_id=c["annotations"][0]["image_id"])


def _string_iscrowd(c):
    c["annotations"][2]["segments_info"][0]["iscrowd"] = "false"


def _repeat_category(c):
    c["categories"].append(dict(c["categories"][0], name="again"))


def _string_category_id(c):
    c["categories"][1]["id"] = str(c["categories"][1]["id"])


def _bad_area(c):
    c["annotations"][0]["segments_info"][0]["area"] = "12"


@pytest.mark.parametrize("edit,where", [
    (_repeat_image_id, "images[1]"),
    (_repeat_annotation, "annotations[1]"),
    (_string_iscrowd, "annotations[2].segments_info[0]: iscrowd"),
    (_repeat_category, "categories[6]: category id"),
    (_string_category_id, "categories[1]: id"),
    (_bad_area, "annotations[0].segments_info[0]: area"),
])
def test_dataset_file_is_checked_whole_before_any_work(run, tmp_path, capsys, edit, where):
    ckpt, data = run
    root = dataset_copy(data, tmp_path / "data", edit)
    err = one_line_error(capsys, evaluate(ckpt, root, tmp_path / "ev"), where)
    assert str(root / "annotations" / "panoptic_val.json") in err and "gt.json" not in err
    assert not (tmp_path / "ev" / "predictions").exists()  # nothing was predicted


# ------------------------------------------------------------------------------ images
def _predict(ckpt, out: Path, *inputs, extra=()) -> list[str]:
    argv = ["predict", "--checkpoint", ckpt, "--output-dir", out, "--no-progress", "--device", "cpu", *extra]
    for i in inputs:
        argv += ["-i", i]
    return argv


def _gradient(h: int = 64, w: int = 80) -> np.ndarray:
    """uint8 [h, w] with many grey levels (independent of any model)."""
    return ((np.arange(h)[:, None] * 3 + np.arange(w)[None, :] * 2) % 256).astype(np.uint8)


def test_16_bit_png_is_scaled_to_8_bits(run, tmp_path):
    # mode I;16 was read as all 255 (convert("RGB") clips): a white image was segmented, exit 0
    ckpt, _ = run
    g8 = _gradient()
    Image.fromarray(np.repeat(g8[..., None], 3, 2)).save(tmp_path / "rgb.png")
    Image.fromarray(g8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # 16-bit: v * 257
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    assert main([str(a) for a in _predict(ckpt, tmp_path / "o", tmp_path / "rgb.png", tmp_path / "gray16.png")]) == 0
    overlays = {p: np.asarray(Image.open(tmp_path / "o" / "overlays" / f"{p}.png")) for p in ("rgb", "gray16")}
    panoptic = {p: np.asarray(Image.open(tmp_path / "o" / "panoptic" / f"{p}.png")) for p in ("rgb", "gray16")}
    np.testing.assert_array_equal(overlays["gray16"], overlays["rgb"])  # the overlay shows the input's pixels
    np.testing.assert_array_equal(panoptic["gray16"], panoptic["rgb"])


def _jpeg_with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied(run, tmp_path):
    # a phone photo tagged "rotate 90 cw" (6), 64 x 96 as stored, is 96 x 64 upright
    ckpt, _ = run
    stored = np.repeat(_gradient(64, 96)[..., None], 3, 2)
    _jpeg_with_orientation(tmp_path / "phone.jpg", stored, 6)
    assert main([str(a) for a in _predict(ckpt, tmp_path / "o", tmp_path / "phone.jpg")]) == 0
    index = json.loads((tmp_path / "o" / "panoptic.json").read_text())
    assert (index["images"][0]["height"], index["images"][0]["width"]) == (96, 64)
    assert np.asarray(Image.open(tmp_path / "o" / "panoptic" / "phone.png")).shape[:2] == (96, 64)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` RGB pixels (no pixel data: tiny on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_pixel_limit_one_line_naming_file_size_and_option(run, tmp_path, capsys):
    # 14000 x 14000 gave PIL's DecompressionBombError traceback; nothing limited 12000 x 12000 (~21 GB)
    ckpt, _ = run
    _png_header_only(tmp_path / "huge.png", 14000, 14000)
    one_line_error(capsys, _predict(ckpt, tmp_path / "o", tmp_path / "huge.png"),
                   "huge.png", "14000x14000", "data.max_pixels")
    Image.fromarray(_gradient()).save(tmp_path / "small.png")
    one_line_error(capsys, _predict(ckpt, tmp_path / "o2", tmp_path / "small.png", extra=["data.max_pixels=1000"]),
                   "small.png", "80x64", "1000", "data.max_pixels")


def test_pixel_limit_applies_to_dataset_images(run, tmp_path, capsys):
    ckpt, data = run
    one_line_error(capsys, [*evaluate(ckpt, data, tmp_path / "ev"), "data.max_pixels=100"],
                   "val_000000.png", "128x128", "data.max_pixels")


def test_truncated_image_in_a_folder_is_skipped_and_reported(run, tmp_path, capsys):
    # aborted the whole predict, no panoptic.json, message "(OSError)"
    ckpt, _ = run
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(_gradient()).save(folder / name)
    whole = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(whole[: len(whole) // 2])
    one_line_error(capsys, _predict(ckpt, tmp_path / "o", folder), str(folder / "b.png"), "truncated")
    index = json.loads((tmp_path / "o" / "panoptic.json").read_text())
    assert [im["file_name"] for im in index["images"]] == ["a.png", "c.png"]
    assert sorted(p.name for p in (tmp_path / "o" / "panoptic").iterdir()) == ["a.png", "c.png"]


# ------------------------------------------------------------------------------ config numbers
def train(tmp_path, *extra) -> list[str]:
    return ["train", "--output-dir", tmp_path / "t", "--device", "cpu", f"data.root={tmp_path / 'd'}", *TINY, *extra]


@pytest.mark.parametrize("override,field", [
    ("optim.lr=inf", "optim.lr"), ("optim.lr=1e300", "optim.lr"), ("runtime.threads=0", "runtime.threads"),
    ("data.synthetic_size=0", "data.synthetic_size"), ("data.scale=[0,0]", "data.scale"),
    ("loss.box_reg=nan", "loss.box_reg"), ("schedule.gamma=-1", "schedule.gamma"),
    ("data.synthetic_image_size=32", "data.synthetic_image_size"), ("runtime.seed=-1", "runtime.seed"),
    ("data.scale=[1.2,0.8]", "data.scale"), ("loss.focal_alpha=.inf", "loss.focal_alpha"),
])
def test_config_numbers_out_of_range_are_one_line(tmp_path, capsys, override, field):
    one_line_error(capsys, train(tmp_path, override), field)
    assert not (tmp_path / "d").exists() and not (tmp_path / "t" / "last.pt").exists()  # before any work


def test_non_finite_weights_are_never_saved(tmp_path, capsys, monkeypatch):
    # optim.lr=inf trained one step and saved 107 of 167 tensors non-finite, exit 0; here an
    # optimiser step that overflows (lr itself in range) must stop training before the save
    real_step = torch.optim.SGD.step

    def overflowing_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", overflowing_step)
    one_line_error(capsys, train(tmp_path), "non-finite weights", "step 1", "optim.lr")
    assert not (tmp_path / "t" / "last.pt").exists()


# ------------------------------------------------------------------------------ config files
def test_non_utf8_yaml_names_the_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes("optim:\n  lr: 0.01  # \xe9t\xe9\n".encode("latin-1"))
    one_line_error(capsys, ["train", "--config", tmp_path / "c.yaml"], str(tmp_path / "c.yaml"), "UTF-8")


def test_folder_as_config_is_reported_as_a_folder(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--config", tmp_path], str(tmp_path), "folder")
    assert "does not exist" not in err


def _pickle_file(path: Path, marker: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"conv1.weight": Payload()}, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "garbage", "pickle", "list"])
def test_backbone_pretrained_file_errors_are_one_line(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.pth"
    marker = tmp_path / "pwned"
    if kind == "garbage":
        path.write_bytes(b"\x00 not weights")
    elif kind == "pickle":
        _pickle_file(path, marker)
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    one_line_error(capsys, train(tmp_path, f"model.overrides=[backbone.pretrained={path}]"),
                   "backbone.pretrained", str(path))
    assert not marker.exists()


def test_through_a_fresh_process(tmp_path):
    """The same one line from ``python -m rtpanoptic`` (the console script's module)."""
    proc = subprocess.run([sys.executable, "-m", "rtpanoptic", "train", "optim.lr=inf"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "optim.lr must be a finite number" in proc.stderr


def test_video_output_of_unknown_container_is_one_line(run, tmp_path, capsys):
    # --output x.avi2 gave av.open's ValueError traceback
    pytest.importorskip("av")
    from rtpanoptic.video import VideoWriter

    ckpt, _ = run
    with VideoWriter(tmp_path / "in.mkv", 25, (32, 32), codec="ffv1") as writer:
        for _ in range(2):
            writer.write(np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "out"
    one_line_error(capsys, ["predict", "--checkpoint", ckpt, "--video", tmp_path / "in.mkv", "--output",
                            out / "x.avi2", "--no-progress", "--device", "cpu"], "x.avi2", "container")
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_dist_timeout_is_a_finite_positive_number(capsys, value):
    one_line_error(capsys, ["evaluate", "--checkpoint", "x.pt", "--dist-timeout", value], "--dist-timeout", value)
