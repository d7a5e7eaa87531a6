"""pycocotools is optional: importing rtpanoptic never needs it, and evaluation without it reports
mask AP as NaN (with a warning saying how to get it) instead of failing."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from rtpanoptic.data import build_dataset
from rtpanoptic.data.synthetic import SyntheticConfig
from rtpanoptic.model import build_model
from rtpanoptic.pipeline import evaluate_model

BLOCK = "import sys; sys.modules['pycocotools'] = None\n"  # any `import pycocotools...` now raises ImportError


def test_every_module_imports_without_pycocotools():
    code = BLOCK + (
        "import importlib, pkgutil, rtpanoptic\n"
        "names = [m.name for m in pkgutil.walk_packages(rtpanoptic.__path__, 'rtpanoptic.')\n"
        "         if m.name.rsplit('.', 1)[-1] not in ('_C', '__main__')]  # a torch library; the CLI\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 30  # the walk really visited the package


def test_evaluate_without_pycocotools_gives_nan_ap(tmp_path, monkeypatch):
    cfg = SyntheticConfig(num_train=0, num_val=2)
    dataset = build_dataset("synthetic", str(tmp_path / "data"), "val", synthetic_cfg=cfg)
    torch.manual_seed(0)
    model = build_model("r18-fpn", description=dataset.description, channels=16).eval()
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.warns(RuntimeWarning, match=r"mask AP not computed: pycocotools is not installed \(pip install pycocotools\)"):
        metrics = evaluate_model(model, dataset, tmp_path / "eval", num_overlays=0, progress=False)
    assert math.isnan(metrics["AP"]) and math.isnan(metrics["AP50"])
    assert not math.isnan(metrics["PQ"])
