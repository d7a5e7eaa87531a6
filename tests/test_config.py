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


def test_config_file_that_is_a_folder_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder, not a YAML file"):
        load_config(Cfg, tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"config file {latin} is not UTF-8 text"):
        load_config(Cfg, latin)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(Cfg, bad)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ every number has a range
def _all_range_tables():
    from rtpanoptic.engine.config import TRAIN_RANGES, TrainConfig
    from rtpanoptic.model.config import MODEL_RANGES, ModelConfig

    return [(TrainConfig, TRAIN_RANGES), (ModelConfig, MODEL_RANGES)]


@pytest.mark.parametrize("cls,ranges", _all_range_tables(), ids=["train", "model"])
def test_every_numeric_field_has_a_range(cls, ranges):
    from rtpanoptic.config import numeric_fields

    fields = numeric_fields(cls)
    assert len(fields) > 10
    assert sorted(set(fields) - set(ranges)) == []  # a new numeric field needs its range
    assert sorted(set(ranges) - set(fields)) == []


def test_numeric_fields_finds_nested_optional_and_tuple_numbers():
    from rtpanoptic.config import numeric_fields

    assert numeric_fields(Cfg) == ["depth", "optim.lr", "optim.steps"]


def test_range_membership_and_wording():
    from rtpanoptic.config import Range

    r = Range(0, 10, low_open=True)
    assert [v in r for v in (0, 1e-9, 10, 10.5, float("inf"), float("nan"), True, "1")] == [
        False, True, True, False, False, False, False, False]
    assert str(r) == "a finite number in (0, 10]"
    assert float("inf") in Range(0, allow_inf=True) and float("nan") not in Range(allow_inf=True)
    assert str(Range(1)) == "a finite number >= 1" and str(Range(0.5, 1, high_open=True)) == \
        "a finite number in [0.5, 1)"


@pytest.mark.parametrize("override", ["optim.lr=inf", "optim.lr=-.inf", "optim.lr=nan", "optim.momentum=1",
                                      "loss.semantic=1e300", "runtime.time_limit_s=.inf",
                                      "loss.size_ranges=[[0,64],[64,nan]]", "data.crop_size=[0,10]",
                                      "data.min_sizes=[]", "runtime.eval_max_images=0"])
def test_train_config_numbers_out_of_range(override):
    from rtpanoptic.engine import make_config

    field_name = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"train config: {field_name}"):
        make_config("synthetic", None, [override])


def test_presets_and_the_default_infinite_size_range_pass():
    from rtpanoptic.engine import make_config
    from rtpanoptic.engine.config import TRAIN_PRESETS
    from rtpanoptic.model import PRESETS, preset_config
    from rtpanoptic.model.config import validate_config

    for name in TRAIN_PRESETS:
        assert make_config(name).loss.size_ranges[-1][1] == float("inf")
    for name in PRESETS:
        validate_config(preset_config(name))


@pytest.mark.parametrize("override", ["head.prior_prob=1", "head.max_log_offset=inf", "inference.sigma=nan",
                                      "inference.nms_thresh=1.5", "backbone.frozen_bn_eps=-1"])
def test_model_config_numbers_out_of_range(override):
    from rtpanoptic.config import load_config
    from rtpanoptic.model.config import ModelConfig, validate_config

    cfg = load_config(ModelConfig, None, [override])
    with pytest.raises(ValueError, match=f"model config: {override.split('=')[0]}"):
        validate_config(cfg)
