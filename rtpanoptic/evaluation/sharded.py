"""Dataset evaluation shared by the processes of ``torchrun --nproc_per_node=N``.

Rank r predicts images r, r + N, r + 2N, ... of the evaluated split and writes its per-image
files (prediction PNGs, overlays) into a private staging folder (rank 0: the output folder
itself).  :meth:`Shard.gather` then brings to rank 0 the files, COCO-panoptic annotations,
semantic confusion matrices and mask-AP records of every rank, in dataset order; rank 0
writes them and computes the metrics from exactly what one process would have had, so PQ,
mIoU and AP equal the single-process values and the prediction files are the same bytes.  Only
rank 0 writes outputs; :meth:`Shard.share` hands its metrics to every rank.

Failures: work that can fail on one rank runs inside :meth:`Shard.guard`; every rank then
learns of it at the guard's end and raises the same one-line :class:`ShardError`.  A rank that
dies or hangs makes the others' next collective fail after ``timeout_s`` (gloo's timeout), also
as a one-line :class:`ShardError`, never a hang.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..distributed import Ranked, _env_int
from ..safe_io import replacing
from ..usage import UsageError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800.0


class ShardError(UsageError):
    """A rank of a sharded evaluation failed, or did not answer in time (one-line message)."""


@dataclass
class Shard(Ranked):
    """This process's part of an evaluation: rank ``rank`` of ``world_size`` (1: no process group)."""

    rank: int = 0
    world_size: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def current(cls) -> Shard:
        """The shard of the initialised default process group, else the whole job (rank 0 of 1)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), _timeout_s)
        return cls()

    def indices(self, n: int) -> range:
        """This rank's dataset indices among the first ``n``: ``rank, rank + N, ...``."""
        return range(self.rank, n, self.world_size)

    # ------------------------------------------------------------------------------ collectives
    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RuntimeError as exc:  # gloo: a peer closed its connection or did not answer in time
            raise ShardError(
                f"rank {self.rank} of {self.world_size}: another rank did not answer while {what} within "
                f"{self.timeout_s:g} s or its process ended (see that rank's output) "
                f"({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__})") from None

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the block; then every rank learns whether it failed anywhere, and all raise the
        same one-line :class:`ShardError` if so (one collective per rank, also after a failure)."""
        error = None
        try:
            yield
        except Exception as exc:
            if not self.distributed:
                raise
            text = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
        if not self.distributed:
            return
        statuses: list[Any] = [None] * self.world_size
        self._collective(what, lambda: dist.all_gather_object(statuses, error))
        failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
        if failed:
            r, s = failed[0]
            raise ShardError(f"{what} failed on rank {r} of {self.world_size}: {s}")

    def main_first(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` on rank 0, then on the other ranks (e.g. generating a dataset once)."""
        result = None
        with self.guard(what):
            if self.is_main:
                result = fn()
        with self.guard(what):
            if not self.is_main:
                result = fn()
        return result

    # ------------------------------------------------------------------------------ outputs
    @contextlib.contextmanager
    def output_dir(self, out: str | os.PathLike) -> Iterator[Path]:
        """Where this rank writes its per-image files: ``out`` on rank 0, else a private temporary
        folder (removed at the end)."""
        if self.is_main:
            yield Path(out)
            return
        staging = Path(tempfile.mkdtemp(prefix=f"rtpanoptic-eval-rank{self.rank}-"))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def gather(self, staging: Path, out: str | os.PathLike, records: Sequence[dict], sem_eval=None,
               ap_eval=None) -> list[dict]:
        """Bring every rank's per-image ``records`` (dicts with an ``"index"``, the dataset index)
        and the files under ``staging`` to rank 0; returns all records in dataset order there
        (an empty list elsewhere).  ``sem_eval`` (a SemanticEvaluator) gets the sum of the ranks'
        confusion matrices, ``ap_eval`` (an InstanceAPEvaluator) every image in dataset order."""
        if not self.distributed:
            return list(records)
        part = {
            "records": list(records),
            "files": {} if self.is_main else {str(p.relative_to(staging)): p.read_bytes()
                                              for p in sorted(staging.rglob("*")) if p.is_file()},
            "conf": sem_eval.conf if sem_eval is not None else None,
            "ap": ap_eval.image_records() if ap_eval is not None else None,
        }
        parts: list[Any] = [None] * self.world_size if self.is_main else None
        self._collective("gathering the predictions",
                         lambda: dist.gather_object(part, parts if self.is_main else None, dst=0))
        if not self.is_main:
            return []
        out = Path(out)
        for p in parts[1:]:
            for rel, data in p["files"].items():
                with replacing(out / rel) as tmp:
                    tmp.write_bytes(data)
        if sem_eval is not None:
            sem_eval.conf = torch.stack([p["conf"] for p in parts]).sum(0)
        # rank r's k-th record is dataset index r + k N: interleave them back
        merged = sorted(((rec["index"], r, k) for r, p in enumerate(parts) for k, rec in enumerate(p["records"])))
        if ap_eval is not None:
            ap_eval.reset()
            ap_eval.extend([parts[r]["ap"][k] for _, r, k in merged])
        return [parts[r]["records"][k] for _, r, k in merged]

    def share(self, value: T | None) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        self._collective("sharing the metrics", lambda: dist.broadcast_object_list(box, src=0))
        return box[0]


_timeout_s = DEFAULT_TIMEOUT_S  # of the process group joined by process_group()


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[tuple[Shard, torch.device]]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1; gloo, whose
    collectives give up after ``timeout_s``) for an evaluation, and leave it at the end.
    Yields ``(shard, device)``: a CUDA device becomes ``cuda:LOCAL_RANK``.  Alone: ``(Shard(), device)``."""
    try:
        world, rank, local_rank = (_env_int(k, d) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield Shard.current(), device
        return
    if timeout_s <= 0:
        raise UsageError(f"--dist-timeout must be > 0 seconds, got {timeout_s:g}")
    if not dist.is_available():
        raise UsageError("WORLD_SIZE > 1 but torch.distributed is not available in this build of torch")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    global _timeout_s
    _timeout_s = float(timeout_s)
    try:
        yield Shard.current(), device
    finally:
        _timeout_s = DEFAULT_TIMEOUT_S
        dist.destroy_process_group()
