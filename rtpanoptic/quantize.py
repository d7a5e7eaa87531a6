"""Int8 CPU inference: post-training static quantization of the network by PT2E (``torch.export``
+ torchao's ``X86InductorQuantizer``), run by Inductor on oneDNN's int8 convolutions (AVX-512
VNNI, AMX-INT8).  Opt-in, CPU only, needs torchao (``pip install 'rtpanoptic[int8]'``).

:class:`Int8Network` is what ``Predictor(model, quantize="int8", calibration=images)`` runs:

1. a float copy of the network (the user's model is untouched) with every ``FrozenBatchNorm2d``
   made an eval ``BatchNorm2d`` of the same statistics (``prepare_pt2e`` folds those into the
   convolutions; a frozen one would stay an fp32 multiply-add between int8 convolutions);
2. ``torch.export`` at one batch shape, each call of a shared module made its own source
   (:func:`separate_module_calls`: the head's towers run once per FPN level and the quantizer
   refuses a convolution "partition" with several outputs), ``prepare_pt2e`` with the quantizer's
   default config: int8 activations per tensor (histogram observers), weights per channel;
3. calibration: the observers see the calibration batches;
4. per input shape met (batch and padded size): the network exported at that shape, the
   calibrated observer state loaded (the same graph at every shape, so the same scales),
   ``convert_pt2e`` and ``torch.compile`` with Inductor's weight freezing (which prepacks the
   int8 weights for oneDNN).  The first call at each shape exports and compiles.

The outputs are float32 :class:`~rtpanoptic.model.HeadOutputs` like :class:`NetworkRunner`'s:
the post-processing is unchanged.  ``compile=False`` runs the converted graph eagerly: the
reference of the quantization (quantize / dequantize in fp32 around fp32 ops; slow), which the
tests compare with fp32.

Freezing is a dynamo-time setting (dynamo lifts a module's weights as parameters for Inductor's
``freeze`` only when ``torch._inductor.config.freezing`` is set: as a per-compile option Inductor
sees no parameter to freeze, and the int8 weights' prepacking then cannot compile), so each call
sets it, and torchao's pre-grad pass (:func:`load_torchao`), in a ``config.patch`` around the
compiled graph: the process's config is left as it was.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .execution import RunMode, freezing_is_safe, inductor_settings, outputs_as_fp32
from .model.outputs import HeadOutputs

INSTALL_HINT = "pip install 'rtpanoptic[int8]' (or pip install torchao)"
QUANTIZE_MODES = ("int8",)


def int8_conflicts(fast: bool, precision: str | None, channels_last: bool | None) -> list[str]:
    """The names of the options given with int8 (not at their defaults) that it refuses: it runs the
    network in int8 itself, so ``fast``, ``precision`` and ``channels_last`` have nothing to choose."""
    given = {"fast": fast, "precision": precision, "channels_last": channels_last}
    return [name for name, value in given.items() if value not in (None, False)]


def load_torchao():
    """``(prepare_pt2e, convert_pt2e, X86InductorQuantizer with its default config, Inductor config
    of the compiled int8 graphs)``; ImportError (one line naming the pip command) when torchao is not
    installed.

    Importing torchao's x86 quantizer sets ``torch._inductor.config.pre_grad_custom_pass`` (its
    ``QuantLiftUp``) for the whole process: the previous value is put back and the pass is set only
    around the int8 graphs' calls (with ``freezing``), so other compiles in the process are as before."""
    import torch._inductor.config as inductor_config

    previous = inductor_config.pre_grad_custom_pass
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        raise ImportError(f"int8 quantization needs torchao: {INSTALL_HINT}") from None
    finally:
        lift_up, inductor_config.pre_grad_custom_pass = inductor_config.pre_grad_custom_pass, previous
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    return prepare_pt2e, convert_pt2e, quantizer, {"freezing": True, "pre_grad_custom_pass": lift_up}


def float_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode whose ``FrozenBatchNorm2d`` layers are eval
    ``nn.BatchNorm2d`` with the same weight, bias, running statistics and eps (the same function;
    values equal up to float rounding of the two formulas)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    out = copy.deepcopy(model).eval()
    for module in list(out.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FrozenBatchNorm2d):
                bn = nn.BatchNorm2d(child.weight.numel(), eps=child.eps).eval()
                with torch.no_grad():
                    for key in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, key).copy_(getattr(child, key))
                setattr(module, name, bn)
    return out


def separate_module_calls(gm: torch.fx.GraphModule) -> None:
    """Give each call of a module called several times (the head's towers, once per FPN level)
    its own name in the nodes' ``nn_module_stack`` (``name@k`` for its k-th call, k >= 1): the
    quantizer groups nodes into "source partitions" by that name and refuses a convolution
    partition with several outputs.  A call is a run of consecutive nodes of the same module."""
    calls: dict[str, int] = {}
    previous = None
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if not stack:
            previous = None
            continue
        key = next(reversed(stack))
        fqn, cls = stack[key]
        if fqn != previous:
            calls[fqn] = calls.get(fqn, -1) + 1
        previous = fqn
        if calls[fqn]:
            stack = dict(stack)
            stack[key] = (f"{fqn}@{calls[fqn]}", cls)
            node.meta["nn_module_stack"] = stack


