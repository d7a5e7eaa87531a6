"""The synthetic generator writes only into an empty folder or a tree it made itself (issue 12):
anything else is an error naming the folder and what is in it, and nothing is deleted."""
from __future__ import annotations

import json

import pytest

from rtpanoptic.data import DatasetError, SyntheticConfig, generate_synthetic, synthetic_dataset

SMALL = SyntheticConfig(num_train=3, num_val=2, seed=1)


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_refuses_a_folder_with_a_users_dataset(tmp_path):
    root = tmp_path / "coco"
    for rel in ("annotations/panoptic_val2017.json", "images/000001.jpg", "panoptic/val/a.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    before = _snapshot(root)
    with pytest.raises(DatasetError, match=rf"{root}.*annotations") as info:
        generate_synthetic(root, SMALL, progress=False)
    assert "\n" not in str(info.value)
    assert _snapshot(root) == before


def test_refuses_a_folder_with_any_other_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="notes.txt"):
        synthetic_dataset(tmp_path, "train", SMALL, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_refuses_a_file_as_root(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(DatasetError, match="not a folder"):
        generate_synthetic(tmp_path / "f", SMALL, progress=False)
    assert (tmp_path / "f").read_text() == "mine"


def test_refuses_a_marked_tree_holding_a_users_file(tmp_path):
    root = tmp_path / "syn"
    generate_synthetic(root, SMALL, progress=False)
    (root / "images" / "train" / "mine.jpg").write_text("mine")
    with pytest.raises(DatasetError, match="mine.jpg"):
        generate_synthetic(root, SyntheticConfig(num_train=2, num_val=1, seed=1), progress=False)
    assert (root / "images" / "train" / "mine.jpg").read_text() == "mine"


def test_a_marker_alone_does_not_license_deleting_foreign_files(tmp_path):
    root = tmp_path / "syn"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances.json").write_text("{}")
    (root / "synthetic_config.json").write_text(json.dumps({"generator_version": 1, "config": {}}))
    with pytest.raises(DatasetError, match="instances.json"):
        generate_synthetic(root, SMALL, progress=False)
    assert (root / "annotations" / "instances.json").read_text() == "{}"


def test_empty_folder_and_own_tree_are_fine(tmp_path):
    root = tmp_path / "syn"
    root.mkdir()
    paths = generate_synthetic(root, SMALL, progress=False)
    other = SyntheticConfig(num_train=2, num_val=1, seed=1)
    generate_synthetic(root, other, progress=False)  # its own tree: regenerated
    assert len(json.loads(open(paths["train"].panoptic_json).read())["annotations"]) == 2
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == ["train_000000.png", "train_000001.png"]


def test_an_interrupted_generation_is_resumed_from_scratch(tmp_path, monkeypatch):
    import rtpanoptic.data.synthetic as syn

    root = tmp_path / "syn"
    real = syn.render_scene
    calls = {"n": 0}

    def dies(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(syn, "render_scene", dies)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(root, SMALL, progress=False)
    monkeypatch.setattr(syn, "render_scene", real)
    paths = generate_synthetic(root, SMALL, progress=False)
    assert len(json.loads(open(paths["val"].panoptic_json).read())["annotations"]) == 2
    fresh = generate_synthetic(tmp_path / "fresh", SMALL, progress=False)
    assert open(fresh["train"].panoptic_json).read() == open(paths["train"].panoptic_json).read()
