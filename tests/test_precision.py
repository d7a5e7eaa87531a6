"""Predictor precision and speed options: fp32 / bf16 / fp16 autocast, channels_last, torch.compile.

Network outputs against fp32 (bf16, fp16, channels_last): bounds derived from the precision's unit
roundoff u and the network's depth, never constants tuned on one CPU (oneDNN and ATen pick
different kernels per ISA: AMX, AVX512-BF16, AVX2, default; see :func:`_relative_errors`).

Detections and panoptic quality, bf16 against fp32 (what a user sees):
- each of the 20 best fp32 queries of an image has a bf16 query of the same class with
  |score difference| <= 0.03 and box IoU >= 0.5 (the usual detection match), >= 0.9 for 90 % of them;
- panoptic quality: PQ of the bf16 segmentation measured against the fp32 one >= 75 (measured
  84-93 on oneDNN's AVX-512 and AVX2 paths).  (Not PQ against the synthetic ground truth: the
  random network scores 0 there in fp32 and bf16, a comparison that could not fail.)
That network is random (fixed seed): queries close in score and overlapping masks make it a harder
case than a trained one (benchmarks/RESULTS.md: a trained synthetic model, bf16 vs fp32 PQ).
"""
import json
import math
import os
import warnings

import pytest
import torch
from torchvision.ops import box_iou

from rtpanoptic.cli import main
from rtpanoptic.data.synthetic import SyntheticConfig
from rtpanoptic.evaluation import PanopticQualityEvaluator
from rtpanoptic.execution import (
    FAST_COMPILE,
    PRECISIONS,
    NetworkRunner,
    RunMode,
    default_channels_last,
    fast_compile,
    outputs_as_fp32,
    run_options,
)
from rtpanoptic.inference import Predictor
from rtpanoptic.model import HeadOutputs, build_model

TOP = 20  # queries per image compared in the bf16 test


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    m = build_model("r18-fpn", description="synthetic", channels=16, **kw).eval()
    with torch.no_grad():  # a random network that still finds things: every box ~32 px, p ~ 0.5
        m.panoptic_head.box_cls_logits.bias.fill_(0.0)
        m.panoptic_head.bbox_pred.bias.fill_(math.log(16.0))
        m.panoptic_head.bbox_pred.weight.mul_(20.0)  # boxes that vary from place to place
    return m


def _flat(outputs):
    return [t for f in outputs for t in (f if isinstance(f, list) else [f])]


def _image(seed=0, size=(128, 128)):
    return torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _is_channels_last(model):
    return model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


# The longest chain of layers that each round their output (r18-fpn, P7's head outputs): conv1 and
# 4 stages x 2 blocks x 2 convs (17), the FPN's 1x1 and 3x3 convs on C5 (2), P6 and P7 (2), the 4
# tower convs and the prediction conv.  (The global maps resize and concatenate P3..P7's tower
# features: the same depth.)
DEPTH = 17 + 2 + 2 + 4 + 1
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11, "fp32": 2.0**-24}  # u = 2^-p, p significant bits
MAX_FAN_IN = 512 * 9  # the longest dot product: layer4's 3x3 convs over 512 channels


def _well_scaled_model(seed=0):
    """The random r18-fpn with normalised prediction convs (weights N(0, 1/fan_in), biases 0): every
    output map varies by O(1) and carries no constant that would hide its error, and every layer's
    output is on the scale of its terms (ResNet's He init, the FPN's, GroupNorm in the towers), so
    a relative error measures rounding, not cancellation."""
    torch.manual_seed(seed)
    m = build_model("r18-fpn", description="synthetic", channels=16).eval()
    h = m.panoptic_head
    with torch.no_grad():
        for conv in (h.cls_logits, h.box_cls_logits, h.bbox_pred, h.centerness, h.levelness):
            conv.weight.normal_(0.0, conv.weight[0].numel() ** -0.5)
            conv.bias.zero_()
    return m


