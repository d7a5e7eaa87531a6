"""Synthetic panoptic dataset: determinism by seed, idempotence, read back through the loader."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from rtpanoptic.data import SYNTHETIC, SyntheticConfig, collate, generate_synthetic, synthetic_dataset
from rtpanoptic.data.synthetic import render_scene

SMALL = SyntheticConfig(num_train=6, num_val=3, seed=3, crowd_prob=0.5, void_prob=0.5)


def _scene(seed, i):
    return render_scene(np.random.default_rng([seed, 0, i]), SMALL)


def test_render_deterministic_by_seed():
    a, b, c = _scene(3, 1), _scene(3, 1), _scene(4, 1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_generate_reuse_and_loader(tmp_path):
    paths = generate_synthetic(tmp_path / "syn", SMALL, progress=False)
    marker = tmp_path / "syn" / "synthetic_config.json"
    mtime = os.path.getmtime(paths["train"].panoptic_json)
    assert generate_synthetic(tmp_path / "syn", SMALL, progress=False) == paths
    assert os.path.getmtime(paths["train"].panoptic_json) == mtime  # reused
    # A different config regenerates.
    other = SyntheticConfig(num_train=2, num_val=1, seed=3)
    generate_synthetic(tmp_path / "syn", other, progress=False)
    assert json.load(open(marker))["config"]["num_train"] == 2
    assert len(json.load(open(paths["train"].panoptic_json))["annotations"]) == 2

    # Same seed, another folder: identical bytes.
    p2 = generate_synthetic(tmp_path / "syn2", other, progress=False)
    assert open(p2["val"].panoptic_json).read() == open(paths["val"].panoptic_json).read()


def test_loader_reads_synthetic(tmp_path):
    ds = synthetic_dataset(tmp_path / "syn", "train", SMALL, progress=False)
    assert len(ds) == 6 and ds.description is SYNTHETIC
    n_crowd = n_void = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 128, 128) and s["image"].dtype == torch.uint8
        m = s["instance_masks"]
        assert m.shape[0] >= 1 and m.shape[0] == len(s["labels"]) == len(s["boxes"])
        assert int(m.sum(0).max()) <= 1  # non-overlapping
        assert not (m.any(0) & s["crowd_mask"]).any()
        assert (m.flatten(1).sum(1) >= 0.4 * SMALL.min_object_size**2).all()
        assert s["labels"].max() < 3
        assert ((s["semantic"] < 6) | (s["semantic"] == 255)).all()
        n_crowd += bool(s["crowd_mask"].any())
        n_void += bool((s["semantic"] == 255).any())
    assert n_crowd > 0 and n_void > 0
    b = collate([ds[0], ds[1]])
    assert b["images"].shape == (2, 3, 128, 128)


def test_bad_config():
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticConfig(min_objects=3, max_objects=2)
    with pytest.raises(TypeError, match="SyntheticConfig"):
        generate_synthetic("/nonexistent", cfg={"seed": 1})


def test_dataloader_with_transforms(tmp_path):
    from rtpanoptic.data.transforms import synthetic_train_transforms

    ds = synthetic_dataset(tmp_path / "syn", "train", SMALL, transforms=synthetic_train_transforms(), progress=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["images"].shape == (3, 3, 128, 128)
    assert all(len(b["labels"]) == 3 for b in batches)
