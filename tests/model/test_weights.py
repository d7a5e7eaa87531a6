"""Weight files as users have them: the released state dict (old and new FPN names), plain state
dicts of every preset, rtpanoptic checkpoints; strict loading, weights_only, one-line errors."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpanoptic.model import PRESETS, build_model
from rtpanoptic.weights import WeightsError, read_weights

MANIFEST = Path(__file__).parent / "tri_rtpanonet_r50_cityscapes_state_dict.json"


def _manifest():
    return json.loads(MANIFEST.read_text())


def released_state(seed: int = 0, new_names: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors under the released file's 328 names (in its order) and shapes."""
    man = _manifest()
    renames = man["key_renames_for_torchvision_ge_0_13"] if new_names else {}
    g = torch.Generator().manual_seed(seed)
    return {renames.get(k["name"], k["name"]): torch.randn(k["shape"], generator=g) for k in man["keys"]}


@pytest.fixture(scope="module")
def released_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("released")
    old, new = d / "old_names.pth", d / "new_names.pth"
    torch.save(released_state(0), old)
    torch.save(released_state(0, new_names=True), new)
    return old, new


def _assert_holds(model, state):
    own = model.state_dict()
    assert len(own) == 328
    for k, v in released_state(0).items():  # the old (own) names
        assert torch.equal(own[k], v), k


@pytest.mark.parametrize("which", ["old", "new"])
def test_released_file_loads_exactly(released_files, which):
    path = released_files[0 if which == "old" else 1]
    state = torch.load(path, weights_only=True)
    assert len(state) == 328
    assert ("backbone.fpn.inner_blocks.0.0.weight" in state) == (which == "new")
    model = build_model("tri-cityscapes-r50", weights=path)
    _assert_holds(model, state)


def test_wrapped_and_ddp_prefixed_state_dicts(tmp_path):
    state = released_state(0)
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    for name in ("wrapped.pth", "ddp.pth"):
        w = read_weights(tmp_path / name)
        assert w.kind == "state dict" and w.config is None and list(w.state_dict) == list(state)
        _assert_holds(build_model("tri-cityscapes-r50", weights=tmp_path / name), state)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_plain_state_dict_of_every_preset(preset, tmp_path):
    torch.manual_seed(1)
    src = build_model(preset, "synthetic")
    path = tmp_path / f"{preset}.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    dst = build_model(preset, "synthetic", weights=path)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert not torch.equal(build_model(preset, "synthetic").backbone.body.conv1.weight, src.backbone.body.conv1.weight)


