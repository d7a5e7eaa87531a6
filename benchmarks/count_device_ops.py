"""The ops the device stage of the post-processing dispatches, in order, for benchmarks/GPU_WORK_SPAN.md.

    python benchmarks/count_device_ops.py

Batch 1, a 1024x2048 image, ``tri-cityscapes-r50`` with random weights and the heavy load of
:func:`rtpanoptic.benchmark.heavy_postprocess_load` (every level fills its 1000 candidate slots,
100 queries), on the CPU with the cpp backend: ``DevicePostprocess`` runs under a dispatch mode
that records every ATen and rtpanoptic op.  On a GPU each op that is not a view is at least one
kernel launch (the custom ops launch the kernels counted in GPU_WORK_SPAN.md).  The network
forward takes a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import collections

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rtpanoptic.benchmark import heavy_postprocess_load
from rtpanoptic.inference import Predictor
from rtpanoptic.model import build_model

# Ops that make no kernel on a GPU: views, metadata, allocation without initialisation.
NO_KERNEL = {"view", "_unsafe_view", "slice", "select", "expand", "unsqueeze", "squeeze", "permute", "as_strided",
             "t", "alias", "detach", "unbind", "split", "split_with_sizes", "transpose", "narrow", "lift_fresh",
             "reshape", "_reshape_alias", "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"}


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket._qualified_op_name)
        return func(*args, **(kwargs or {}))


def main() -> None:
    torch.manual_seed(0)
    model = build_model("tri-cityscapes-r50").eval()
    heavy_postprocess_load(model)
    predictor = Predictor(model, channels_last=False)
    image = np.random.default_rng(0).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    with torch.no_grad():
        batch, sizes = predictor.preprocess(image)
        outputs = predictor.network(batch)
        with _Recorder() as recorder:
            predictor.stage(outputs, sizes)
    kernels = [op for op in recorder.ops if op.split("::")[1] not in NO_KERNEL]
    print(f"{len(recorder.ops)} ops, {len(kernels)} not views")
    for op, k in collections.Counter(kernels).most_common():
        print(f"{k:5d} {op}")
    print("in order:", " ".join(op.split("::")[1] for op in kernels))


if __name__ == "__main__":
    main()
