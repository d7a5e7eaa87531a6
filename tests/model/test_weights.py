"""Weight files as users have them: the released state dict (old and new FPN names), plain state
dicts of every preset, rtpanoptic checkpoints; strict loading, weights_only, one-line errors."""
import json
import pickle
from pathlib import Path

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
            pickle.dump(state, f)
    text = _error("tri-cityscapes-r50", weights=path)
    assert "evil.pth was not loaded" in text and "weights_only=True" in text
    assert not marker.exists()
