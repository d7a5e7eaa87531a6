"""tests/check_build.py, which ``make test`` runs before pytest, fails on a broken build."""
import importlib.util
from pathlib import Path

import pytest


@pytest.fixture
def check_build():
    spec = importlib.util.spec_from_file_location("check_build", Path(__file__).with_name("check_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_passes_on_this_build(check_build, monkeypatch, capsys):
    from rtpanoptic import _extension

    if not _extension.load():
        pytest.skip("rtpanoptic._C is not built here")
    monkeypatch.delenv("FORCE_CUDA", raising=False)
    assert check_build.main() == 0
    assert "loads with the C++ kernels of every op" in capsys.readouterr().out


def test_fails_when_the_extension_does_not_load(check_build, monkeypatch, capsys):
    from rtpanoptic import _extension

    monkeypatch.setattr(_extension, "load", lambda: False)
    monkeypatch.setattr(_extension, "load_error", lambda: "rtpanoptic._C failed to load: undefined symbol")
    assert check_build.main() == 1
    assert capsys.readouterr().err == "check_build: rtpanoptic._C failed to load: undefined symbol\n"


def test_fails_without_cuda_kernels_under_force_cuda(check_build, monkeypatch, capsys):
    from rtpanoptic import _extension, ops

    monkeypatch.setattr(_extension, "load", lambda: True)
    built = {op: ["reference", "cpp"] for op in ops.OPS}
    built["nms"] = ["reference"]
    monkeypatch.setattr(ops, "available_backends", lambda device=None: built)
    monkeypatch.setenv("FORCE_CUDA", "1")
    assert check_build.main() == 1
    err = capsys.readouterr().err
    assert "no cpp kernel registered for nms" in err
    assert "no cuda kernel registered for nms, batched_nms, box_iou" in err
    monkeypatch.setenv("FORCE_CUDA", "0")
    built["nms"] = ["reference", "cpp"]
    assert check_build.main() == 0
