"""How :class:`~rtpanoptic.inference.Predictor` runs the network: numeric precision (autocast),
memory format, ``torch.compile`` and CUDA-graph replay.

Whatever runs inside, :class:`NetworkRunner` hands the post-processing float32, contiguous
:class:`~rtpanoptic.model.HeadOutputs`: thresholds, top-k, NMS and the mask fusion always work in
fp32.  With ``precision="fp32"`` and ``channels_last=False`` the outputs are exactly the plain
``model(x)`` ones (the casts are no-ops).

``channels_last=None`` (the default) picks the memory format measured faster (benchmarks/RESULTS.md):
channels_last on the CPU (oneDNN runs NHWC convolutions without reordering: faster in fp32 and bf16
on the CPUs measured, with AMX and without), and on CUDA for bf16 / fp16 (tensor-core convolutions
are NHWC); CUDA fp32 stays NCHW (not measured here: no GPU).  channels_last results differ from NCHW
ones in float rounding (~1e-6 relative), not bit for bit.  The precision stays fp32 unless asked:
bf16 is fast only where the CPU has AVX512-BF16 or AMX (:func:`cpu_has_native`; a warning
otherwise) or on a GPU.

``fast=True`` (:func:`run_options`) picks the fastest settings measured for this device in one
option: bf16 where the CPU computes it natively (else fp32), on CUDA bf16 (fp16 before Ampere);
channels_last; ``torch.compile`` with Inductor's weight freezing (:data:`FAST_COMPILE`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .model.outputs import HeadOutputs

# precision name -> autocast dtype (None: no autocast, plain fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RunMode:
    """The settings of a :class:`NetworkRunner`, as a value (benchmark tables, the GPU check):
    ``precision`` (a :data:`PRECISIONS` name), ``channels_last``, ``compile``."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        """``"bf16 + channels_last + compile"`` style label."""
        return " + ".join([self.precision] + ["channels_last"] * self.channels_last + ["compile"] * self.compile)


def default_channels_last(device: torch.device | str, precision: str) -> bool:
    """The memory format used when ``channels_last=None``: see the module docstring."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    return device.type == "cuda" and precision != "fp32"


def cpu_has_native(precision: str) -> bool | None:
    """Whether this CPU computes ``precision`` convolutions natively (bf16: AVX512-BF16 or AMX;
    fp16: AMX-FP16); None when this torch cannot tell."""
    cpu = torch.cpu
    checks = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"), "fp16": ("_is_amx_fp16_supported",)}
    names = checks.get(precision, ())
    if not names or not all(hasattr(cpu, n) for n in names):
        return None
    return any(getattr(cpu, n)() for n in names)


# torch.compile keyword arguments of fast=True.  Inductor's ``freezing`` treats the weights as
# constants (folded, and on the CPU prepacked for oneDNN) in the graphs compiled without grad.
# Inductor reads it from the global ``torch._inductor.config.freezing`` when Dynamo hands it a
# graph (as a per-compile option it froze nothing: torch 2.14.1 then passes the weights as graph
# inputs), so :class:`NetworkRunner` takes it out of the options and sets it in a
# ``config.patch`` around each call of the compiled network: this model's graphs only, the rest of
# the process unchanged.  The weights are read at compile time: changing them in place afterwards
# needs a new Predictor.
FAST_COMPILE: dict = {"options": {"freezing": True}}


def freezing_is_safe(device: torch.device | str) -> bool:
    """Whether Inductor's weight freezing may be used on ``device``: not on a CPU whose ATen
    capability is overridden (``ATEN_CPU_CAPABILITY`` set), see :func:`fast_compile`."""
    return not (torch.device(device).type == "cpu" and os.environ.get("ATEN_CPU_CAPABILITY"))


def inductor_settings(settings: dict) -> contextlib.AbstractContextManager:
    """``torch._inductor.config.patch(settings)`` for the duration of a call of a compiled graph
    (Inductor reads them while Dynamo hands it the graph); a no-op for no settings."""
    if not settings:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(settings)


def fast_compile(device: torch.device | str) -> dict:
    """The ``torch.compile`` keyword arguments of fast=True on ``device``: :data:`FAST_COMPILE`, but
    without weight freezing on a CPU whose ATen capability is overridden (``ATEN_CPU_CAPABILITY``
    set, as ``make isa-check`` does): there torch 2.14.1's frozen graphs compute wrong values while
    unfrozen ones agree (measured on an AVX-512 machine with ``ATEN_CPU_CAPABILITY=avx2``, a small
    conv net: fp32 off by 0.77, bf16 NaN)."""
    if not freezing_is_safe(device):
        return {"options": {"freezing": False}}
    return copy.deepcopy(FAST_COMPILE)


