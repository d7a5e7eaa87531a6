"""Int8 inference (``Predictor(model, quantize="int8", calibration=images)``, rtpanoptic/quantize.py).

Network outputs against fp32 within bounds derived from int8's rounding (:data:`INT8_UNIT`), the
Predictor end to end on the int8 network, the one-line errors.  The int8 network is the converted
PT2E graph run eagerly (``compile=False``: the reference of the quantization, quantize / dequantize
around fp32 ops): Inductor's compilation of it takes minutes on a small CPU, too long for the suite
(the compiled graph's error against fp32 is measured in docs/inference.md).
"""
import math
import os
import sys

import pytest
import torch
from test_precision import DEPTH, _image, _model, _relative_errors, _well_scaled_model

from rtpanoptic.inference import Predictor
from rtpanoptic.quantize import INSTALL_HINT, float_copy, load_torchao

try:
    load_torchao()
    HAVE_TORCHAO = True
except ImportError:
    HAVE_TORCHAO = False
needs_torchao = pytest.mark.skipif(not HAVE_TORCHAO, reason=f"torchao not installed: {INSTALL_HINT}")

# The int8 counterpart of a float format's unit roundoff u (test_precision._relative_errors: a
# rounding error of RMS u/sqrt(3) relative to the values' scale).  An affine int8 quantizer over a
# range R rounds to steps of R/255, an error uniform in +-R/510 (RMS R/(510 sqrt(3))), the same
# for every value of the tensor: relative to the tensor's RMS s that is u = (R/s)/510.  The
# calibrated ranges cover about +-4 RMS (activations: the histogram observer's range over the
# calibration images; weights: per channel, symmetric, max |w| of N(0, 1/fan_in) weights of
# fan-in up to 4608 ~ 4 RMS), R/s = 8: u = 8/510 ~ 2^-6 -- 4x bf16's 2^-8.  The bounds are then
# test_precision's: DEPTH * u per output kind, 2 sqrt(DEPTH) * u over the kinds.  Measured on the
# 2-core AMD EPYC (Zen 4): 8-24 x 2^-8 per kind, 16-17 x 2^-8 over the kinds (the bounds: 104 and
# 41 x 2^-8).
INT8_UNIT = 2.0**-6


@pytest.fixture(scope="module")
def int8_pair():
    """(fp32 model, Predictor of the same model in int8, calibrated on 2 images of 128x128)."""
    calibration = [_image(seed)[0] for seed in (0, 1)]
    return _well_scaled_model(), Predictor(_well_scaled_model(), quantize="int8", calibration=calibration,
                                           compile=False)


@needs_torchao
def test_int8_network_outputs_within_int8_rounding(int8_pair):
    ref, pred = int8_pair
    assert pred.network.describe() == {"precision": "int8", "channels_last": False, "compile": False}
    x, _ = pred.preprocess(_image(5))  # not a calibration image
    got = pred.network(x)
    with torch.no_grad():
        want = ref(x)
    flat_got = [t for f in got for t in (f if isinstance(f, list) else [f])]
    flat_want = [t for f in want for t in (f if isinstance(f, list) else [f])]
    for a, b in zip(flat_got, flat_want):
        assert a.dtype == torch.float32 and a.is_contiguous() and a.shape == b.shape
    assert not all(torch.equal(a, b) for a, b in zip(flat_got, flat_want))  # int8 did run
    errors = _relative_errors(got, want)
    for kind, e in errors.items():
        assert e <= DEPTH * INT8_UNIT, f"{kind}: relative error {e / INT8_UNIT:.2f} u > DEPTH u"
    overall = math.sqrt(sum(e * e for e in errors.values()) / len(errors))
    assert overall <= 2 * math.sqrt(DEPTH) * INT8_UNIT, f"RMS relative error {overall / INT8_UNIT:.2f} u"


@needs_torchao
def test_int8_predictor_end_to_end(int8_pair):
    """A size not calibrated on (128x256: another exported graph, the calibrated scales loaded):
    the results are the post-processing of the int8 network's outputs and a valid segmentation."""
    _, pred = int8_pair
    image = _image(7, size=(128, 256))[0]
    (result,) = pred([image])
    x, sizes = pred.preprocess([image])
    (want,) = pred.postprocess(pred.network(x), sizes)
    assert torch.equal(result.panoptic, want.panoptic) and result.segments_info == want.segments_info
    assert result.panoptic.shape == (128, 256) and result.semantic.shape == (128, 256)
    assert result.segments_info, "the int8 network found no segment"
    ids = torch.unique(result.panoptic).tolist()
    assert set(ids) - {0} == {s["id"] for s in result.segments_info if s["area"] > 0}
    categories = {c.id for c in result.description.categories}
    for s in result.segments_info:
        assert s["area"] == int((result.panoptic == s["id"]).sum()) and s["category_id"] in categories
    assert int(result.semantic.min()) >= 0 and int(result.semantic.max()) < len(result.description.categories)


