"""Typed configs: defaults, YAML, overrides, and clear errors."""
from dataclasses import dataclass, field

import pytest

from rtpanoptic.config import ConfigError, load_config, save_config


@dataclass
class Optim:
    lr: float = 0.01
    steps: tuple[int, ...] = (10, 20)


@dataclass
class Cfg:
    name: str = "x"
    depth: int = 50
    amp: bool = False
    weights: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\noptim:\n  lr: 0.5\n  steps: [1, 2, 3]\n")
    cfg = load_config(Cfg, path, ["optim.lr=2", "depth=18", "weights=/w.pth"])
    assert cfg == Cfg(name="y", depth=18, weights="/w.pth", optim=Optim(lr=2.0, steps=(1, 2, 3)))
    assert isinstance(cfg.optim.lr, float)


def test_roundtrip(tmp_path):
    cfg = load_config(Cfg, overrides=["amp=true", "optim.steps=[5]"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Cfg, tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize(
    "override,match",
    [
        ("optim.lrr=1", "unknown key 'lrr'"),
        ("depth=abc", "expected an integer"),
        ("amp=3", "true/false"),
        ("optim=5", "expected a number|mapping|unknown"),
        ("nonsense", "key.sub=value"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, overrides=[override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, bad)
