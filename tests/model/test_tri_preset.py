"""The ``tri-cityscapes-r50`` preset has exactly the released checkpoint's tensors."""
import json
from pathlib import Path

import pytest
import torch

from rtpanoptic.model import build_model

# Every tensor name/shape/dtype of cvpr_realtime_pano_cityscapes_standalone_no_prefix.pth,
# derived by building the official model (TRI-ML/realtime_panoptic @ 97ee036).
MANIFEST = Path(__file__).parent / "tri_rtpanonet_r50_cityscapes_state_dict.json"


def _manifest():
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def tri():
    return build_model("tri-cityscapes-r50")


def test_state_dict_matches_manifest(tri):
    man = _manifest()
    want = [(k["name"], tuple(k["shape"]), k["dtype"]) for k in man["keys"]]
    got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in tri.state_dict().items()]
    assert got == want  # names, order, shapes, dtypes
    assert sum(v.numel() for v in tri.state_dict().values()) == man["num_params"]


def test_strict_load_of_random_checkpoint(tri, tmp_path):
    man = _manifest()
    g = torch.Generator().manual_seed(0)
    state = {k["name"]: torch.randn(k["shape"], generator=g) for k in man["keys"]}
    path = tmp_path / "released.pth"
    torch.save(state, path)
    result = tri.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(tri.panoptic_head.levelness.weight, state["panoptic_head.levelness.weight"])
    assert torch.equal(tri.backbone.fpn.extra_blocks.p6.bias, state["backbone.fpn.extra_blocks.p6.bias"])
    assert torch.equal(tri.backbone.body.layer4[2].bn3.running_var, state["backbone.body.layer4.2.bn3.running_var"])


def test_release_conventions(tri):
    assert tri.cfg.backbone.frozen_bn_eps == 0.0
    assert tri.backbone.body.bn1.eps == 0.0
    assert tri.cfg.input_format == "bgr_caffe"
    assert tri.semantic_stride == 8 and tri.levelness_stride == 4
    inf = tri.cfg.inference
    assert (inf.score, inf.sigma, inf.pre_nms_thresh, inf.global_nms_thresh) == ("tri", 0.4, 0.06, 0.97)
    head = tri.panoptic_head
    assert [m.num_groups for m in head.cls_tower if isinstance(m, torch.nn.GroupNorm)] == [16] * 4
    assert [m.num_groups for m in head.bbox_tower if isinstance(m, torch.nn.GroupNorm)] == [32] * 4
    # P6 comes from P5 (256 ch), not from C5 (2048 ch).
    assert tri.backbone.fpn.extra_blocks.p6.in_channels == 256


def test_paper_variant_of_same_model():
    paper = build_model("tri-cityscapes-r50", semantic_stride=4, frozen_bn_eps=1e-5)
    assert paper.semantic_stride == 4
    tri_keys = {k: v.shape for k, v in build_model("tri-cityscapes-r50").state_dict().items()}
    assert {k: v.shape for k, v in paper.state_dict().items()} == tri_keys


def test_strict_load_with_new_torchvision_fpn_names(tri):
    man = _manifest()
    renames = man["key_renames_for_torchvision_ge_0_13"]
    state = {renames.get(k["name"], k["name"]): torch.full(k["shape"], 0.5) for k in man["keys"]}
    assert "backbone.fpn.inner_blocks.0.0.weight" in state
    tri.load_state_dict(state, strict=True)
    assert tri.backbone.fpn.inner_blocks[0].weight.eq(0.5).all()