def _relative_errors(got, want) -> dict[str, float]:
    """Per output kind (all FPN levels together), the RMS relative error
    ``sqrt(sum |got - want|^2 / sum |want|^2)``; box offsets compared as the logarithms the network
    predicts (``exp`` multiplies an absolute error of the log by the offset itself).

    The bounds it is held to, for a precision of unit roundoff u (bf16 2^-8, fp16 2^-11) computed
    by any correct kernel (operands rounded to nearest, products accumulated in fp32, the output
    rounded once: oneDNN's contract on every ISA), against fp32:
    - one layer: its inputs, weights and output are each rounded with a relative error of RMS
      u/sqrt(3) (uniform in [-u, u]), independent from term to term: the layer adds an error of
      RMS sqrt(3) * u/sqrt(3) = u relative to its output's scale (normalised weights: the output is
      on the scale of its terms);
    - depth: a later layer carries an earlier error with gain ~1 (random normalised weights,
      GroupNorm / He-scaled ReLU layers keep relative errors); independent errors of DEPTH layers
      add in quadrature, RMS sqrt(DEPTH) * u;
    - bound, each output kind: DEPTH * u, the first-order worst case (every layer's error adding
      in the same direction);
    - bound, the RMS over the 5 kinds: 2 * sqrt(DEPTH) * u, twice the independent-error estimate
      (for gains above 1: ReLU switching sides, GroupNorm over small groups).  Measured on an AMD
      EPYC (Zen 4, avx512_bf16, no AMX) with 4 seeds x oneDNN AVX2 / AVX512_CORE / ALL: 3.5-5.5 u
      over the kinds (the bound: 10.2 u), 0.6-8.7 u per kind (the bound: 26 u).
    For fp32 against fp32 in another summation order (channels_last), u = 2^-24 and each layer's
    error is a reordered sum of up to MAX_FAN_IN terms, RMS sqrt(MAX_FAN_IN) * u: the same bounds
    with u * sqrt(MAX_FAN_IN) for u.
    """
    errors = {}
    for kind, a, b in zip(HeadOutputs._fields, got, want):
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        if kind == "box_offsets":
            a, b = [t.log() for t in a], [t.log() for t in b]
        num = sum(float((x.detach().double() - y.double()).square().sum()) for x, y in zip(a, b))
        den = sum(float(y.double().square().sum()) for y in b)
        errors[kind] = math.sqrt(num / den)
    return errors


def _assert_within_rounding(got, want, u):
    """``got`` (a precision of unit roundoff ``u``) against ``want`` (fp32) within the bounds of
    :func:`_relative_errors`; returns the errors."""
    errors = _relative_errors(got, want)
    for kind, e in errors.items():
        assert e <= DEPTH * u, f"{kind}: relative error {e / u:.2f} u > DEPTH u = {DEPTH} u"
    overall = math.sqrt(sum(e * e for e in errors.values()) / len(errors))
    assert overall <= 2 * math.sqrt(DEPTH) * u, \
        f"RMS relative error {overall / u:.2f} u > 2 sqrt(DEPTH) u = {2 * math.sqrt(DEPTH):.2f} u"
    return errors


def test_fp32_nchw_is_the_plain_network_bit_for_bit():
    model = _model()
    pred = Predictor(model, channels_last=False)
    x, _ = pred.preprocess(_image())
    with torch.no_grad():
        want = model(x)
    got = pred.network(x)
    assert not _is_channels_last(model)
    for a, b in zip(_flat(got), _flat(want)):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_channels_last_default_on_cpu():
    assert default_channels_last("cpu", "fp32") and default_channels_last("cpu", "bf16")
    assert not default_channels_last("cuda", "fp32") and default_channels_last("cuda", "bf16")
    ref = _well_scaled_model()
    model = _well_scaled_model()
    pred = Predictor(model)
    assert pred.network.channels_last and _is_channels_last(model)  # converted in place
    x, _ = pred.preprocess(_image())
    got = pred.network(x)
    with torch.no_grad():
        want = ref(x)
    for a in _flat(got):
        assert a.is_contiguous() and a.dtype == torch.float32  # what the post-processing gets
    # fp32 in another summation order: float rounding, not bit for bit (see _relative_errors)
    _assert_within_rounding(got, want, UNIT_ROUNDOFF["fp32"] * math.sqrt(MAX_FAN_IN))


