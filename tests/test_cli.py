"""The command line: demo --quick end to end, predict / evaluate / benchmark / export on its
checkpoint, every --help, and the one-line errors (exit status 2)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rtpanoptic.cli import main

# Even quicker than --quick: a handful of images and steps (what matters is that every stage runs
# and that the reported PQ is the one the written files give).
TINY = [
    "data.synthetic_num_train=8", "data.synthetic_num_val=4", "schedule.max_steps=2", "schedule.warmup_steps=1",
    "schedule.milestones=[]", "runtime.batch_size=2", "runtime.log_every=1",
]
COMMANDS = ("demo", "train", "evaluate", "predict", "benchmark", "export")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--quick", "--output-dir", str(out), "--no-progress", "--overlays", "2", "--device", "cpu", *TINY])
    assert rc == 0
    return out


def test_demo_writes_its_files(demo_run):
    out = demo_run
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2 and results["train_images"] == 8 and results["val_images"] == 4
    assert (out / "demo.png").stat().st_size > 0
    assert (out / "train" / "last.pt").is_file()
    pred = json.loads((out / "eval" / "predictions.json").read_text())
    assert len(pred["annotations"]) == 4
    assert sorted(p.name for p in (out / "eval" / "predictions").iterdir()) == sorted(a["file_name"] for a in pred["annotations"])
    assert len(list((out / "eval" / "overlays").glob("*.png"))) == 2
    assert results["history"] and all(np.isfinite(r["total"]) for r in results["history"] if "total" in r)


def test_demo_pq_is_computed_from_the_written_files(demo_run):
    from rtpanoptic.evaluation import pq_compute

    results = json.loads((demo_run / "results.json").read_text())
    m = results["metrics"]
    files = m["files"]
    pq = pq_compute(files["gt_json"], files["predictions_json"], files["gt_dir"], files["predictions_dir"],
                    workers=0, progress=False)
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        assert m[f"PQ{suffix}"] == pytest.approx(100 * pq[group]["pq"])
    assert 0.0 <= m["PQ"] <= 100.0 and np.isfinite(m["PQ"])
    assert 0.0 <= m["mIoU"] <= 100.0
    assert set(m["per_class_pq"]) == {"circle", "rectangle", "triangle", "sky", "ground", "wall"}


def _assert_predict_matches_predictor(checkpoint, images, out, min_segments=1):
    """``predict``'s files decode to what Predictor gives for the same image and checkpoint: the
    PNG's ids (R + 256 G + 256^2 B) are its panoptic map, panoptic.json its segments."""
    from PIL import Image

    from rtpanoptic.data.panoptic_format import rgb2id
    from rtpanoptic.inference import Predictor
    from rtpanoptic.pipeline import load_model
    from rtpanoptic.viz import coco_segments_info

    data = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in data["annotations"]] == [p.stem for p in images]
    predictor = Predictor(load_model(str(checkpoint))[0])
    for p, ann in zip(images, data["annotations"]):
        png = np.array(Image.open(out / "panoptic" / p.name))
        assert png.shape == np.array(Image.open(p)).shape  # same H, W, 3 channels of ids
        result = predictor(np.array(Image.open(p).convert("RGB")))[0]
        ids = rgb2id(png)
        assert np.array_equal(ids, result.panoptic.numpy())
        assert ann["segments_info"] == json.loads(json.dumps(coco_segments_info(result)))
        assert {s["id"] for s in ann["segments_info"]} == set(np.unique(ids).tolist()) - {0}
        assert len(ann["segments_info"]) >= min_segments