def test_float_copy_unfreezes_batchnorm_and_leaves_the_model():
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = _model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_()
    copy = float_copy(model)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in copy.modules())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(model.backbone(x), copy.backbone(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)  # the same function, two float formulas


def test_int8_without_torchao_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao raises ImportError
    for name in [m for m in sys.modules if m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"^int8 quantization needs torchao: pip install 'rtpanoptic\[int8\]'"):
        Predictor(_model(), quantize="int8", calibration=[_image()[0]])


@pytest.mark.parametrize("kwargs, message", [
    ({"fast": True}, "Predictor: quantize='int8' runs the network in int8 itself: drop fast or quantize"),
    ({"precision": "bf16"}, "Predictor: quantize='int8' runs the network in int8 itself: drop precision or quantize"),
    ({"channels_last": True, "fast": True},
     "Predictor: quantize='int8' runs the network in int8 itself: drop fast, channels_last or quantize"),
    ({"quantize": "int4"}, "Predictor: quantize must be one of ('int8',) or None, got 'int4'"),
    ({"quantize": None}, "Predictor: calibration is for quantize='int8': give quantize or drop calibration"),
    ({"calibration": None}, "Predictor: quantize='int8' needs calibration images (calibration=[...])"),
    ({"calibration": []}, "Predictor: quantize='int8' needs at least one calibration image"),
])
def test_int8_option_errors(kwargs, message):
    if kwargs == {"calibration": []} and not HAVE_TORCHAO:
        pytest.skip(f"torchao not installed: {INSTALL_HINT}")
    kwargs = {"quantize": "int8", "calibration": [_image()[0]], **kwargs}
    with pytest.raises(ValueError) as info:
        Predictor(_model(), **kwargs)
    assert str(info.value) == message


def test_int8_off_the_cpu_is_refused():
    """A model on another device (meta here, standing for CUDA: no GPU on the test machines)."""
    model = _model().to("meta")
    with pytest.raises(ValueError) as info:
        Predictor(model, quantize="int8", calibration=[_image()[0]])
    assert str(info.value) == ("Predictor: quantize='int8' runs on the CPU only (oneDNN's int8 kernels), "
                               "the model is on meta")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("flags, named", [
    (["--int8", "--calibration", "{img}", "--fast"], "--int8 runs the network in int8 itself: drop --fast or --int8"),
    (["--int8", "--calibration", "{img}", "--precision", "bf16", "--channels-last"],
     "drop --precision, --[no-]channels-last or --int8"),
    (["--calibration", "{img}"], "--calibration is for --int8: give --int8 or drop --calibration"),
    (["--int8"], "--int8 needs --calibration PATH (an image or a folder of images; repeatable)"),
    # without torchao the CLI names the missing package first
    pytest.param(["--int8", "--calibration", "{missing}"], "input {missing} does not exist", marks=needs_torchao),
])
def test_int8_cli_errors(command, flags, named, tmp_path, capsys):
    """One line, exit status 2, before any model or dataset is read (the checkpoint does not exist)."""
    from cli_testing import one_line_error

    img = tmp_path / "img.png"
    img.write_bytes(b"")
    paths = {"img": img, "missing": tmp_path / "none.png"}
    inputs = ["-i", str(img)] if command == "predict" else []
    flags = [f.format(**paths) for f in flags]
    one_line_error(capsys, [command, "--checkpoint", str(tmp_path / "missing.pt"), *inputs, "--device", "cpu",
                            "--output-dir", str(tmp_path / "out"), *flags], named.format(**paths))


def test_int8_cli_without_torchao(monkeypatch, tmp_path, capsys):
    from cli_testing import one_line_error

    monkeypatch.setitem(sys.modules, "torchao", None)
    for name in [m for m in sys.modules if m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    one_line_error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--device", "cpu",
                            "--output-dir", str(tmp_path / "out"), "--int8", "--calibration", str(tmp_path)],
                   "int8 quantization needs torchao: pip install 'rtpanoptic[int8]'")


@needs_torchao
@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("ATEN_CPU_CAPABILITY")),
                    reason="int8 is not compiled under an overridden ATen capability (see execution.fast_compile)")
def test_compiled_int8_within_int8_rounding_and_leaves_the_process_as_it_was():
    """The compiled path (Inductor, weight freezing, oneDNN's int8 convolutions) on a two-layer net
    that compiles in seconds: within DEPTH * u of fp32 for its depth 2 (test_precision's rule), and
    no process-global setting changed (freezing is set around each call only)."""
    from test_precision import _process_state, _TinyHead

    from rtpanoptic.quantize import Int8Network

    torch.manual_seed(0)
    net = _TinyHead().eval()
    calibration = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    before = _process_state()
    runner = Int8Network(net, calibration, compile=True)
    x = torch.randn(1, 3, 32, 32)
    got = runner(x)
    assert _process_state() == before
    with torch.no_grad():
        want = net(x)
    num = float((got.levelness.double() - want.levelness.double()).square().sum())
    error = math.sqrt(num / float(want.levelness.double().square().sum()))
    assert 0 < error <= 2 * INT8_UNIT, f"relative error {error / INT8_UNIT:.2f} u > 2 u"
