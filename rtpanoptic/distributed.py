"""Process-group set-up for training under ``torchrun`` and small collective helpers.

``torchrun --nproc_per_node=N -m rtpanoptic train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and
joins the group (NCCL on GPU, gloo on CPU).  Without them training runs as a single process.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


class Ranked:
    """A process that is rank ``rank`` of ``world_size`` (1: no process group)."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class DistInfo(Ranked):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool  # we created the process group (and destroy it at the end)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("runtime.device is 'cuda' but no GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group described by the environment (or run alone)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        return DistInfo(rank, world, local_rank, resolve_device(device, local_rank), False)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev, True)


def cleanup(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a Python number over the ranks."""
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def all_reduce_tensor_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over the ranks of a small tensor (detached, float64)."""
    t = values.detach().to(device=_comm_device(info), dtype=torch.float64).clone()
    if info.distributed:
        dist.all_reduce(t)
        t /= info.world_size
    return t


def broadcast_buffers(model: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward pass, so after the last step the ranks'
    running statistics differ by their last local update; this makes the replicas identical
    (rank 0's values, the ones its checkpoint holds)."""
    if not info.distributed:
        return
    for buf in model.buffers():
        if info.device.type == "cuda" or dist.get_backend() != "nccl":
            dist.broadcast(buf.data, src)
        else:  # pragma: no cover - nccl needs device tensors
            tmp = buf.data.to(info.device)
            dist.broadcast(tmp, src)
            buf.data.copy_(tmp)


def _comm_device(info: DistInfo) -> torch.device:
    backend = dist.get_backend() if info.distributed else "gloo"
    return info.device if backend == "nccl" else torch.device("cpu")


class StepSampler(torch.utils.data.Sampler):
    """An endless, resumable stream of ``(dataset index, sample seed)`` for one rank.

    Epoch e is :class:`torch.utils.data.DistributedSampler`'s shuffle of epoch e (seed ``seed``,
    ``drop_last=True``) for this rank; epochs follow each other without a gap.  The stream starts at
    position ``start`` (= steps done x batch size), so a resumed run sees exactly the samples the
    uninterrupted run would have.  Each item carries a seed derived from (seed, rank, position)
    that :class:`SeededDataset` uses for the sample's augmentation, independent of DataLoader
    workers.
    """

    def __init__(self, dataset, rank: int, world_size: int, seed: int = 0, start: int = 0, shuffle: bool = True):
        self.dataset = dataset
        self.rank, self.world_size = rank, world_size
        self.seed, self.start, self.shuffle = int(seed), int(start), shuffle
        self._dist = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.per_epoch = len(self._dist)
        if self.per_epoch == 0:
            raise ValueError(
                f"the training set has {len(dataset)} samples: too few for {world_size} process(es)"
            )

    def __iter__(self) -> Iterator:
        epoch, offset = divmod(self.start, self.per_epoch)
        position = self.start
        while True:
            self._dist.set_epoch(epoch)
            indices = list(self._dist)
            for idx in indices[offset:]:
                yield int(idx), self._sample_seed(position)
                position += 1
            offset = 0
            epoch += 1

    def _sample_seed(self, position: int) -> int:
        # splitmix-style mixing into 63 bits; different per (seed, rank, position)
        x = (self.seed * 0x9E3779B97F4A7C15 + self.rank * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB)
        x &= (1 << 64) - 1
        x ^= x >> 31
        x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
        x ^= x >> 32
        return x & ((1 << 63) - 1)

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader)
        return 2**62


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is drawn with torch's RNG seeded by ``seed``
    (the global RNG of the caller is left untouched).  Random transforms then depend only on the
    stream position, not on workers or on how often training was interrupted."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

