"""benchmarks/gpu_check.py: its dry run (what CI and any machine without a GPU can run), its
per-test recorder, and the report logic (goals, test summaries) on made-up measurements."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _module()


# the dry-run tests share one run: under pytest-xdist (the GPU check's suite step) one worker does it
pytestmark = pytest.mark.xdist_group("gpu_check_dry_run")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run (forced even where a GPU is visible: this test must not start a GPU check)."""
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--budget", "600"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    return out, proc


def test_dry_run_exits_0_and_writes_its_files(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert {"gpu_check.json", "gpu_check.md", "gpu_check.log", "tests.jsonl", "bench_ops.jsonl",
            "bench_e2e.jsonl"} == names  # at most 8 files come back from a device machine
    assert "DRY RUN, no GPU (--dry-run)" in proc.stdout
    assert (out / "gpu_check.log").read_text().count("\n") >= proc.stdout.count("\n") - 1


def test_dry_run_is_marked_no_gpu_everywhere(dry_run):
    out, _ = dry_run
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["gpu"] is False and result["no_gpu_reason"] == "--dry-run"
    md = (out / "gpu_check.md").read_text()
    assert md.splitlines()[0].endswith("— no GPU (dry run)")
    assert "**no GPU** (--dry-run): a dry run; no figure below is a GPU figure" in md
    assert all(g["measured"] == "no GPU" and g["met"] is None for g in result["goals"])


def test_dry_run_steps(dry_run):
    out, _ = dry_run
    result = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == list(gpu_check.STEPS)
    assert steps["build"]["status"] in ("skipped", "ok"), steps["build"]
    assert steps["sanitizer"]["status"] == "skipped"
    for name in ("env", "import", "suite", "bench-ops", "bench-e2e"):
        assert steps[name]["status"] == "ok", steps[name]
    assert result["tests"]["collected"] > 500  # the whole suite was collected
    assert result["import"]["backends"]["nms"][0] in ("cpp", "reference")


def test_dry_run_benchmarks_are_real_cpu_measurements(dry_run):
    out, _ = dry_run
    ops_rows = [json.loads(line) for line in (out / "bench_ops.jsonl").read_text().splitlines()]
    assert ops_rows and all(r["device"] == "cpu" and r["group"] == "nms N=1000" for r in ops_rows)
    assert all(r["wall_median_ms"] > 0 and r["rounds"] >= 3 for r in ops_rows)
    e2e = [json.loads(line) for line in (out / "bench_e2e.jsonl").read_text().splitlines()]
    eager = [r for r in e2e if r["kind"] == "eager"]
    assert [r["mode"] for r in eager] == ["fp32", "fp32 + channels_last"]
    for r in eager:
        assert min(r["backbone_fpn_ms"], r["head_ms"], r["postprocess_ms"], r["end_to_end_ms"]) > 0
        assert r["fps"] == pytest.approx(1e3 / r["end_to_end_ms"])
        assert r["queries"] > 0  # the heavy post-processing load reached the mask stage
    assert [r["skipped"] for r in e2e if r["kind"] == "graph"] == ["CUDA graphs need a GPU"]


def test_bad_arguments_exit_2():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--steps", "build,bogus"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "error: unknown step(s) ['bogus']; choose from env,build,import,suite,sanitizer,bench-ops,bench-e2e" \
        in proc.stderr


def _run_with_plugin(folder: Path, expect_exit: int) -> list[dict]:
    """pytest over the test files in ``folder`` with the GPU check's plugin: its JSON lines."""
    jsonl = folder / "tests.jsonl"
    env = dict(os.environ, GPU_CHECK_TESTS_JSONL=str(jsonl), PYTHONPATH=str(ROOT / "benchmarks"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "gpu_check_plugin", "-p", "no:cacheprovider", "-q",
                           "-c", os.devnull, "--rootdir", str(folder), str(folder)], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect_exit, proc.stdout
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def test_plugin_records_every_outcome(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "def test_skip(): pytest.skip('not here')\n"
        "@pytest.mark.xfail(reason='known')\n"
        "def test_known(): assert False\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('fixture broke')\n"
        "def test_setup_error(broken): pass\n"
    )
    lines = _run_with_plugin(tmp_path, expect_exit=1)
    assert lines[0]["collected"] == 5 and lines[0]["gpu_first"] == 0 and len(lines[0]["order"]) == 5
    by_name = {line["nodeid"].split("::")[-1]: line for line in lines[1:]}
    assert {k: v["outcome"] for k, v in by_name.items()} == {
        "test_ok": "passed", "test_bad": "failed", "test_skip": "skipped", "test_known": "xfailed",
        "test_setup_error": "error"}
    assert "one is not two" in by_name["test_bad"]["message"]
    assert by_name["test_skip"]["message"] == "Skipped: not here"
    assert "fixture broke" in by_name["test_setup_error"]["message"]
    summary = gpu_check.summarize_tests(lines)
    assert (summary["collected"], summary["passed"], summary["failed"], summary["error"]) == (5, 1, 1, 1)
    assert [f["nodeid"].split("::")[-1] for f in summary["failures"]] == ["test_bad", "test_setup_error"]


def test_plugin_runs_what_needs_a_gpu_first_and_counts_what_was_not_reached(tmp_path):
    """The GPU machine's suite step has a short time limit: tests skipped without CUDA and tests
    parametrised on a CUDA device run before the rest (in their usual order within each rank), and
    a run cut short names the tests it never reached."""
    (tmp_path / "test_order.py").write_text(
        "import pytest\n"
        "def test_a(): pass\n"
        "@pytest.mark.parametrize('device', ['cpu', 'cuda'])\n"
        "def test_b(device): pass\n"
        "@pytest.mark.skipif(False, reason='needs a GPU')\n"
        "def test_c(): pass\n"
        "def test_d(): pass\n"
    )
    lines = _run_with_plugin(tmp_path, expect_exit=0)
    order = [n.split("::")[-1] for n in lines[0]["order"]]
    assert order == ["test_c", "test_b[cuda]", "test_a", "test_b[cpu]", "test_d"]
    assert lines[0]["gpu_first"] == 2
    assert [line["nodeid"].split("::")[-1] for line in lines[1:]] == order  # the order they ran in
    cut = gpu_check.summarize_tests(lines[:3])  # as if stopped after two tests
    assert [n.split("::")[-1] for n in cut["not_reached"]] == ["test_a", "test_b[cpu]", "test_d"]
    assert [n.split("::")[-1] for n in cut["first"]] == ["test_c", "test_b[cuda]"]
    assert gpu_check.summarize_tests(lines)["not_reached"] == []


def test_gpu_first_files_exist():
    plugin = importlib.util.spec_from_file_location("gpu_check_plugin", ROOT / "benchmarks" / "gpu_check_plugin.py")
    module = importlib.util.module_from_spec(plugin)
    plugin.loader.exec_module(module)
    assert [f for f in module.GPU_FIRST_FILES if not (ROOT / f).is_file()] == []


def test_version_checks_name_what_differs_from_the_image(monkeypatch):
    pins = gpu_check.image_pins()
    assert pins["torch"] == "2.11.0" and pins["triton"] == "3.6.0" and pins["torchvision"] == "0.26.0"
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name, path=None: "/usr/bin/" + name)
    image = {**pins, "setuptools": "80.9.0"}
    assert gpu_check.version_checks({}, image.get) == []
    other = {**image, "torch": "2.10.0", "triton": "3.8.1", "setuptools": "70.0.0"}
    assert gpu_check.version_checks({}, other.get) == [
        "torch 2.10.0 (the image list pins 2.11.0)", "triton 3.8.1 (the image list pins 3.6.0)",
        "torch 2.10.0 is outside the tested (2, 11)..(2, 14)",
        "setuptools 70.0.0 < 77 cannot build this project: carry it (make gpu-wheels)"]
    assert gpu_check.version_checks({}, {**image, "torch": "2.11.0+cu130"}.get) == []  # local tags
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name, path=None: None)
    assert gpu_check.version_checks({}, image.get) == [
        "no ninja on PATH: the build is serial (make gpu-wheels carries ninja)"]