def test_rtpanoptic_checkpoint(tmp_path):
    from rtpanoptic.engine.checkpoint import save_checkpoint

    torch.manual_seed(3)
    src = build_model("r18-fpn", "synthetic", channels=16)
    save_checkpoint(tmp_path / "last.pt", model=src, step=7, config={"model": {"preset": "r18-fpn"}})
    w = read_weights(tmp_path / "last.pt")
    assert w.kind == "rtpanoptic checkpoint" and w.config == {"model": {"preset": "r18-fpn"}}
    dst = build_model("r18-fpn", "synthetic", channels=16, weights=tmp_path / "last.pt")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def _error(*args, **kwargs) -> str:
    with pytest.raises(WeightsError) as info:
        build_model(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_file_of_another_architecture_names_first_keys_and_counts(tmp_path):
    state = released_state(0)
    names = list(state)
    for k in (names[10], names[40], names[200]):  # missing: three, in the network's order
        del state[k]
    state["extra.a"] = torch.zeros(1)
    state["extra.b"] = torch.zeros(1)
    state["panoptic_head.levelness.weight"] = torch.zeros(7, 256, 3, 3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    want_shape = list(build_model("tri-cityscapes-r50").panoptic_head.levelness.weight.shape)
    text = _error("tri-cityscapes-r50", weights=path)
    assert text == (f"{path} is for another architecture than model 'tri-cityscapes-r50' (19 classes): "
                    f"3 missing (first: {names[10]}), 2 unexpected (first: extra.a), 1 mis-shaped (first: "
                    f"panoptic_head.levelness.weight [7, 256, 3, 3] in the file, {want_shape} in the network)")


def test_new_fpn_names_count_as_the_same_tensors_in_errors(tmp_path):
    state = released_state(0, new_names=True)
    del state["backbone.fpn.layer_blocks.1.0.bias"]
    path = tmp_path / "new_minus_one.pth"
    torch.save(state, path)
    text = _error("tri-cityscapes-r50", weights=path)
    assert text.endswith("1 missing (first: backbone.fpn.layer_blocks.1.bias), 0 unexpected, 0 mis-shaped")


def test_wrong_preset_and_wrong_dataset(released_files):
    text = _error("r18-fpn", weights=released_files[0])
    assert "model 'r18-fpn' (19 classes): 0 missing, 165 unexpected (first: backbone.body.layer1.0.conv3.weight), " \
           "26 mis-shaped (first: backbone.body.layer1.0.conv1.weight [64, 64, 1, 1] in the file, " \
           "[64, 64, 3, 3] in the network)" in text
    text = _error("tri-cityscapes-r50", "coco", weights=released_files[1])
    assert "(133 classes): 0 missing, 0 unexpected, 4 mis-shaped (first: panoptic_head.cls_logits.weight" in text


def test_imagenet_resnet_given_as_weights_gets_a_hint(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    assert "looks like an ImageNet ResNet: give it as backbone.pretrained=PATH" in _error(
        "r18-fpn", weights=tmp_path / "resnet18.pth")


def test_truncated_corrupt_missing_and_tensorless_files(released_files, tmp_path):
    data = released_files[0].read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.pth").write_bytes(bytes(range(256)) * 64)
    assert "truncated.pth is not a readable PyTorch weights file, truncated or of another format" in _error(
        "tri-cityscapes-r50", weights=tmp_path / "truncated.pth")
    assert "corrupt.pth was not loaded: it is not a PyTorch zip archive" in _error(
        "tri-cityscapes-r50", weights=tmp_path / "corrupt.pth")
    assert _error("tri-cityscapes-r50", weights=tmp_path / "none.pth") == f"weights file {tmp_path / 'none.pth'} does not exist"
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert _error("r18-fpn", weights=tmp_path / "list.pth") == f"{tmp_path / 'list.pth'} holds a list, not a state dict of tensors"
    torch.save({"a.weight": torch.zeros(1), "step": 3}, tmp_path / "mixed.pth")
    assert _error("r18-fpn", weights=tmp_path / "mixed.pth") == (
        f"{tmp_path / 'mixed.pth'} is not a state dict of tensors: entry 'step' is a int")
    torch.save({}, tmp_path / "empty.pth")
    assert _error("r18-fpn", weights=tmp_path / "empty.pth").endswith("holds an empty mapping, not a state dict of tensors")


class _Payload:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_would_run_code_is_refused_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    state = released_state(0)
    state["payload"] = _Payload()
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=2)  # torch.load's own protocol: no warning about it
    text = _error("tri-cityscapes-r50", weights=path)
    assert "evil.pth was not loaded" in text and "weights_only=True" in text
    assert not marker.exists()


# ----------------------------------------------------------------------------------- training presets
def _backbone(preset: str, *overrides: str):
    from rtpanoptic.data import get_description
    from rtpanoptic.engine import make_config
    from rtpanoptic.engine.trainer import build_model_from_config

    cfg = make_config(preset, None, list(overrides))
    return build_model_from_config(cfg, get_description(cfg.data.name))


@pytest.mark.parametrize("preset", ["cityscapes", "coco"])
def test_training_presets_without_pretrained_warn_naming_the_fix(preset):
    from rtpanoptic.weights import frozen_random_layers, warn_frozen_random_layers

    model = _backbone(preset)
    assert frozen_random_layers(model.cfg.backbone) == ["stem (conv1) convs", "layer1 convs",
                                                        "every BatchNorm (frozen_bn)"]
    assert not model.backbone.body.conv1.weight.requires_grad  # what the warning is about
    with pytest.warns(UserWarning, match=r"set model.overrides=\[backbone.pretrained=PATH\] to a local torchvision "
                                         r"ResNet-50 file.*backbone.norm=bn,backbone.freeze_at=0"):
        warn_frozen_random_layers(model.cfg.backbone)


def test_local_torchvision_resnet_file_as_backbone_pretrained(tmp_path, recwarn):
    """The README's recipe: a torchvision ResNet state dict on disk, named in model.overrides."""
    import torchvision

    from rtpanoptic.weights import frozen_random_layers, warn_frozen_random_layers

    torch.manual_seed(5)
    resnet = torchvision.models.resnet50()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(resnet.state_dict(), path)  # with fc.*, as torchvision's files are
    model = _backbone("cityscapes", f"model.overrides=[backbone.pretrained={path}]")
    body = model.backbone.body
    for name, tensor in resnet.state_dict().items():
        if not name.startswith("fc.") and "num_batches_tracked" not in name:
            assert torch.equal(body.state_dict()[name], tensor), name
    assert frozen_random_layers(model.cfg.backbone) == []
    warn_frozen_random_layers(model.cfg.backbone)
    assert not [w for w in recwarn if "backbone.pretrained" in str(w.message)]


def _train_one_step(tmp_path, model_overrides: str):
    from rtpanoptic.engine import train
    from rtpanoptic.pipeline import build_dataset, train_config

    cfg = train_config("synthetic", None, [
        f"data.root={tmp_path / 'data'}", "data.synthetic_num_train=2", "data.synthetic_num_val=1",
        f"runtime.output_dir={tmp_path / 'run'}", "schedule.max_steps=1", "schedule.warmup_steps=1",
        "schedule.milestones=[]", "runtime.progress=false", "runtime.batch_size=2", f"model.overrides={model_overrides}"])
    train(cfg, train_set=build_dataset(cfg, cfg.data.train_split, train=True, progress=False))


def test_train_warns_once_when_it_freezes_random_layers(tmp_path):
    with pytest.warns(UserWarning, match="backbone.pretrained is not set") as record:
        _train_one_step(tmp_path / "frozen", "[fpn.channels=16,head.loc_channels=16,head.sem_channels=16,head.num_convs=1]")
    assert sum("backbone.pretrained is not set" in str(w.message) for w in record) == 1


def test_train_from_scratch_does_not_warn(tmp_path, recwarn):
    _train_one_step(tmp_path / "scratch", "[backbone.norm=bn,backbone.freeze_at=0,fpn.channels=16,"
                                          "head.loc_channels=16,head.sem_channels=16,head.num_convs=1]")
    assert not [w for w in recwarn if "backbone.pretrained" in str(w.message)]


# ----------------------------------------------------------------------------------- command line
def _cli_error(capsys, argv, match):
    from rtpanoptic.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert match in err, err
    return err


def test_predict_with_the_released_file(released_files, tmp_path):
    from PIL import Image

    from rtpanoptic.cli import main
    from rtpanoptic.data.panoptic_format import rgb2id
    from rtpanoptic.inference import Predictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "street.png")
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(released_files[1]), "--model", "tri-cityscapes-r50", "-i",
                 str(tmp_path / "street.png"), "--output-dir", str(out), "--device", "cpu", "--no-progress",
                 "--no-overlays"]) == 0
    want = Predictor(build_model("tri-cityscapes-r50", weights=released_files[0]))(image)[0]
    assert np.array_equal(rgb2id(np.array(Image.open(out / "panoptic" / "street.png"))), want.panoptic.numpy())