def test_outputs_as_fp32_casts_and_makes_contiguous():
    model = _model()
    x = torch.randn(1, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model.to(memory_format=torch.channels_last)(x)
    assert any(t.dtype == torch.bfloat16 for t in _flat(raw))
    out = outputs_as_fp32(raw)
    assert type(out) is type(raw) and [len(f) for f in out[:3]] == [5, 5, 5]
    for a, b in zip(_flat(out), _flat(raw)):
        assert a.dtype == torch.float32 and a.is_contiguous() and torch.equal(a, b.float())


def _autocast_against_fp32(precision, seed, **options):
    """(network outputs in ``precision``, fp32 outputs) of the well-scaled model on image ``seed``."""
    ref, model = _well_scaled_model(), _well_scaled_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "emulated, likely slower" on CPUs without native support
        pred = Predictor(model, precision=precision, **options)
    x, _ = pred.preprocess(_image(seed))
    got = pred.network(x)
    with torch.no_grad():
        want = ref(x)
    for a, b in zip(_flat(got), _flat(want)):
        assert a.dtype == torch.float32  # the post-processing runs in fp32
        assert not torch.equal(a, b)  # the precision did run
    return got, want


def test_bf16_network_outputs_within_tolerance():
    """bf16 against fp32 within the bounds derived from bf16's unit roundoff 2^-8 and the depth
    (:func:`_relative_errors`: <= 26 u per output kind, <= 10.2 u over the kinds), on whichever
    kernels this CPU's oneDNN picks (AMX, AVX512-BF16, AVX2 emulation)."""
    _assert_within_rounding(*_autocast_against_fp32("bf16", 1), UNIT_ROUNDOFF["bf16"])


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory):
    from rtpanoptic.data import synthetic_dataset

    root = str(tmp_path_factory.mktemp("synthetic"))
    cfg = SyntheticConfig(num_train=0, num_val=4, seed=3)
    return synthetic_dataset(root, "val", cfg, progress=False)


def _pq(pairs, description):
    ev = PanopticQualityEvaluator(description, use_train_ids=True)
    for i, (gt_ids, gt_segments, res) in enumerate(pairs):
        ev.update(gt_ids, gt_segments, res.panoptic, [{"id": s["id"], "category_id": s["train_id"]}
                                                      for s in res.segments_info], str(i))
    return 100.0 * ev.compute()["All"]["pq"]


def _as_gt(res):
    return res.panoptic.numpy(), [{"id": s["id"], "category_id": s["train_id"], "iscrowd": 0} for s in res.segments_info]


def test_bf16_detections_and_pq_against_fp32(synthetic_val):
    model = _model(seed=2)
    with torch.no_grad():  # spread the scores out (a random head's are nearly all equal)
        model.panoptic_head.box_cls_logits.weight.mul_(20.0)
        model.panoptic_head.box_cls_logits.bias.fill_(-1.0)
        model.panoptic_head.centerness.weight.mul_(20.0)
    opts = dict(pre_nms_thresh=0.2, post_nms_top_n=30, sigma=0.05)
    fp32 = Predictor(model, channels_last=False, **opts)
    images = [synthetic_val[i]["image"] for i in range(len(synthetic_val))]
    want = [fp32(im)[0] for im in images]
    bf16 = Predictor(model, precision="bf16", **opts)
    got = [bf16(im)[0] for im in images]
    close = []
    for a, b in zip(got, want):
        top = b.detections.scores.argsort(descending=True)[:TOP]
        assert len(top) == TOP
        iou = box_iou(b.detections.boxes[top], a.detections.boxes)
        same = b.detections.labels[top, None] == a.detections.labels[None]
        dscore = (b.detections.scores[top, None] - a.detections.scores[None]).abs() <= 0.03
        assert ((iou >= 0.5) & same & dscore).any(1).all()
        close.append(((iou >= 0.9) & same & dscore).any(1))
    assert torch.cat(close).float().mean() >= 0.9
    d = synthetic_val.description
    agreement = _pq([(*_as_gt(b), a) for a, b in zip(got, want)], d)
    assert agreement >= 75.0


def test_fp16_on_cpu_runs_and_stays_close():
    """fp16 (unit roundoff 2^-11: 3 more significant bits than bf16) against fp32, the same bounds."""
    _assert_within_rounding(*_autocast_against_fp32("fp16", 2, channels_last=False), UNIT_ROUNDOFF["fp16"])


def test_compile_eager_backend_equals_uncompiled():
    """The compile path (TorchDynamo capture) on the 'eager' backend runs the same kernels: equal
    outputs.  (Inductor's code generation is exercised by the benchmarks, not here: minutes on a CPU.)"""
    model = _model()
    plain = Predictor(model, channels_last=False)
    compiled = Predictor(model, channels_last=False, compile={"backend": "eager", "fullgraph": True})
    assert compiled.network.describe() == {"precision": "fp32", "channels_last": False, "compile": True}
    image = _image(3)
    a, b = compiled(image)[0], plain(image)[0]
    assert torch.equal(a.panoptic, b.panoptic) and a.segments_info == b.segments_info


