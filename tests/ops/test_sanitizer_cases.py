"""The cases compute-sanitizer runs on the GPU (tests/ops/sanitizer_cases.py) hold on the CPU:
every CPU backend agrees with the reference on them, so a failure on the GPU is the GPU's."""
import importlib.util
from pathlib import Path

from rtpanoptic.ops import registry


def _cases_module():
    spec = importlib.util.spec_from_file_location("sanitizer_cases", Path(__file__).with_name("sanitizer_cases.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sanitizer_cases_agree_on_the_cpu(capsys):
    cases = _cases_module()
    assert cases.main(["--device", "cpu"]) == 0, capsys.readouterr().out
    lines = capsys.readouterr().out.splitlines()
    ops_covered = {name.split()[0] for name, *_ in cases.cases()}
    gpu_ops = {row.name for row in registry.TABLE if {"cuda", "triton"} & set(row.backends)}  # what runs on a GPU
    assert ops_covered == gpu_ops and len(lines) >= len(cases.cases())
