"""Video files: PyAV reading and writing, ``predict_video`` and ``rtpanoptic predict --video``, on short
synthetic videos written here (lossless FFV1 in Matroska for the exact comparisons, H.264 in MP4 as
users have it)."""
import json
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from rtpanoptic.cli import main
from rtpanoptic.data.panoptic_format import rgb2id
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model
from rtpanoptic.pipeline import UsageError
from rtpanoptic.viz import overlay

av = pytest.importorskip("av")

from rtpanoptic.video import (  # noqa: E402  (after the PyAV check)
    VideoError,
    VideoReader,
    VideoWriter,
    predict_video,
    require_av,
    stats_path_for,
)

N_FRAMES, H, W = 5, 96, 160


def synthetic_frames(n=N_FRAMES, h=H, w=W):
    """Moving coloured shapes on a gradient: frames that differ, with things for the model to find."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        f = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 40)], -1).astype(np.uint8)
        x0 = 10 + 9 * t
        f[20:60, x0 : x0 + 30] = (220, 30, 30)
        cy, cx = 60, w - 30 - 5 * t
        f[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = (30, 200, 60)
        frames.append(f)
    return frames


def write_video(path, frames, codec="ffv1", fps=Fraction(25)):
    with VideoWriter(path, fps, frames[0].shape[:2], codec=codec) as writer:
        for f in frames:
            writer.write(f)
    return path


def decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("r18-fpn", description="synthetic", channels=16).eval()
    with torch.no_grad():  # a random network that still finds things: every box ~32 px, p ~ 0.5
        m.panoptic_head.box_cls_logits.bias.fill_(0.0)
        m.panoptic_head.bbox_pred.bias.fill_(float(np.log(16.0)))
    return m


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "in.mkv", synthetic_frames())


def _predictor(model):
    return Predictor(model, pre_nms_thresh=0.3, post_nms_top_n=20, sigma=0.05)


def test_reader_gives_the_written_frames(video):
    with VideoReader(video) as reader:
        assert reader.size == (H, W) and reader.fps == 25
        frames = list(reader)
    assert len(frames) == N_FRAMES
    assert all(f.dtype == np.uint8 and f.shape == (H, W, 3) for f in frames)
    for got, want in zip(frames, synthetic_frames()):  # FFV1 in RGB: lossless
        assert np.array_equal(got, want)


def test_predict_video_overlays_equal_the_predictors(model, video, tmp_path, capsys):
    pred = _predictor(model)
    out = tmp_path / "out.mkv"
    report = predict_video(pred, video, out, batch_size=3, panoptic_dir=tmp_path / "pan", codec="ffv1",
                           progress=False)
    decoded_in = decode(video)
    written = decode(out)
    assert len(written) == N_FRAMES and written[0].shape == (H, W, 3)
    # the Predictor on the same decoded frames, in the same batches of 3
    expected = []
    for start in range(0, N_FRAMES, 3):
        expected += pred(decoded_in[start : start + 3])
    assert sum(len(r.segments_info) for r in expected) > N_FRAMES  # segments to draw and label
    for i, (got, frame, res) in enumerate(zip(written, decoded_in, expected)):
        assert np.array_equal(got, overlay(frame, res)), f"frame {i}"
        ids = rgb2id(np.asarray(Image.open(tmp_path / "pan" / f"frame_{i:06d}.png")))
        assert np.array_equal(ids, res.panoptic.numpy())
    pan = json.loads((tmp_path / "pan" / "panoptic.json").read_text())
    assert [a["image_id"] for a in pan["annotations"]] == [f"frame_{i:06d}" for i in range(N_FRAMES)]
    assert [len(a["segments_info"]) for a in pan["annotations"]] == [len(r.segments_info) for r in expected]
    # latency: every stage, per frame; saved beside the video and printed
    stats = json.loads(stats_path_for(out).read_text())
    assert stats == json.loads(json.dumps(report))
    assert stats["frames"] == N_FRAMES and stats["fps"] > 0 and stats["codec"] == "ffv1"
    assert list(stats["latency_ms"]) == ["decode", "preprocess", "network", "postprocess", "overlay", "encode"]
    for s in stats["latency_ms"].values():
        assert s["frames"] == N_FRAMES and 0 <= s["p50"] <= s["p95"] and s["mean"] >= 0
    printed = capsys.readouterr().out
    assert "network" in printed and "p95" in printed and "frames/s" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.latency.json", "out.mkv", "pan"]  # no temp file left


def test_h264_mp4(model, tmp_path):
    """The default for .mp4: H.264 (YUV 4:2:0, lossy), same rate, every frame; the decoded video is
    exactly what encoding the Predictor's overlays gives; an odd size is padded by one edge row /
    column (the encoder needs even sizes)."""
    frames = synthetic_frames(n=5, h=95, w=161)
    src = write_video(tmp_path / "odd.mkv", frames)
    pred = _predictor(model)
    report = predict_video(pred, src, tmp_path / "out.mp4", progress=False, echo=lambda *_: None)
    assert report["codec"] in ("libx264", "h264", "mpeg4") and report["pixel_format"] == "yuv420p"
    with VideoReader(tmp_path / "out.mp4") as r:
        assert r.fps == 25
        written = list(r)
    assert len(written) == 5 and written[0].shape == (96, 162, 3)
    want = [overlay(f, pred(f)[0]) for f in frames]
    reference = decode(write_video(tmp_path / "ref.mp4", want, codec=report["codec"]))
    for got, ref, exact in zip(written, reference, want):
        assert np.array_equal(got, ref)
        mse = np.mean((got[:95, :161].astype(np.float64) - exact) ** 2)
        assert 10 * np.log10(255**2 / mse) > 20  # PSNR in dB: small frames, saturated colours and text


def test_refuses_to_overwrite(model, video, tmp_path):
    pred = _predictor(model)
    out = tmp_path / "out.mkv"
    out.write_bytes(b"user's file")
    with pytest.raises(UsageError, match=r"out.mkv exists; pass --overwrite to replace it"):
        predict_video(pred, video, out, codec="ffv1", progress=False)
    assert out.read_bytes() == b"user's file"
    out2 = tmp_path / "b.mkv"
    stats_path_for(out2).write_text("{}")
    with pytest.raises(UsageError, match=r"b.latency.json exists; pass --overwrite"):
        predict_video(pred, video, out2, codec="ffv1", progress=False)
    (tmp_path / "pan").mkdir()
    (tmp_path / "pan" / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match=r"pan is not empty; pass --overwrite to write into it"):
        predict_video(pred, video, tmp_path / "c.mkv", panoptic_dir=tmp_path / "pan", codec="ffv1", progress=False)
    with pytest.raises(UsageError, match=r"is the input video"):
        predict_video(pred, video, video, overwrite=True, progress=False)
    predict_video(pred, video, out, codec="ffv1", overwrite=True, progress=False, panoptic_dir=tmp_path / "pan",
                  echo=lambda *_: None)
    assert len(decode(out)) == N_FRAMES
    assert (tmp_path / "pan" / "mine.txt").read_text() == "keep"  # other files are never touched


def test_failure_leaves_no_partial_file(model, video, tmp_path, monkeypatch):
    pred = _predictor(model)

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(pred, "postprocess", broken)
    with pytest.raises(RuntimeError, match="boom"):
        predict_video(pred, video, tmp_path / "out.mp4", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(model, tmp_path):
    pred = _predictor(model)
    with pytest.raises(UsageError, match=r"video .*missing.mp4 does not exist"):
        predict_video(pred, tmp_path / "missing.mp4", tmp_path / "o.mp4", progress=False)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(UsageError, match=r"cannot open .*junk.mp4 as a video"):
        predict_video(pred, junk, tmp_path / "o.mp4", progress=False)
    with pytest.raises(VideoError, match=r"no encoder for o.mp4: tried nosuchcodec"):
        VideoWriter(tmp_path / "o.mp4", 25, (32, 32), codec="nosuchcodec")
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(UsageError, match=r"--max-frames must be >= 1, got 0"):
        predict_video(pred, junk, tmp_path / "o.mp4", max_frames=0, progress=False)
    with pytest.raises(UsageError, match=r"--batch-size must be >= 1, got 0"):
        predict_video(pred, junk, tmp_path / "o.mp4", batch_size=0, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match=r"--cuda-graph needs the model on a CUDA device, not cpu"):
            predict_video(pred, junk, tmp_path / "o.mp4", cuda_graph=True, progress=False)


def test_max_frames(model, video, tmp_path):
    report = predict_video(_predictor(model), video, tmp_path / "o.mkv", codec="ffv1", max_frames=3,
                           progress=False, echo=lambda *_: None)
    assert report["frames"] == 3 and len(decode(tmp_path / "o.mkv")) == 3


def test_missing_pyav_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(ImportError, match=r"^video files need PyAV: pip install 'rtpanoptic\[video\]'$"):
        require_av()


# ----------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from rtpanoptic.config import to_dict
    from rtpanoptic.engine.checkpoint import save_checkpoint
    from rtpanoptic.pipeline import build_network, train_config

    cfg = train_config("synthetic")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, model=build_network(cfg), step=0, config=to_dict(cfg))
    return path


def test_cli_predict_video(checkpoint, video, tmp_path, capsys):
    out = tmp_path / "o.mkv"
    argv = ["predict", "--checkpoint", str(checkpoint), "--video", str(video), "--output", str(out), "--codec", "ffv1",
            "--batch-size", "2", "--panoptic-dir", str(tmp_path / "pan"), "--no-progress", "--device", "cpu",
            "--precision", "bf16"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"{N_FRAMES} frames 160x96" in text and "bf16 channels_last" in text
    assert len(decode(out)) == N_FRAMES and len(list((tmp_path / "pan").glob("frame_*.png"))) == N_FRAMES
    stats = json.loads((tmp_path / "o.latency.json").read_text())
    assert (stats["precision"], stats["channels_last"], stats["batch_size"]) == ("bf16", True, 2)
    # a second run refuses to replace the files: one line, exit status 2
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rtpanoptic predict: error: {out} exists; pass --overwrite to replace it"
    assert main([*argv, "--overwrite"]) == 0


def test_cli_predict_needs_images_or_a_video(checkpoint, video, capsys):
    for extra in ([], ["-i", str(video), "--video", str(video)]):
        assert main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "rtpanoptic predict: error: predict takes image inputs (-i/--input PATH) or one --video FILE"


def test_cli_without_pyav_is_one_line(checkpoint, video, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    rc = main(["predict", "--checkpoint", str(checkpoint), "--video", str(video), "--output", str(tmp_path / "o.mp4"),
               "--device", "cpu", "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        "rtpanoptic predict: error: video files need PyAV: pip install 'rtpanoptic[video]'")