def test_emulated_precision_warns(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.warns(UserWarning, match=r"^precision 'bf16' on a CPU without AVX512-BF16 or AMX: emulated"):
        Predictor(_model(), precision="bf16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Predictor(_model(), precision="bf16")


def test_option_errors():
    model = _model()
    with pytest.raises(ValueError, match=r"^precision must be one of \('fp32', 'bf16', 'fp16'\), got 'int8'$"):
        Predictor(model, precision="int8")
    with pytest.raises(TypeError, match=r"^compile must be a bool or a dict of torch.compile options, got str$"):
        Predictor(model, compile="max-autotune")
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16"}
    with pytest.raises(ValueError, match=r"^precision must be one of"):
        NetworkRunner(model, precision="half")


def test_evaluator_keeps_the_training_models_layout(synthetic_val):
    """The training-time evaluation hook must not switch the model being trained to channels_last."""
    from rtpanoptic.engine.evaluate import PanopticEvaluator

    model = _model()
    metrics = PanopticEvaluator(synthetic_val, max_images=1)(model)
    assert 0.0 <= metrics["PQ"] <= 100.0
    assert not _is_channels_last(model)


def test_cli_benchmark_precision_flags(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["benchmark", "--preset", "synthetic", "--device", "cpu", "--image-size", "128", "128", "--iters", "1",
            "--no-ops", "--json", str(out)]
    assert main([*argv, "--precision", "bf16"]) == 0
    report = json.loads(out.read_text())
    assert (report["precision"], report["channels_last"], report["compile"]) == ("bf16", True, False)
    assert "bf16 channels_last" in capsys.readouterr().out
    from rtpanoptic.cli import _predictor_options, build_parser

    args = build_parser().parse_args([*argv, "--no-channels-last", "--compile"])
    assert _predictor_options(args, torch.device("cpu")) == {"precision": "fp32", "channels_last": False,
                                                             "compile": True}


def test_cli_precision_choices_are_the_predictors():
    from rtpanoptic.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("predict", "evaluate", "benchmark"):
        action = next(a for a in sub.choices[command]._actions if a.dest == "precision")
        assert tuple(action.choices) == tuple(PRECISIONS) and action.default is None  # None: fp32, or --fast's
        assert any(a.dest == "fast" for a in sub.choices[command]._actions)


def test_cli_rejects_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--precision", "int4"])
    assert exc.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def _native_bf16(monkeypatch, native: bool) -> None:
    """This CPU as one with (AMX) or without (neither AMX nor AVX512-BF16) native bf16."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)


@pytest.mark.parametrize("native, precision", [(True, "bf16"), (False, "fp32")])
def test_fast_resolves_to_the_documented_settings(monkeypatch, native, precision):
    _native_bf16(monkeypatch, native)
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fast never picks an emulated precision
        pred = Predictor(model, fast=True)  # torch.compile is lazy: nothing compiles here
    assert pred.network.mode == RunMode(precision, channels_last=True, compile=True)
    want = {"options": {"freezing": not os.environ.get("ATEN_CPU_CAPABILITY")}}  # see fast_compile
    assert pred.network.compile == fast_compile("cpu") == want
    assert _is_channels_last(model)


def test_fast_does_not_freeze_under_an_aten_capability_override(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert run_options("cpu", fast=True)["compile"] == {"options": {"freezing": False}}
    assert run_options("cuda", fast=True)["compile"] == FAST_COMPILE
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert run_options("cpu", fast=True)["compile"] == FAST_COMPILE == {"options": {"freezing": True}}


def test_fast_on_cuda_picks_bf16_or_fp16(monkeypatch):
    for supported, precision in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert run_options("cuda", fast=True) == {"precision": precision, "channels_last": True,
                                                  "compile": {"options": {"freezing": True}}}
    assert run_options("cuda") == {"precision": "fp32", "channels_last": None, "compile": False}


@pytest.mark.parametrize("given, names", [
    (dict(precision="fp32"), "precision"),
    (dict(channels_last=False), "channels_last"),
    (dict(compile=True, precision="bf16"), "precision, compile"),
])
def test_fast_refuses_the_options_it_chooses(given, names):
    with pytest.raises(ValueError, match=rf"^Predictor: fast=True chooses precision, channels_last and compile "
                                         rf"itself: drop {names} or fast$"):
        Predictor(_model(), fast=True, **given)


def test_fast_equals_the_spelled_out_options(monkeypatch):
    """fast=True and its settings spelled out give the same results (torch.compile on the 'eager'
    backend here: Inductor's code generation takes minutes on a small CPU; see the slow test)."""
    _native_bf16(monkeypatch, True)
    compile_calls = []
    compile = torch.compile

    def eager_compile(model, **kwargs):
        compile_calls.append(kwargs)
        return compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    spelled = Predictor(_model(), precision="bf16", channels_last=True, compile=fast_compile("cpu"))
    fast = Predictor(_model(), fast=True)
    assert compile_calls == [{}] * 2  # freezing is set around the calls (next test), not passed
    image = _image(4)
    a, b = fast(image)[0], spelled(image)[0]
    assert torch.equal(a.panoptic, b.panoptic) and torch.equal(a.semantic, b.semantic)
    assert a.segments_info == b.segments_info and torch.equal(a.detections.scores, b.detections.scores)


@pytest.mark.parametrize("capability", [None, "avx2"])
def test_fast_freezes_the_weights_while_inductor_compiles(monkeypatch, capability):
    """Inductor freezes the weights only when the global ``torch._inductor.config.freezing`` is set
    while Dynamo hands it the graph (a per-compile option froze nothing): the runner sets it around
    its calls, and only there; not under an overridden ATen capability (fast_compile)."""
    import torch._inductor.config as inductor_config

    if capability is None:
        monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    else:
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
    seen = []
    compile = torch.compile

    def recording_compile(model, **kwargs):
        def backend(gm, example_inputs):
            seen.append(inductor_config.freezing)
            return gm.forward

        return compile(model, backend=backend, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    torch._dynamo.reset()
    try:
        runner = NetworkRunner(_TinyHead().eval(), **run_options("cpu", fast=True))
        assert not inductor_config.freezing
        with torch.no_grad():
            runner(torch.randn(1, 3, 16, 16))
        assert seen and all(f is (capability is None) for f in seen)
        assert not inductor_config.freezing  # the process's setting is back
    finally:
        torch._dynamo.reset()


def _process_state() -> dict:
    """The process-global settings a compile could leave changed (and that would slow down or
    alter the user's other, eager work): threads, oneDNN (and its fp32 math mode), denormal flushing,
    grad / autocast modes, default dtype, matmul precision, determinism, Inductor's and Dynamo's configs."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    return {
        "threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "mkldnn": (torch.backends.mkldnn.enabled, torch.backends.mkldnn.conv.fp32_precision,
                   torch.backends.mkldnn.matmul.fp32_precision),
        "flush_denormal": float(torch.tensor([1e-40]) * 1.0) == 0.0,
        "grad": torch.is_grad_enabled(),
        "autocast": torch.is_autocast_enabled("cpu"),
        "default_dtype": torch.get_default_dtype(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "inductor": {k: _config_value(v) for k, v in inductor_config.get_config_copy().items()},
        "dynamo": {k: _config_value(v) for k, v in dynamo_config.get_config_copy().items()},
    }


def _config_value(value) -> str:
    """A config value as text, sets in sorted order: a copy of a set (a config patch restores a
    copy) may iterate in another order, e.g. Dynamo's ``_save_config_ignore``, which made this
    comparison fail now and then with equal values."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(map(repr, value))})"
    return repr(value)


class _TinyHead(torch.nn.Module):
    """Two convolutions returning HeadOutputs: Inductor compiles it in seconds (the r18-fpn: minutes)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pred = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.pred(self.conv(x).relu())
        return HeadOutputs([y], [y[:, :1]], [y[:, 1:3]], y, y[:, :2])


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("ATEN_CPU_CAPABILITY")),
                    reason="Inductor under an overridden ATen capability (torch 2.14.1: C++ that does not compile "
                           "at 'default'); make isa-check leaves compiling out")
def test_inductor_fast_path_leaves_the_process_as_it_was():
    """fast=True's compile (Inductor, weight freezing set around its calls) changes no
    process-global setting, and equals the same options spelled out (same kernels)."""
    torch._dynamo.reset()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = _process_state()
    torch.manual_seed(0)
    fast = NetworkRunner(_TinyHead().eval(), **run_options("cpu", fast=True))
    torch.manual_seed(0)
    spelled = NetworkRunner(_TinyHead().eval(), precision=fast.precision, channels_last=True,
                            compile=fast_compile("cpu"))
    try:
        with torch.no_grad():  # freezing applies to graphs compiled without grad
            a, b = fast(x), spelled(x)
        assert _process_state() == before
        for s, t in zip(_flat(a), _flat(b)):
            assert torch.equal(s, t)
    finally:
        torch._dynamo.reset()
