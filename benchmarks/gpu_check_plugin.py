"""pytest plugin of benchmarks/gpu_check.py: one JSON line per test, written as soon as the test
ends, into the file named by ``GPU_CHECK_TESTS_JSONL`` (so a run cut short keeps what it did).

Line: ``{"nodeid", "outcome": passed|failed|error|skipped|xfailed|xpassed, "seconds", "message"}``;
after collection one ``{"collected": n, "order": [nodeid, ...], "gpu_first": k}`` line (the run's
order: the first ``k`` need a GPU).

The suite's time on the GPU machine is short, so the tests that only a GPU can run go first
(:func:`gpu_rank`): the GPU-only files (:data:`GPU_FIRST_FILES`) and tests skipped without CUDA,
then every test parametrised on a CUDA device, then the rest in their usual order.  Load with ``-p gpu_check_plugin`` (benchmarks/ on
``PYTHONPATH``).  Under pytest-xdist only the controller writes (it receives every worker's reports).
"""
from __future__ import annotations

import json
import os

import pytest

# Files whose tests only a GPU can run (or that check what the GPU build produced).
GPU_FIRST_FILES = (
    "tests/ops/test_gpu_execution.py",
    "tests/test_postprocess_device.py",
    "tests/test_stream.py",
    "tests/ops/test_triton_compile.py",
    "tests/ops/test_cuda_compile.py",
    "tests/ops/test_sanitizer_cases.py",
)
_GPU_WORDS = ("gpu", "cuda")

_phases: dict[str, list] = {}
_collected_written = False


def _write(line: dict) -> None:
    path = os.environ.get("GPU_CHECK_TESTS_JSONL")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def gpu_rank(item) -> int:
    """0: a GPU-only file, or a test skipped without CUDA; 1: parametrised on a CUDA device;
    2: the rest."""
    if item.nodeid.split("::")[0] in GPU_FIRST_FILES:
        return 0
    for mark in item.iter_markers("skipif"):
        if any(w in str(mark.kwargs.get("reason", "")).lower() for w in _GPU_WORDS):
            return 0
    callspec = getattr(item, "callspec", None)
    if callspec is not None and ("cuda" in callspec.id or callspec.params.get("device") == "cuda"):
        return 1
    return 2


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=gpu_rank)  # stable: the usual order within each rank


def pytest_collection_finish(session):
    if not _is_worker(session.config):
        items = session.items
        _write({"collected": len(items), "order": [it.nodeid for it in items],
                "gpu_first": sum(gpu_rank(it) < 2 for it in items)})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Under pytest-xdist the controller does not collect: every worker reports the same ids."""
    global _collected_written
    if not _collected_written:
        _collected_written = True
        _write({"collected": len(ids), "order": list(ids)})


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
        return str(report.longrepr[2])[:500]
    text = getattr(report, "longreprtext", "") or ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lstrip().startswith("E ")]
    return ((errors[0] if errors else lines[-1]) if lines else "")[:500]


def _outcome(reports) -> tuple[str, str]:
    for r in reports:
        if r.failed:
            return ("failed" if r.when == "call" else "error"), _message(r)
    for r in reports:
        if hasattr(r, "wasxfail"):
            return ("xfailed" if r.skipped else "xpassed"), str(r.wasxfail)[:500]
        if r.skipped:
            return "skipped", _message(r)
    return "passed", ""


_worker = False


def pytest_configure(config):
    global _worker
    _worker = _is_worker(config)


def pytest_runtest_logreport(report):
    if _worker:
        return
    reports = _phases.setdefault(report.nodeid, [])
    reports.append(report)
    if report.when == "teardown":
        outcome, message = _outcome(reports)
        _write({"nodeid": report.nodeid, "outcome": outcome, "seconds": round(sum(r.duration for r in reports), 3),
                "message": message})
        del _phases[report.nodeid]


def pytest_sessionfinish(session):
    """Tests whose teardown never reported (a crashed xdist worker): written as they stand."""
    if _is_worker(session.config):
        return
    for nodeid, reports in list(_phases.items()):
        outcome, message = _outcome(reports)
        _write({"nodeid": nodeid, "outcome": "error" if outcome == "passed" else outcome,
                "seconds": round(sum(r.duration for r in reports), 3), "message": message or "no teardown report"})
    _phases.clear()
