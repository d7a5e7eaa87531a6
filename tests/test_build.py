"""The build and its link to torch: the wheel pins the torch the extension was compiled against,
the default CUDA architectures follow the installed torch, and importing under another torch
fails with one plain line (both versions, the rebuild command)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtpanoptic import _extension

ROOT = Path(__file__).resolve().parent.parent


def _setup_py(args, tmp_path, **env):
    """Run setup.py from a copy of the build files (setup.py reads pyproject.toml and csrc/)."""
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    shutil.copytree(ROOT / "rtpanoptic", tmp_path / "rtpanoptic", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(ROOT / "kernels", tmp_path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "TORCH_CUDA_ARCH_LIST")}
    full_env.update(env)
    return subprocess.run([sys.executable, "setup.py", *args], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=300)


def test_wheel_metadata_requires_the_torch_it_was_built_with(tmp_path):
    out = _setup_py(["-q", "egg_info", "--egg-base", str(tmp_path)], tmp_path, FORCE_CUDA="0")
    assert out.returncode == 0, out.stderr[-2000:]
    requires = (tmp_path / "rtpanoptic.egg-info" / "requires.txt").read_text().split("\n[")[0].split()
    torch_pins = [r for r in requires if r.startswith("torch") and not r.startswith("torchvision")]
    assert torch_pins == [f"torch=={torch.__version__.split('+')[0]}"]
    assert any(r.startswith("torchvision") for r in requires)


def _nvcc():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


needs_nvcc = pytest.mark.skipif(_nvcc() is None or torch.version.cuda is None,
                                reason="needs nvcc and a CUDA build of torch")


def _targets(stderr: str) -> set[str]:
    line = next(ln for ln in stderr.splitlines() if ln.startswith("rtpanoptic: building the CPU + CUDA"))
    return set(line.split("(", 1)[1].split(")", 1)[0].split())


@needs_nvcc
def test_default_cuda_archs_are_the_installed_torchs_with_ptx_of_the_newest(tmp_path):
    out = _setup_py(["-q", "egg_info", "--egg-base", str(tmp_path)], tmp_path, FORCE_CUDA="1",
                    CUDA_VISIBLE_DEVICES="")
    assert out.returncode == 0, out.stderr[-2000:]
    nvcc_codes = set(subprocess.run([_nvcc(), "--list-gpu-code"], capture_output=True, text=True).stdout.split())
    torch_codes = [c for c in torch._C._cuda_getArchFlags().split() if c.startswith("sm_") and c[3:].isdigit()]
    expected = sorted((c for c in torch_codes if c in nvcc_codes), key=lambda c: int(c[3:]))
    assert len(expected) >= 2  # torch's CUDA wheels cover several generations
    newest_ptx = "compute_" + expected[-1][3:]
    assert _targets(out.stderr) == {*expected, newest_ptx}


@needs_nvcc
def test_arch_list_variable_still_decides(tmp_path):
    out = _setup_py(["-q", "egg_info", "--egg-base", str(tmp_path)], tmp_path, FORCE_CUDA="1",
                    CUDA_VISIBLE_DEVICES="", TORCH_CUDA_ARCH_LIST="9.0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _targets(out.stderr) == {"sm_90"}


def test_version_mismatch_message():
    origin = str(ROOT / "rtpanoptic" / "_C.so")
    assert _extension.version_mismatch("2.14.1+cu130", "2.14.1+cu130", origin) is None
    assert _extension.version_mismatch("2.14.1+cu130", "2.11.0+cu130", origin) == (
        "rtpanoptic._C was built for torch 2.14.1+cu130 but torch 2.11.0+cu130 is installed; rebuild it with "
        f"this torch: pip install --no-build-isolation --no-deps -e {ROOT}")
    wheel = "/usr/lib/python3/site-packages/rtpanoptic/_C.so"
    assert _extension.version_mismatch("2.14.1", "2.14.1+cpu", wheel).endswith(
        "rebuild it with this torch: pip install --no-build-isolation --no-deps --force-reinstall "
        "<rtpanoptic source folder>")


def test_import_under_another_torch_fails_plainly():
    info = _extension.build_info()
    if info is None:
        pytest.skip("rtpanoptic._C was not built with a build record")
    code = "import torch\ntorch.__version__ = '2.0.0+other'\nimport rtpanoptic\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: rtpanoptic._C was built for torch {info['torch']} but torch 2.0.0+other is "
                    f"installed; rebuild it with this torch: pip install --no-build-isolation --no-deps -e {ROOT}")


def test_build_record_matches_this_torch():
    info = _extension.build_info()
    if info is None:
        pytest.skip("rtpanoptic._C was not built with a build record")
    assert info["torch"] == str(torch.__version__)
    assert (info["cuda"] is None) == (info["cuda_targets"] is None)
