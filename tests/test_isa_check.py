"""tests/isa_check.py (``make isa-check``): its settings, and that a failure or an empty run fails it."""
import importlib.util
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture
def isa_check():
    spec = importlib.util.spec_from_file_location("isa_check", HERE / "isa_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_cover_the_paths_of_issue_23(isa_check):
    envs = [env for _, env, _ in isa_check.SETTINGS]
    assert {e["ATEN_CPU_CAPABILITY"] for e in envs if e["ONEDNN_MAX_CPU_ISA"] == "ALL"} == {"avx512", "avx2", "default"}
    assert any(e["ONEDNN_MAX_CPU_ISA"] == "AVX2" for e in envs)
    for path in [*isa_check.NETWORK, *isa_check.KERNELS]:
        assert (HERE.parent / path).is_file(), path


def test_counts(isa_check):
    assert isa_check._counts("1 failed, 20 passed, 3 skipped, 4 deselected in 5.02s") == {
        "failed": 1, "passed": 20, "skipped": 3, "deselected": 4}
    assert isa_check._counts("") == {}


@pytest.mark.parametrize(("summary", "code", "ok"), [
    ("12 passed, 1 skipped in 3.00s", 0, True),
    ("1 failed, 11 passed in 3.00s", 1, False),
    ("no tests ran in 0.01s", 5, False),
])
def test_exit_status_follows_pytest(isa_check, monkeypatch, capsys, summary, code, ok):
    calls = []

    def fake_run(cmd, env, **kwargs):
        calls.append(env)
        out = "AVX2 bf16-oneDNN 2 threads\n" if "-c" in cmd else f"....\n{summary}\n"
        return subprocess.CompletedProcess(cmd, 0 if "-c" in cmd else code, stdout=out, stderr="")

    monkeypatch.setattr(isa_check.subprocess, "run", fake_run)
    assert isa_check.main([]) == (0 if ok else 1)
    lines = capsys.readouterr().out.splitlines()
    status = [line for line in lines if line.startswith(("ok", "FAIL"))]
    assert len(status) == len(isa_check.SETTINGS) and all(line.startswith("ok" if ok else "FAIL") for line in status)
    assert {env["ATEN_CPU_CAPABILITY"] for env in calls} == {"avx512", "avx2", "default"}
