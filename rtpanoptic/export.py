"""Export the network to ONNX (checked with onnxruntime) and to a ``torch.export`` program.

The network's forward returns :class:`~rtpanoptic.model.outputs.HeadOutputs`; ONNX has no
nested outputs, so the exported graph returns its tensors flat, in :func:`output_names` order.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .inference import DevicePostprocess, semantic_probs_on
from .ops._padded import count_on_host
from .safe_io import replacing


class ExportError(RuntimeError):
    """Export failed or the exported model disagrees with PyTorch."""


def flatten_outputs(outputs) -> tuple[Tensor, ...]:
    """HeadOutputs (lists per level + global maps) -> a flat tuple of tensors."""
    flat: list[Tensor] = []
    for value in outputs:
        if isinstance(value, (list, tuple)):
            flat.extend(value)
        else:
            flat.append(value)
    return tuple(flat)


def output_names(outputs) -> list[str]:
    names: list[str] = []
    for field, value in zip(outputs._fields, outputs):
        if isinstance(value, (list, tuple)):
            names.extend(f"{field}_{i}" for i in range(len(value)))
        else:
            names.append(field)
    return names


class _FlatOutputs(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return flatten_outputs(self.model(images))


def _example(image_size: Sequence[int], batch: int, seed: int = 0) -> Tensor:
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0 or h % 128 or w % 128:
        raise ValueError(f"image_size must be positive multiples of 128 (the network pads to them), got {h}x{w}")
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    image_size: Sequence[int] = (256, 512),
    batch: int = 1,
    opset: int = 18,
    check: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> dict[str, float]:
    """Write ``model`` (eval mode, fixed input size) to ONNX at ``path``.

    With ``check``, runs onnxruntime on a random input and compares every output with
    PyTorch; returns ``{output_name: max_abs_error}`` and raises :class:`ExportError`
    beyond ``atol + rtol * |reference|``.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (GroupNorm / resize semantics), got {opset}")
    path = Path(path)
    model = model.eval()
    example = _example(image_size, batch)
    with torch.no_grad():
        reference = model(example)
    names = output_names(reference)
    wrapper = _FlatOutputs(model).eval()
    try:
        with replacing(path) as tmp:  # a link at path is replaced; an interrupted export leaves the old file
            torch.onnx.export(
                wrapper, (example,), str(tmp), input_names=["images"], output_names=names,
                opset_version=opset, dynamo=True, external_data=False,
            )
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    if not check:
        return {}
    return check_onnx(path, example, flatten_outputs(reference), names, rtol=rtol, atol=atol)