def _observer_state(prepared: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in prepared.state_dict().items() if k.startswith("activation_post_process_")}


def _load_observer_state(prepared: nn.Module, state: dict[str, Tensor], shape: tuple[int, ...]) -> None:
    own = set(_observer_state(prepared))
    if own != set(state):
        raise RuntimeError(f"int8: the network's graph at input shape {list(shape)} has other quantization "
                           f"points than the calibrated one ({len(own)} vs {len(state)})")
    prepared.load_state_dict(state, strict=False)


class Int8Network:
    """``runner(x)``: the network quantized to int8 on a normalised batch ``[B, 3, H, W]`` (float32,
    CPU, H and W multiples of 128) -> float32 contiguous :class:`HeadOutputs` (see the module
    docstring).

    Args:
        model: the :class:`~rtpanoptic.model.PanopticNet` (on the CPU; copied, not changed).
        calibration: normalised batches ``[B, 3, H, W]`` as the network sees them (any sizes; at
            least one): the activation ranges are taken from them.
        compile: ``torch.compile`` each converted graph (Inductor, weight freezing: the fast path);
            False runs the converted graph eagerly (the reference of the quantization, slow).

    ValueError for a model off the CPU or no calibration batch; ImportError without torchao.
    """

    def __init__(self, model: nn.Module, calibration: Iterable[Tensor], compile: bool = True):
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"quantize='int8' runs on the CPU only (oneDNN's int8 kernels), the model is on {device}")
        if not isinstance(compile, bool):
            raise TypeError(f"quantize='int8': compile must be a bool, got {type(compile).__name__}")
        self._prepare_pt2e, self._convert_pt2e, self._quantizer, self._inductor_config = load_torchao()
        if compile and not freezing_is_safe("cpu"):
            # execution.fast_compile: torch 2.14.1's frozen graphs computed wrong values under an
            # overridden ATen capability, and int8 needs freezing to compile
            warnings.warn("quantize='int8' under ATEN_CPU_CAPABILITY: not compiled (the reference graph, slow)",
                          stacklevel=3)
            compile = False
        self.model = model
        self.compile = compile
        self._float = float_copy(model)
        self._graphs: dict[tuple[int, ...], nn.Module] = {}
        self._state, self._last = self._calibrate(calibration)  # the observers, the prepared graph of the last shape

    def _prepared(self, shape: tuple[int, ...]) -> torch.fx.GraphModule:
        """The float network exported at input ``shape`` with observers (not yet calibrated)."""
        example = torch.zeros(shape)
        gm = torch.export.export(self._float, (example,)).module()
        separate_module_calls(gm)
        return self._prepare_pt2e(gm, self._quantizer)

    @torch.no_grad()
    def _calibrate(self, batches: Iterable[Tensor]) -> tuple[dict[str, Tensor], tuple]:
        prepared: dict[tuple[int, ...], torch.fx.GraphModule] = {}
        last = None
        for x in batches:
            shape = tuple(x.shape)
            if shape not in prepared:
                prepared[shape] = self._prepared(shape)
            if last is not None and last != shape:  # continue the observers of the previous shape
                _load_observer_state(prepared[shape], _observer_state(prepared[last]), shape)
            prepared[shape](x.float())
            last = shape
        if last is None:
            raise ValueError("quantize='int8' needs at least one calibration image")
        return _observer_state(prepared[last]), (last, prepared[last])

    def graph(self, shape: tuple[int, ...]) -> nn.Module:
        """The converted (and with ``compile`` compiled) graph for input ``shape``, made on first use."""
        if shape not in self._graphs:
            if shape == self._last[0]:  # calibrated at this shape: no second export
                prepared = copy.deepcopy(self._last[1])
            else:
                prepared = self._prepared(shape)
                _load_observer_state(prepared, self._state, shape)
            converted = self._convert_pt2e(prepared)
            self._graphs[shape] = torch.compile(converted) if self.compile else converted
        return self._graphs[shape]

    def prepare(self, x: Tensor) -> Tensor:
        """The input as the graphs take it: unchanged (Inductor picks the memory format)."""
        return x

    @torch.no_grad()
    def __call__(self, x: Tensor) -> HeadOutputs:
        graph = self.graph(tuple(x.shape))
        with inductor_settings(self._inductor_config if self.compile else {}):
            return outputs_as_fp32(graph(x.float()))

    @property
    def mode(self) -> RunMode:
        """The settings as a :class:`~rtpanoptic.execution.RunMode` (precision ``"int8"``)."""
        return RunMode("int8", False, self.compile)

    def describe(self) -> dict:
        """The settings, for reports: ``{"precision": "int8", "channels_last": False, "compile"}``."""
        return {"precision": "int8", "channels_last": False, "compile": self.compile}