def test_gpu_wheels_carry_ninja_and_setuptools():
    text = (ROOT / "Makefile").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("GPU_WHEELS ?="))
    assert "ninja==" in line and "setuptools==" in line


def _ops(group, **ms):
    return [{"group": group, "device": "cuda", "params": {"impl": impl}, "cuda_ms": t} for impl, t in ms.items()]


def _e2e(mode, post, fps, kind="eager", size="1024x2048"):
    return {"kind": kind, "device": "cuda", "size": size, "mode": mode, "postprocess_ms": post, "fps": fps}


def test_goals_against_measurements():
    ops_rows = (_ops("nms N=1000", cuda=0.10, torchvision=0.10) + _ops("nms N=5000", cuda=0.2, torchvision=0.3)
                + _ops("nms N=20000", cuda=1.0, torchvision=2.0)
                + _ops("panoptic_from_dense Q=100 256x512", cuda=0.12, triton=0.09, reference=5.0))
    e2e = [_e2e("fp32", 1.5, 90.0), _e2e("bf16 + channels_last", 0.98, 59.9), _e2e("bf16 + compile", 1.2, 61.0, "compile"),
           _e2e("bf16", 0.5, 200.0, size="512x1024")]
    goals = {g["goal"]: g for g in gpu_check.goals(ops_rows, e2e, gpu=True)}
    post, pfd, nms, fps = (goals[gpu_check.GOALS[k]] for k in ("post", "pfd", "nms", "fps"))
    assert (post["met"], post["measured"]) == (True, "0.980 ms")  # the best eager mode at 1024x2048
    assert (pfd["met"], pfd["measured"]) == (True, "cuda 120 us, triton 90 us")  # the faster GPU backend counts
    assert nms["met"] is True  # equal time is "no slower"
    assert (fps["met"], fps["measured"]) == (True, "61.0 FPS")  # bf16 modes only, compiled ones included