def test_predict_on_images(demo_run, tmp_path, capsys):
    images = sorted((demo_run / "data" / "images" / "val").glob("*.png"))[:2]
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(demo_run / "train" / "last.pt"), "-i", str(images[0]), "-i", str(images[1]),
               "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    _assert_predict_matches_predictor(demo_run / "train" / "last.pt", images, out)
    assert all((out / "overlays" / p.name).is_file() for p in images)
    assert "2 images" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_quick_reaches_a_pq_floor(tmp_path):
    """``demo --quick`` as a user runs it (the 150-step cap instead of its 75 s time cap, so the
    result does not depend on the machine's load): the model it trains segments the held-out
    images well above chance (measured: PQ 59, things 36, stuff 82), and ``predict`` with it
    writes what Predictor gives, on images with several segments."""
    out = tmp_path / "quick"
    rc = main(["demo", "--quick", "--output-dir", str(out), "--no-progress", "--overlays", "0", "--device", "cpu",
               "runtime.time_limit_s=100000"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert results["steps"] == 150
    assert m["PQ"] >= 45 and m["PQ_th"] >= 20 and m["PQ_st"] >= 60, {k: m[k] for k in ("PQ", "PQ_th", "PQ_st")}
    images = sorted((out / "data" / "images" / "val").glob("*.png"))[:2]
    rc = main(["predict", "--checkpoint", str(out / "train" / "last.pt"), "-i", str(images[0]), "-i", str(images[1]),
               "--output-dir", str(tmp_path / "pred"), "--no-progress", "--no-overlays"])
    assert rc == 0
    _assert_predict_matches_predictor(out / "train" / "last.pt", images, tmp_path / "pred", min_segments=3)


def test_predict_folder(demo_run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.full((100, 150, 3), 128, np.uint8)).save(folder / "grey.jpg")  # not a multiple of 128
    rc = main(["predict", "--checkpoint", str(demo_run / "train" / "last.pt"), "-i", str(folder),
               "--output-dir", str(tmp_path / "o"), "--no-progress", "--no-overlays"])
    assert rc == 0
    assert np.array(Image.open(tmp_path / "o" / "panoptic" / "grey.png")).shape == (100, 150, 3)


def test_evaluate_tiny_set(demo_run, tmp_path, capsys):
    js = tmp_path / "m.json"
    rc = main(["evaluate", "--checkpoint", str(demo_run / "train" / "last.pt"), "--max-images", "2",
               "--output-dir", str(tmp_path / "ev"), "--json", str(js), "--no-progress"])
    assert rc == 0
    m = json.loads(js.read_text())
    assert m["images"] == 2 and np.isfinite(m["PQ"]) and np.isfinite(m["mIoU"])
    assert len(json.loads((tmp_path / "ev" / "gt.json").read_text())["annotations"]) == 2
    assert "PQ" in capsys.readouterr().out


def test_benchmark_runs(demo_run, tmp_path):
    js = tmp_path / "b.json"
    rc = main(["benchmark", "--checkpoint", str(demo_run / "train" / "last.pt"), "--iters", "1",
               "--image-size", "128", "128", "--json", str(js)])
    assert rc == 0
    report = json.loads(js.read_text())
    assert report["end_to_end_ms"] > 0 and "reference" in report["ops"]["gather_levelness"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"rtpanoptic {command}" in text and "--config" in text and "--preset" in text


def test_python_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "rtpanoptic", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert all(c in proc.stdout for c in COMMANDS)


def _one_line_error(capsys, argv, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert match in err
    return err


def test_error_unknown_preset(capsys):
    _one_line_error(capsys, ["train", "--preset", "imagenet"], "unknown preset 'imagenet'")


def test_error_bad_override(capsys):
    _one_line_error(capsys, ["train", "schedule.max_steps"], "must look like key.sub=value")
    _one_line_error(capsys, ["train", "schedule.max_step=3"], "unknown key 'max_step'")
    _one_line_error(capsys, ["train", "schedule.max_steps=abc"], "expected an integer")


def test_error_missing_dataset_folder(capsys, tmp_path):
    _one_line_error(capsys, ["train", "--preset", "coco", f"data.root={tmp_path / 'nope'}"], "does not exist")


def test_error_missing_checkpoint(capsys, tmp_path):
    _one_line_error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "x.pt")], "does not exist")


def test_error_not_a_checkpoint(capsys, tmp_path):
    (tmp_path / "x.pt").write_text("hello")
    _one_line_error(capsys, ["predict", "--checkpoint", str(tmp_path / "x.pt"), "-i", str(tmp_path)], "not a readable")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_error_cuda_without_gpu(capsys):
    _one_line_error(capsys, ["train", "--device", "cuda"], "no CUDA GPU")
    _one_line_error(capsys, ["demo", "--quick", "runtime.device=cuda"], "no CUDA GPU")


def test_error_checkpoint_of_another_architecture(capsys, demo_run, tmp_path):
    ckpt = str(demo_run / "train" / "last.pt")
    _one_line_error(capsys, ["predict", "--checkpoint", ckpt, "-i", str(tmp_path), "--preset", "synthetic",
                             "model.overrides=[fpn.channels=16]"], "another architecture")


def test_error_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rtpanoptic", "evaluate", "--checkpoint", str(tmp_path / "none.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_export_torch_program(demo_run, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    rc = main(["export", "--checkpoint", str(demo_run / "train" / "last.pt"), "--format", "torch-export",
               "--image-size", "128", "128", "--output", str(out)])
    assert rc == 0 and out.stat().st_size > 0
    program = torch.export.load(str(out)).module()
    panoptic = program(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))[0]
    assert panoptic.shape == (128, 128)


def test_export_bad_size_is_one_line(demo_run, capsys):
    _one_line_error(capsys, ["export", "--checkpoint", str(demo_run / "train" / "last.pt"), "--image-size", "100", "128"],
                    "multiples of 128")


def test_train_then_evaluate_with_explicit_preset(tmp_path, capsys):
    data = tmp_path / "data"
    rc = main(["train", "--output-dir", str(tmp_path / "run"), "--device", "cpu", f"data.root={data}",
               "runtime.progress=false", *TINY])
    assert rc == 0
    ckpt = tmp_path / "run" / "last.pt"
    assert ckpt.is_file() and "trained 2 steps" in capsys.readouterr().out
    # --preset / --config describe the network instead of the checkpoint's own config
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--preset", "synthetic", f"data.root={data}", *TINY,
               "--max-images", "1", "--output-dir", str(tmp_path / "ev"), "--no-progress"])
    assert rc == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["images"] == 1