@pytest.mark.parametrize("command", ["predict", "evaluate", "benchmark", "export"])
def test_every_command_loads_weights_strictly(capsys, released_files, tmp_path, command):
    argv = [command, "--weights", str(released_files[0]), "--model", "r18-fpn"]
    if command == "predict":
        argv += ["-i", str(tmp_path)]
    if command == "export":
        argv += ["--output", str(tmp_path / "m.onnx")]
    classes = 19
    if command == "evaluate":  # a dataset that exists here: the synthetic one, 6 classes
        argv += ["--preset", "synthetic", f"data.root={tmp_path / 'data'}", "data.synthetic_num_train=1",
                 "data.synthetic_num_val=1", "--output-dir", str(tmp_path / "eval"), "--no-progress"]
        classes = 6
    _cli_error(capsys, argv, f"is for another architecture than model 'r18-fpn' [] with {classes} classes: 0 missing, "
                             f"165 unexpected (first: backbone.body.layer1.0.conv3.weight)")


def test_cli_weights_errors(capsys, released_files, tmp_path):
    argv = ["predict", "-i", str(tmp_path), "--weights"]
    _cli_error(capsys, [*argv, str(released_files[0])],
               "holds no training config; name its network with --model NAME (e.g. tri-cityscapes-r50)")
    _cli_error(capsys, [*argv, str(released_files[0]), "--model", "r99-fpn"], "unknown model preset 'r99-fpn'")
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    torch.save({"model": {"payload": _Payload()}}, tmp_path / "evil.pt")
    _cli_error(capsys, [*argv, str(tmp_path / "evil.pt")], "evil.pt was not loaded")
    assert not marker.exists()
