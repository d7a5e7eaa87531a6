"""ONNX export of a network with HeadOutputs outputs, checked against onnxruntime (those tests
need onnxruntime and onnxscript), and torch.export programs (no optional dependency)."""
import importlib.util

import pytest
import torch
from torch import nn

from rtpanoptic.export import ExportError, export_onnx, export_program, flatten_outputs, output_names
from rtpanoptic.model.outputs import HeadOutputs

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="needs onnxruntime and onnxscript (the export extra)",
)


class TinyHeadNet(nn.Module):
    """Same output structure as the real network (two levels), a few convs and norms."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.box = nn.Conv2d(8, 4, 1)
        self.ctr = nn.Conv2d(8, 1, 1)
        self.cls = nn.Conv2d(8, 2, 1)
        self.lvl = nn.Conv2d(8, 3, 1)
        self.sem = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        f4 = self.stem(x)
        f8 = self.down(f4)
        f16 = self.down(f8)
        levels = [f8, f16]
        return HeadOutputs(
            [torch.exp(self.box(f)) for f in levels],
            [self.ctr(f) for f in levels],
            [self.cls(f) for f in levels],
            self.lvl(f4),
            nn.functional.interpolate(self.sem(f8), scale_factor=2.0, mode="bilinear", align_corners=False),
        )


def test_flat_names():
    out = TinyHeadNet()(torch.zeros(1, 3, 128, 128))
    assert output_names(out)[:3] == ["box_offsets_0", "box_offsets_1", "centerness_0"]
    assert len(flatten_outputs(out)) == len(output_names(out)) == 8


@needs_onnx
@pytest.mark.slow
def test_onnx_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    errors = export_onnx(TinyHeadNet(), tmp_path / "net.onnx", image_size=(128, 256))
    assert set(errors) == set(output_names(TinyHeadNet()(torch.zeros(1, 3, 128, 256))))
    assert max(errors.values()) < 1e-4
    assert (tmp_path / "net.onnx").stat().st_size > 0


@needs_onnx
def test_onnx_detects_mismatch(tmp_path, monkeypatch):
    import rtpanoptic.export as export

    real = export.check_onnx

    def corrupted(path, example, expected, names, rtol, atol):
        return real(path, example, [e + 1 for e in expected], names, rtol, atol)

    monkeypatch.setattr(export, "check_onnx", corrupted)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(TinyHeadNet(), tmp_path / "net.onnx", image_size=(128, 128))


def test_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="multiples of 128"):
        export_onnx(TinyHeadNet(), tmp_path / "x.onnx", image_size=(100, 128))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(TinyHeadNet(), tmp_path / "x.onnx", opset=11)


def test_torch_export_program_runs():
    model = TinyHeadNet().eval()
    program = export_program(model, image_size=(128, 128))
    x = torch.randn(1, 3, 128, 128)
    got = program.module()(x)
    for a, b in zip(flatten_outputs(got), flatten_outputs(model(x))):
        torch.testing.assert_close(a, b)


def _tiny_real_network():
    """The synthetic training preset's network (ResNet-18, 32-channel FPN and head), random weights."""
    from rtpanoptic.data import SYNTHETIC
    from rtpanoptic.engine import train_preset
    from rtpanoptic.engine.factories import build_model_from_config

    torch.manual_seed(0)
    return build_model_from_config(train_preset("synthetic"), SYNTHETIC).eval()


@needs_onnx
@pytest.mark.slow
def test_onnx_real_tiny_preset(tmp_path):
    model = _tiny_real_network()
    errors = export_onnx(model, tmp_path / "net.onnx", image_size=(128, 128), opset=17)
    assert len(errors) == 5 * 3 + 2  # 5 levels x (boxes, centerness, classes) + levelness + semantic
    assert max(errors.values()) < 1e-3


def test_torch_export_dense_predictor_real_preset(tmp_path):
    from rtpanoptic.export import DensePredictor, export_dense_program
    from rtpanoptic.inference import Predictor

    model = _tiny_real_network()
    program = export_dense_program(model, image_size=(128, 256))
    targets = {str(n.target) for n in program.graph.nodes}
    assert any("rtpanoptic.decode_boxes" in t for t in targets)
    assert any("rtpanoptic.gather_levelness" in t for t in targets)
    # saved and loaded back (the ops must be registered: importing rtpanoptic does it)
    torch.export.save(program, str(tmp_path / "dense.pt2"))
    loaded = torch.export.load(str(tmp_path / "dense.pt2"))
    images = torch.randint(0, 256, (1, 3, 128, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    got = loaded.module()(images)
    # the dense boxes agree with the eager Predictor's stages
    pred = Predictor(model)
    x, _ = pred.preprocess(images)
    from rtpanoptic import ops

    out = model(x)
    dense, fg = ops.gather_levelness(list(out.box_offsets), out.levelness, out_stride=model.levelness_stride)
    torch.testing.assert_close(got[-3], dense, rtol=1e-4, atol=1e-3)
    assert torch.equal(got[-2], fg)
    torch.testing.assert_close(got[0], ops.decode_boxes(out.box_offsets[0], 8), rtol=1e-4, atol=1e-3)
    assert got[-1].shape == (1, model.num_classes, 32, 64)
    assert isinstance(DensePredictor(model), torch.nn.Module)


def test_torch_export_full_predictor_matches_predictor(tmp_path):
    import dataclasses

    from rtpanoptic.export import export_panoptic_program
    from rtpanoptic.inference import Predictor

    model = _tiny_real_network()
    # every location a candidate, so NMS and the mask fusion have many queries to work on
    model.cfg = dataclasses.replace(model.cfg, inference=dataclasses.replace(model.cfg.inference, pre_nms_thresh=0.0))
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (1, 3, 128, 256), dtype=torch.uint8, generator=g)
    program = export_panoptic_program(model, image_size=(128, 256), example=images)
    torch.export.save(program, str(tmp_path / "full.pt2"))
    loaded = torch.export.load(str(tmp_path / "full.pt2")).module()
    for image in (images, torch.randint(0, 256, (1, 3, 128, 256), dtype=torch.uint8, generator=g)):
        panoptic, classes, queries, scores = loaded(image)
        ref = Predictor(model, channels_last=False)(image)[0]  # the program is NCHW fp32
        assert len(ref.detections.scores) > 10  # the fixture has real work for the post-processing
        assert torch.equal(panoptic, ref.panoptic)
        assert classes.tolist() == [s["train_id"] for s in ref.segments_info]
        assert (queries >= 0).tolist() == [s["isthing"] for s in ref.segments_info]
        torch.testing.assert_close(scores, torch.tensor([s["score"] for s in ref.segments_info]))


def test_torch_export_bad_size():
    from rtpanoptic.export import export_panoptic_program

    with pytest.raises(ValueError, match="multiples of 128"):
        export_panoptic_program(_tiny_real_network(), image_size=(100, 128))