def test_post_goal_counts_the_captured_postprocess():
    """The post-processing goal takes the faster of eager and the CUDA-graph replay + host stage,
    and the graph table shows the replay alone and with the host stage."""
    graph = {**_e2e("fp32", 0.7, None, kind="graph"), "postprocess_device_ms": 0.4, "network_ms": 9.0}
    goals = {g["goal"]: g for g in gpu_check.goals([], [_e2e("fp32", 1.5, 90.0), graph], gpu=True)}
    post = goals[gpu_check.GOALS["post"]]
    assert (post["met"], post["measured"]) == (True, "1.500 ms, 0.700 ms from a CUDA graph")
    row = next(line for line in gpu_check._e2e_table([graph], gpu=True) if line.startswith("| 1024x2048 | fp32"))
    assert row.endswith("| 9.00 ms | 0.400 ms | 0.700 ms |")
    failed = {**_e2e("fp32", None, None, kind="graph"), "postprocess_error": "RuntimeError: capture failed"}
    del failed["postprocess_ms"]
    row = next(line for line in gpu_check._e2e_table([failed], gpu=True) if line.startswith("| 1024x2048"))
    assert "RuntimeError: capture failed | — |" in row
    assert goals[gpu_check.GOALS["post"]]["met"] is True


def test_goals_missed_or_unmeasured():
    ops_rows = _ops("nms N=1000", cuda=0.2, torchvision=0.1) + _ops("nms N=5000", cuda=0.1, torchvision=0.3)
    goals = {g["goal"]: g for g in gpu_check.goals(ops_rows, [_e2e("bf16", 1.01, 59.0)], gpu=True)}
    assert goals[gpu_check.GOALS["post"]]["met"] is False
    assert goals[gpu_check.GOALS["fps"]]["met"] is False
    assert goals[gpu_check.GOALS["nms"]]["met"] is None  # N = 20k was not measured
    assert goals[gpu_check.GOALS["pfd"]]["met"] is None


def test_sanitizer_counts():
    clean = "..........\n32 passed in 41.00s\n========= ERROR SUMMARY: 0 errors\n"
    assert gpu_check.sanitizer_counts(clean) == {"errors": 0, "hazards": None, "tests_passed": 32}
    race = ("========= Error: Race reported between Write access at fusion_kernel+0x1f0\n"
            "F\n1 failed, 3 passed\n========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n")
    assert gpu_check.sanitizer_counts(race) == {"errors": 1, "hazards": 1, "tests_passed": 3}
    cut = ("========= Invalid __global__ write of size 4 bytes\n=========     at mask_kernel+0x90\n"
           "========= Invalid __global__ read of size 4 bytes\n")  # stopped at its time limit: no summary
    assert gpu_check.sanitizer_counts(cut) == {"errors": 2, "hazards": None, "tests_passed": None}
    script = "ok   nms [cuda]\nFAIL box_iou [triton]\nok   box_iou [cuda]\n========= ERROR SUMMARY: 0 errors\n"
    assert gpu_check.sanitizer_counts(script) == {"errors": 0, "hazards": None, "tests_passed": 2}
