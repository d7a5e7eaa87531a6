"""The names of :mod:`rtpanoptic.distributed` (process groups under ``torchrun``), importable from
here as before: that module sits below both the training engine and the sharded evaluation."""
from ..distributed import (  # noqa: F401
    DistInfo,
    Ranked,
    SeededDataset,
    StepSampler,
    all_reduce_mean,
    all_reduce_tensor_mean,
    barrier,
    broadcast_buffers,
    cleanup,
    init_distributed,
    resolve_device,
    unwrap,
)
