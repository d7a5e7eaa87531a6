"""Export the network to ONNX (checked with onnxruntime) and to a ``torch.export`` program.

The network's forward returns :class:`~rtpanoptic.model.outputs.HeadOutputs`; ONNX has no
nested outputs, so the exported graph returns its tensors flat, in :func:`output_names` order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn


class ExportError(RuntimeError):
    """Export failed or the exported model disagrees with PyTorch."""


def flatten_outputs(outputs) -> Tuple[Tensor, ...]:
    """HeadOutputs (lists per level + global maps) -> a flat tuple of tensors."""
    flat: List[Tensor] = []
    for value in outputs:
        if isinstance(value, (list, tuple)):
            flat.extend(value)
        else:
            flat.append(value)
    return tuple(flat)


def output_names(outputs) -> List[str]:
    names: List[str] = []
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

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
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
) -> Dict[str, float]:
    """Write ``model`` (eval mode, fixed input size) to ONNX at ``path``.

    With ``check``, runs onnxruntime on a random input and compares every output with
    PyTorch; returns ``{output_name: max_abs_error}`` and raises :class:`ExportError`
    beyond ``atol + rtol * |reference|``.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (GroupNorm / resize semantics), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = _example(image_size, batch)
    with torch.no_grad():
        reference = model(example)
    names = output_names(reference)
    wrapper = _FlatOutputs(model).eval()
    try:
        torch.onnx.export(
            wrapper, (example,), str(path), input_names=["images"], output_names=names,
            opset_version=opset, dynamo=True, external_data=False,
        )
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    if not check:
        return {}
    return check_onnx(path, example, flatten_outputs(reference), names, rtol=rtol, atol=atol)


def check_onnx(
    path: str | Path, example: Tensor, expected: Sequence[Tensor], names: Sequence[str], rtol: float, atol: float
) -> Dict[str, float]:
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
