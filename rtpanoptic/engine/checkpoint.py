"""Atomic training checkpoints: model, optimiser, scheduler, AMP scaler, step and RNG states.

A checkpoint is written to a temporary file in the target directory, flushed to disk, then
moved over the target with :func:`os.replace` (atomic on POSIX): a crash leaves the previous
checkpoint intact, never a truncated one; :func:`remove_stale_temporaries` clears the
temporaries such a crash leaves behind.

Checkpoints hold tensors and plain values only (the RNG states included), and every load goes
through :func:`read_checkpoint` with ``torch.load(weights_only=True)``: a file that needs
arbitrary unpickling is refused with :class:`CheckpointError`, never executed.  Every problem a
user can fix (missing, truncated or untrusted file, another architecture, a full disk) is a
:class:`CheckpointError` with a one-line message naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_io import replacing
from ..weights import CheckpointError, _first_line, _untrusted_message

LAST = "last.pt"
FORMAT_VERSION = 2  # 2: RNG states as tensors / ints (weights_only-loadable); 1 pickled numpy's

# atomic_save's temporaries of the trainer's files: ".last.pt.<8 chars>.tmp", ".step_0001000.pt.<8 chars>.tmp"
_TEMPORARY = re.compile(r"\.(?:last|step_\d+)\.pt\.[a-z0-9_]{8}\.tmp")


# ----------------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """torch, numpy (legacy global), Python and CUDA generator states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only with the same number of GPUs)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------- writing
def _write_error(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot write checkpoint {path}: the disk is full (no space left on the device of {path.parent}); "
                f"the previous checkpoint there is intact")
    return f"cannot write checkpoint {path}: {exc.strerror or _first_line(exc)}"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file and :func:`os.replace` (a link at
    ``path`` is replaced, not written through; the mode follows the umask).

    An ``OSError`` (full disk, no permission) becomes a :class:`CheckpointError`; on any failure
    the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    try:
        # unbuffered: a failed write (ENOSPC) reaches torch.save as the OSError it is
        with replacing(path, suffix=".tmp") as tmp, open(tmp, "wb", buffering=0) as f:
            torch.save(obj, f)
            os.fsync(f.fileno())
    except OSError as exc:
        raise CheckpointError(_write_error(path, exc)) from exc
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of interrupted saves of ``last.pt`` / ``step_*.pt`` in ``folder``
    (files named exactly as :func:`atomic_save` names them, nothing else); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if _TEMPORARY.fullmatch(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    step: int,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }
    return atomic_save(state, path)


# ----------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The content of a checkpoint file, loaded with ``weights_only=True``; it must hold ``model``.

    Raises :class:`CheckpointError` for a missing, unreadable (truncated) or untrusted file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists()
                              else f"checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(_untrusted_message(path)) from None
    except Exception as exc:  # zip / storage errors of a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint, truncated or of another format "
                              f"({_first_line(exc)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an rtpanoptic checkpoint (no 'model' entry)")
    return state


def _mismatch(model: torch.nn.Module, weights: dict[str, Any]) -> str:
    """A short account of how ``weights`` differs from ``model.state_dict()``."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and hasattr(weights[k], "shape") and weights[k].shape != own[k].shape]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape, e.g. {k} {list(weights[k].shape)} vs {list(own[k].shape)}")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts) or "incompatible tensors"


def load_model_state(model: torch.nn.Module, weights: dict[str, Any], path: str | os.PathLike) -> None:
    """``model.load_state_dict(weights)``; a mismatch is a one-line :class:`CheckpointError`."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} is for another architecture ({_mismatch(model, weights)})") from None


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    restore_rng: bool = True,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into the given objects; returns it.

    Raises :class:`CheckpointError` (one line, naming ``path``) for anything a user can fix.
    """
    state = read_checkpoint(path, map_location)
    if "step" not in state:
        raise CheckpointError(f"{path} is not an rtpanoptic training checkpoint (no 'step' entry)")
    if model is not None:
        load_model_state(model, state["model"], path)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is not None and state.get(name) is not None:
            try:
                obj.load_state_dict(state[name])
            except (ValueError, RuntimeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{path}: its {name} state does not fit this run ({_first_line(exc)})") from None
    if restore_rng and state.get("rng") is not None:
        try:
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path}: unreadable RNG state ({_first_line(exc)})") from None
    return state


def find_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """``"auto"``: ``output_dir/last.pt`` if it exists; a path: that file (must exist); None: none."""
    if resume is None or resume == "" or resume == "none":
        return None
    if resume == "auto":
        p = Path(output_dir) / LAST
        return p if p.is_file() else None
    p = Path(resume)
    if not p.is_file():
        raise CheckpointError(f"runtime.resume: checkpoint {p} does not exist")
    return p
