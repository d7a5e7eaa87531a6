"""Input checks shared by the public ops: clear TypeError / ValueError messages."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def tensor(
    op: str,
    name: str,
    t,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = False,
    integer: bool = False,
    boolean: bool = False,
) -> Tensor:
    """Check one argument; ``shape`` entries of None match any size."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{op}: {name} must be an integer tensor, got {t.dtype}")
    if boolean and t.dtype != torch.bool:
        raise TypeError(f"{op}: {name} must be a bool tensor, got {t.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]" if shape else f"{ndim}-D"
        raise ValueError(f"{op}: {name} must have shape {want}, got {list(t.shape)}")
    if shape is not None:
        for i, s in enumerate(shape):
            if s is not None and t.shape[i] != s:
                want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
                raise ValueError(f"{op}: {name} must have shape {want}, got {list(t.shape)}")
    return t


def boxes(op: str, name: str, t, *, integer: bool = False) -> Tensor:
    """xyxy boxes: floating point, shape [N, 4].  ``integer=True`` also takes integer boxes and
    returns them in torch's default float dtype (torchvision's IoU dtype for integer boxes)."""
    if integer and isinstance(t, Tensor) and not t.is_floating_point():
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must be a floating-point or integer tensor, got {t.dtype}")
        return tensor(op, name, t, shape=(None, 4)).to(torch.get_default_dtype())
    return tensor(op, name, t, shape=(None, 4), floating=True)


def same_length(op: str, **named: Tensor) -> None:
    (first_name, first), *rest = named.items()
    for name, t in rest:
        if t.shape[0] != first.shape[0]:
            raise ValueError(
                f"{op}: {name} has {t.shape[0]} entries but {first_name} has {first.shape[0]}; they must match"
            )


def same_device(op: str, **named: Tensor) -> torch.device:
    devices = {name: t.device for name, t in named.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on the same device, got {listing}")
    return first


def same_dtype(op: str, **named: Tensor) -> None:
    dtypes = {name: t.dtype for name, t in named.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: tensors must share one dtype, got {listing}")


def number(op: str, name: str, value, *, low: float | None = 0.0, high: float | None = None) -> float:
    """A finite real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{op}: {name} must not be NaN")
    if low is not None and value < low:
        raise ValueError(f"{op}: {name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{op}: {name} must be <= {high}, got {value}")
    return value


def positive_int(op: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return value


def choice(op: str, name: str, value, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{op}: {name} must be one of {options}, got {value!r}")
    return value