def fast_precision(device: torch.device | str) -> str:
    """The precision of ``fast=True`` on ``device``: ``"bf16"`` on a CPU that computes it natively
    (:func:`cpu_has_native`) and on a GPU with bf16 support, ``"fp16"`` on an older GPU, otherwise
    ``"fp32"`` (bf16 emulated on a CPU is slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native("bf16") else "fp32"


def run_options(device: torch.device | str, precision: str | None = None, channels_last: bool | None = None,
                compile: bool | dict = False, fast: bool = False) -> dict:
    """The :class:`NetworkRunner` keyword arguments ``{"precision", "channels_last", "compile"}`` of
    the user's options: ``precision`` None is ``"fp32"``; ``fast=True`` is
    ``{"precision": fast_precision(device), "channels_last": True, "compile": fast_compile(device)}`` and
    refuses any of the three given with it (ValueError naming them)."""
    if not fast:
        return {"precision": "fp32" if precision is None else precision, "channels_last": channels_last,
                "compile": compile}
    given = fast_conflicts(precision, channels_last, compile)
    if given:
        raise ValueError(f"fast=True chooses precision, channels_last and compile itself: "
                         f"drop {', '.join(given)} or fast")
    return {"precision": fast_precision(device), "channels_last": True, "compile": fast_compile(device)}


def fast_conflicts(precision: str | None, channels_last: bool | None, compile: bool | dict) -> list[str]:
    """The names of the options given (not at their defaults) that ``fast=True`` would choose."""
    given = {"precision": precision is not None, "channels_last": channels_last is not None,
             "compile": compile is not False}
    return [name for name, g in given.items() if g]


def check_precision(precision: str, device: torch.device | str) -> None:
    """ValueError unless ``precision`` is a :data:`PRECISIONS` name that ``device`` can run; a
    warning when a CPU would emulate it (slower than fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision 'bf16' needs a GPU with bfloat16 support (Ampere or newer); use 'fp16'")
    if precision != "fp32" and device.type == "cpu" and cpu_has_native(precision) is False:
        need = "AVX512-BF16 or AMX" if precision == "bf16" else "AMX-FP16"
        warnings.warn(f"precision {precision!r} on a CPU without {need}: emulated, likely slower than 'fp32'",
                      stacklevel=3)


def outputs_as_fp32(outputs: HeadOutputs) -> HeadOutputs:
    """Every tensor of ``outputs`` as float32, contiguous (a no-op for fp32 NCHW outputs)."""
    def cast(t: Tensor) -> Tensor:
        return t.float().contiguous()

    return HeadOutputs(*[[cast(t) for t in f] if isinstance(f, (list, tuple)) else cast(f) for f in outputs])


class NetworkRunner:
    """``runner(x)``: the network on a normalised batch ``[B, 3, H, W]`` (float32, on the model's
    device) -> float32 contiguous :class:`HeadOutputs`.

    Args:
        model: the :class:`~rtpanoptic.model.PanopticNet`.  With ``channels_last`` its weights are
            converted in place (``model.to(memory_format=torch.channels_last)``; values unchanged).
        precision: ``"fp32"`` | ``"bf16"`` | ``"fp16"``: the dtype of the network's autocast region
            (weights stay fp32).  fp16 on a CPU is slow (no native fp16 convolutions there).
        channels_last: NHWC activations and weights; None: :func:`default_channels_last`.
        compile: ``torch.compile`` the network: False, True (default options) or a dict of
            ``torch.compile`` keyword arguments (``{"mode": "max-autotune"}``).  The first calls
            at a new input size compile.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", channels_last: bool | None = None,
                 compile: bool | dict = False):
        device = next(model.parameters()).device
        check_precision(precision, device)
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile options, got {type(compile).__name__}")
        if channels_last is None:
            channels_last = default_channels_last(device, precision)
        self.model = model
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.compile = compile
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        kwargs = copy.deepcopy(compile) if isinstance(compile, dict) else {}
        options = kwargs.get("options") or {}
        # freezing is global Inductor state read while compiling: set around each call (FAST_COMPILE)
        self._inductor = {} if "freezing" not in options else {"freezing": bool(options.pop("freezing"))}
        if not options:
            kwargs.pop("options", None)
        self._forward = torch.compile(model, **kwargs) if compile else model

    def prepare(self, x: Tensor) -> Tensor:
        """The input in the runner's memory format (NHWC with ``channels_last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """The autocast region of the runner's precision (disabled for fp32) on ``device_type``."""
        dtype = PRECISIONS[self.precision]
        # cache_enabled=False: the weight-cast cache saves nothing in a forward pass (each weight is
        # used once) and must be off while a CUDA graph is captured.
        return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None,
                              cache_enabled=False)

    def __call__(self, x: Tensor) -> HeadOutputs:
        x = self.prepare(x)
        with self.autocast(x.device.type), inductor_settings(self._inductor):
            outputs = self._forward(x)
        return outputs_as_fp32(outputs)

    @property
    def mode(self) -> RunMode:
        return RunMode(self.precision, self.channels_last, bool(self.compile))

    def describe(self) -> dict:
        """The settings, for reports: ``{"precision", "channels_last", "compile"}``."""
        return dataclasses.asdict(self.mode)


class CUDAGraphRunner:
    """A :class:`NetworkRunner` replayed from CUDA graphs: one graph per input shape, captured on
    its first call (after two warm-up runs on a side stream).  For a stream of frames of one size
    the network's kernel launches then cost one ``graph.replay()``.  The returned outputs are
    copies, so they stay valid after the next call.  CUDA only (never run on the machines this was
    written on: no GPU there).
    """

    def __init__(self, runner: NetworkRunner, max_graphs: int = 4):
        if next(runner.model.parameters()).device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self.runner = runner
        self.max_graphs = int(max_graphs)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, HeadOutputs]] = {}

    def __call__(self, x: Tensor) -> HeadOutputs:
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.runner(x)  # many sizes: not a fixed-size stream, run eagerly
            entry = self._graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return HeadOutputs(*[[t.clone() for t in f] if isinstance(f, list) else f.clone() for f in static_out])

    def _capture(self, x: Tensor):
        static_in = x.clone()
        graph, static_out = capture_cuda_graph(lambda: self.runner(static_in), x.device)
        return graph, static_in, static_out


def capture_cuda_graph(fn: Callable[[], object], device: torch.device | str) -> tuple[torch.cuda.CUDAGraph, object]:
    """``(graph, output)``: ``fn`` run twice on a side stream (lazy initialisation and cuDNN
    autotuning happen outside the capture), then captured in a CUDA graph on ``device``; ``output``
    is what the captured call returned (its tensors are rewritten by every ``graph.replay()``)."""
    device = torch.device(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output
