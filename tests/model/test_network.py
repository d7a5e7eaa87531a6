"""The network: presets, shapes, init, input conventions, local ImageNet weights."""
import math

import pytest
import torch
import torchvision

from rtpanoptic.config import ConfigError, load_config
from rtpanoptic.data.description import CITYSCAPES, Category, DatasetDescription
from rtpanoptic.model import HeadOutputs, ModelConfig, PanopticNet, build_model, preset_config

TINY = DatasetDescription(
    "tiny-test",
    (Category(1, "a", True, (255, 0, 0)), Category(2, "b", True, (0, 255, 0)), Category(3, "sky", False, (0, 0, 255))),
)


@pytest.mark.parametrize("name,depth", [("r18-fpn", 18), ("r34-fpn", 34), ("r50-fpn", 50), ("tri-cityscapes-r50", 50)])
def test_presets_build(name, depth):
    model = build_model(name)
    assert isinstance(model, PanopticNet)
    assert model.cfg.backbone.depth == depth
    assert model.strides == (8, 16, 32, 64, 128)
    assert model.description is CITYSCAPES
    assert (model.semantic_stride, model.levelness_stride) == ((8, 4) if name.startswith("tri") else (4, 4))


def test_unknown_preset_and_keywords():
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("r101-fpn")
    with pytest.raises(TypeError, match="unknown keyword"):
        build_model("r18-fpn", widht=3)
    with pytest.raises(TypeError, match="name_or_config"):
        build_model(18)
    with pytest.raises(ValueError, match="head.loc_channels"):
        build_model("r18-fpn", overrides=["head.loc_channels=12"])  # not a multiple of 8
    with pytest.raises(ValueError, match="backbone.depth"):
        build_model("r18-fpn", depth=101)
    with pytest.raises(ConfigError):
        build_model("r18-fpn", overrides=["head.nope=1"])


def test_keyword_shortcuts():
    model = build_model("r18-fpn", description=TINY, fpn_channels=32, loc_channels=16, sem_channels=8,
                        num_convs=2, sigma=0.25, input_format="bgr_caffe")
    head = model.panoptic_head
    assert model.backbone.fpn.inner_blocks[0].out_channels == 32
    assert (head.bbox_tower[0].out_channels, head.cls_tower[0].out_channels, len(head.cls_tower)) == (16, 8, 6)
    assert model.cfg.inference.sigma == 0.25 and model.cfg.input_format == "bgr_caffe"


def test_preset_config_is_a_copy():
    cfg = preset_config("r18-fpn")
    cfg.head.loc_channels = 8
    assert preset_config("r18-fpn").head.loc_channels == 256


def test_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("backbone:\n  depth: 18\nhead:\n  sem_channels: 16\n")
    cfg = load_config(ModelConfig, path, ["head.loc_channels=24", "fpn.channels=32"])
    model = build_model(cfg, description=TINY)
    assert model.panoptic_head.cls_tower[0].out_channels == 16
    assert model.panoptic_head.bbox_tower[0].out_channels == 24
    assert model.cfg.description == "tiny-test"


@pytest.mark.parametrize("name", ["r18-fpn", "r50-fpn", "tri-cityscapes-r50"])
def test_output_shapes(name):
    model = build_model(name, description=TINY if name == "r18-fpn" else None).eval()
    c, k = model.num_classes, model.num_things
    x = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, HeadOutputs)
    for i, s in enumerate((8, 16, 32, 64, 128)):
        assert out.box_offsets[i].shape == (2, 4, 128 // s, 256 // s)
        assert out.centerness[i].shape == (2, 1, 128 // s, 256 // s)
        assert out.class_logits[i].shape == (2, k, 128 // s, 256 // s)
        assert (out.box_offsets[i] > 0).all()
    assert out.levelness.shape == (2, 6, 32, 64)
    ss = model.semantic_stride
    assert out.semantic.shape == (2, c, 128 // ss, 256 // ss)


def test_input_size_must_be_padded():
    model = build_model("r18-fpn", channels=16, description=TINY)
    with pytest.raises(ValueError, match="multiple of 128"):
        model(torch.zeros(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 128, 128))


def test_eval_forward_is_deterministic():
    torch.manual_seed(0)
    model = build_model("r18-fpn", channels=16, description=TINY).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = model(x), model(x)
    for u, v in zip(a, b):
        for s, t in zip(u if isinstance(u, list) else [u], v if isinstance(v, list) else [v]):
            assert torch.equal(s, t)


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build_model("r18-fpn", channels=16, description=TINY).state_dict()
    torch.manual_seed(3)
    b = build_model("r18-fpn", channels=16, description=TINY).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_head_init_and_box_parametrisation():
    model = build_model("r18-fpn", channels=16, description=TINY).eval()
    head = model.panoptic_head
    # FCOS prior: sigmoid(bias) = 0.01 for the thing classes.
    assert torch.allclose(head.box_cls_logits.bias.sigmoid(), torch.full((2,), 0.01))
    # offsets = exp(clamp(scale_i * conv, max=ln 10000)), no stride factor.
    torch.nn.init.zeros_(head.bbox_pred.weight)
    torch.nn.init.constant_(head.bbox_pred.bias, math.log(5.0))
    head.scales[1].scale.data.fill_(2.0)
    head.scales[2].scale.data.fill_(100.0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert torch.allclose(out.box_offsets[0], torch.full_like(out.box_offsets[0], 5.0))
    assert torch.allclose(out.box_offsets[1], torch.full_like(out.box_offsets[1], 25.0))
    assert torch.allclose(out.box_offsets[2], torch.full_like(out.box_offsets[2], 10000.0))


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = build_model("r18-fpn", channels=16, description=TINY, freeze_at=0, norm="bn").train()
    out = model(torch.randn(1, 3, 128, 128))
    loss = sum(t.float().mean() for field in out for t in (field if isinstance(field, list) else [field]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_freeze_at():
    model = build_model("r18-fpn", channels=16, description=TINY)  # default freeze_at=2
    body = model.backbone.body
    assert not body.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert all(type(m).__name__ == "FrozenBatchNorm2d" for n, m in body.named_modules() if "bn" in n.split(".")[-1])


def test_normalize_conventions():
    px = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)  # R, G, B
    tri = build_model("tri-cityscapes-r50")
    got = tri.normalize(px).flatten()
    assert torch.allclose(got, torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717]))
    paper = build_model("r18-fpn", channels=16, description=TINY)
    want = (torch.tensor([10, 20, 30]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(paper.normalize(px).flatten(), want, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        paper.normalize(px.float())


def test_local_imagenet_weights(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("r18-fpn", channels=16, description=TINY, pretrained=str(path)).eval()
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, ref.conv1.weight)
    assert torch.equal(body.layer3[1].bn2.running_var, ref.layer3[1].bn2.running_var)
    ref.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        got = body(x)["c5"]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_local_imagenet_weights_errors(tmp_path):
    from rtpanoptic.weights import WeightsError

    with pytest.raises(WeightsError, match="never downloaded"):
        build_model("r18-fpn", channels=16, description=TINY, pretrained=str(tmp_path / "missing.pth"))
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit"):
        build_model("r50-fpn", description=TINY, pretrained=str(path))