def check_onnx(
    path: str | Path, example: Tensor, expected: Sequence[Tensor], names: Sequence[str], rtol: float, atol: float
) -> dict[str, float]:
    """Run the ONNX file with onnxruntime on ``example`` and compare with ``expected``."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("checking the ONNX file needs onnxruntime (pip install onnxruntime)") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    if len(got) != len(expected):
        raise ExportError(f"ONNX model returns {len(got)} outputs, PyTorch {len(expected)}")
    errors = {}
    for name, ort_out, ref in zip(names, got, expected):
        ort_out = torch.from_numpy(ort_out)
        if ort_out.shape != ref.shape:
            raise ExportError(f"output {name}: ONNX shape {tuple(ort_out.shape)} != PyTorch {tuple(ref.shape)}")
        err = (ort_out.float() - ref.float()).abs()
        errors[name] = float(err.max()) if err.numel() else 0.0
        bad = err > atol + rtol * ref.float().abs()
        if bad.any():
            raise ExportError(
                f"output {name}: onnxruntime differs from PyTorch at {int(bad.sum())} values (max abs error {errors[name]:.3g})"
            )
    return errors


def export_program(model: nn.Module, image_size: Sequence[int] = (256, 512), batch: int = 1):
    """``torch.export`` of the network; returns the ExportedProgram (save with ``torch.export.save``)."""
    example = _example(image_size, batch)
    return torch.export.export(model.eval(), (example,), strict=False)


class DensePredictor(nn.Module):
    """The exportable part of :class:`~rtpanoptic.inference.Predictor`: uint8 RGB images
    ``[B, 3, H, W]`` (H, W multiples of 128) -> normalisation, network, dense decoding.

    Returns a flat tuple: per level the decoded boxes ``[B, 4, h_i, w_i]`` (``ops.decode_boxes``)
    and the detection scores ``sigmoid(class) * sigmoid(centerness)`` ``[B, K, h_i, w_i]``, then the
    global dense boxes ``[B, 4, H/s, W/s]`` and foreground mask of ``ops.gather_levelness``
    (eq. 14) and the semantic probabilities on the same grid ``[B, C, H/s, W/s]``.  What the
    Predictor does after this (per-image thresholds and top-k, NMS, ``panoptic_from_dense``) is not
    part of the program (:class:`PanopticProgram` has it).
    """

    def __init__(self, model: nn.Module, backend=None):
        super().__init__()
        self.model = model
        self.backend = backend

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        from . import ops

        out = self.model(self.model.normalize(images))
        boxes = [ops.decode_boxes(o, s, backend=self.backend) for o, s in zip(out.box_offsets, self.model.strides)]
        scores = [c.sigmoid() * t.sigmoid() for c, t in zip(out.class_logits, out.centerness)]
        dense, fg = ops.gather_levelness(list(out.box_offsets), out.levelness,
                                         out_stride=self.model.levelness_stride, backend=self.backend)
        return (*boxes, *scores, dense, fg, semantic_probs_on(out.semantic, dense.shape[-2:]))


def export_dense_program(model: nn.Module, image_size: Sequence[int] = (256, 512), batch: int = 1,
                         check: bool = True, backend=None):
    """``torch.export`` of :class:`DensePredictor` (the C++ ops enter the graph as
    ``torch.ops.rtpanoptic.*`` through their fake kernels).  With ``check``, the program's
    outputs are compared with eager ones on a random image (:class:`ExportError` if they differ)."""
    example = _uint8_example(image_size, batch)
    wrapper = DensePredictor(model.eval(), backend).eval()
    return _export_checked(wrapper, example, check, atol=1e-4)


def _uint8_example(image_size: Sequence[int], batch: int) -> Tensor:
    _example(image_size, batch)  # validates the size
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, int(image_size[0]), int(image_size[1])), generator=g, dtype=torch.uint8)


def _export_checked(wrapper: nn.Module, example: Tensor, check: bool, atol: float, names: Sequence[str] = ()):
    """``torch.export`` ``wrapper`` on ``example``; with ``check`` its outputs must equal eager ones."""
    try:
        program = torch.export.export(wrapper, (example,), strict=False)
    except Exception as exc:
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {exc}") from exc
    if check:
        with torch.no_grad():
            expected = wrapper(example)
            got = program.module()(example)
        for i, (a, b) in enumerate(zip(got, expected)):
            if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=atol):
                name = repr(names[i]) if i < len(names) else str(i)
                raise ExportError(f"exported program output {name} differs from eager PyTorch")
    return program


class PanopticProgram(nn.Module):
    """The whole :class:`~rtpanoptic.inference.Predictor` for one image, in a form ``torch.export``
    can trace: uint8 RGB ``[1, 3, H, W]`` (H, W multiples of 128) -> ``(panoptic int32 [H, W]``
    (0 void, k the k-th segment), ``classes`` int64 ``[S]`` (semantic train ids), ``queries``
    int64 ``[S]`` (query index, -1 for stuff), ``scores [S])``.

    The post-processing is the panoptic part of the Predictor's device stage
    (:meth:`DevicePostprocess.segments <rtpanoptic.inference.DevicePostprocess.segments>`:
    fixed-count candidates, padded queries and segments, counts on the device; not the semantic map
    at input size nor the segment statistics, which the program does not return), so the result
    is the Predictor's.  The segments are trimmed
    to their count, an unbacked size of the exported program; ``padded=True`` returns the ``S``
    segment slots and the count (int64 0-d) instead, ``(panoptic, classes, queries, scores,
    count)``: nothing is read on the host, so the module can be captured in a CUDA graph.
    ``network``: how the network runs (a :class:`~rtpanoptic.execution.NetworkRunner` for another
    precision or memory format); default ``model`` itself.
    """

    def __init__(self, model: nn.Module, network: Callable[[Tensor], object] | None = None, padded: bool = False):
        super().__init__()
        self.model = model
        self.network = model if network is None else network
        self.options = model.cfg.inference
        self.padded = padded
        self.postprocess = DevicePostprocess(model, self.options)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        h, w = images.shape[-2], images.shape[-1]
        # the panoptic part alone: the program returns no semantic map and no segment statistics
        ((panoptic, seg, _, _),) = self.postprocess.segments(self.network(m.normalize(images)), [(h, w)])
        segments = (seg.classes, seg.queries, seg.scores)
        if self.padded:
            return (panoptic, *segments, seg.count)
        k = count_on_host(seg.count, seg.classes.shape[0])
        return (panoptic, *(t[:k] for t in segments))


def export_panoptic_program(model: nn.Module, image_size: Sequence[int] = (256, 512), check: bool = True,
                            example: Tensor | None = None):
    """``torch.export`` of :class:`PanopticProgram` (network + post-processing through the
    ``torch.ops.rtpanoptic`` ops) for a fixed image size.  With ``check``, the program's output on
    ``example`` (default: a random uint8 image) must equal the eager module's (:class:`ExportError`).
    Load it with ``import rtpanoptic; torch.export.load(path)`` (the import registers the ops)."""
    default = _uint8_example(image_size, 1)
    example = default if example is None else example
    wrapper = PanopticProgram(model.eval()).eval()
    return _export_checked(wrapper, example, check, atol=1e-5, names=("panoptic", "classes", "queries", "scores"))
