"""`Predictor.postprocess` in both mask modes, interleaved: ``mask_mode="grid"`` (the default) and
``"release"`` (the release-exact masks), on the TRI preset's head outputs with the heavy load of
``test_bench_end_to_end.py`` (random weights, ~100 queries), batch 1, at 512x1024 and 1024x2048.

Scenes: ``random`` (the random network's own outputs: no semantic probability reaches sigma, so no
thing mask is painted) and ``masks`` (:func:`with_thing_masks`: the same outputs with the semantic
logits made to agree with the detections, so that every query has a mask and the fusion paints).

``OMP_NUM_THREADS=2 python benchmarks/postprocess_modes.py [rounds] [random|masks|both]``: median
and min ms of each mode (rounds interleaved, after 3 warm-up calls), the thing segments painted,
and the load average.  Results: benchmarks/RESULTS.md."""
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_end_to_end as stages


def with_thing_masks(outputs, thing_train_ids: list[int], boost: float = 8.0, block: int = 8):
    """Head outputs whose semantic logits agree with the detections: in every ``block x block`` block of
    semantic cells (64 x 64 pixels for the TRI preset's stride 8, about a query box) the thing class
    that the finest level's class logits rank first on average gets ``boost`` added to its logit, so
    its probability passes sigma there and the queries of that class get non-empty masks; the
    semantic map stays a map of regions (class boundaries between blocks, not at every cell).  Needs
    the semantic map at the finest level's resolution (the TRI preset: stride 8 for both)."""
    semantic: Tensor = outputs.semantic.clone()
    logits = outputs.class_logits[0]
    if logits.shape[-2:] != semantic.shape[-2:]:
        raise ValueError(f"with_thing_masks: class logits {tuple(logits.shape[-2:])} and semantic logits "
                         f"{tuple(semantic.shape[-2:])} differ in size")
    pooled = torch.nn.functional.avg_pool2d(logits, block, ceil_mode=True).argmax(dim=1)  # [B, h/block, w/block]
    first = pooled.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, : logits.shape[2], : logits.shape[3]]
    ids = torch.tensor(thing_train_ids)[first]  # [B, h, w] semantic train ids
    semantic.scatter_add_(1, ids[:, None], torch.full_like(semantic[:, :1], boost))
    return outputs._replace(semantic=semantic)


def main(rounds: int = 15, scene: str = "both") -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    scenes = ["random", "masks"] if scene == "both" else [scene]
    for size, scene in [(s, c) for c in scenes for s in [(512, 1024), (1024, 2048)]]:
        stages._SETUP = None
        _size, predictor, _batch, outputs, sizes, *_ = stages._stage_setup(size)
        if scene == "masks":
            outputs = with_thing_masks(outputs, predictor.model.description.thing_train_ids)
        with torch.no_grad():  # the thing segments of the (default) grid mode, batch 1
            (first,) = predictor.postprocess_device(outputs, sizes)
            painted = int((first.segment_query[: int(first.segment_count)] >= 0).sum())
        modes = {m: dataclasses.replace(predictor.options, mask_mode=m) for m in ("grid", "release")}
        times: dict[str, list[float]] = {m: [] for m in modes}
        with torch.no_grad():
            for r in range(3 + rounds):
                for mode, options in modes.items():
                    predictor.options = predictor.stage.options = options
                    start = time.perf_counter()
                    predictor.postprocess(outputs, sizes)
                    if r >= 3:
                        times[mode].append(time.perf_counter() - start)
        for mode, t in times.items():
            t.sort()
            print(f"{scene} {size[0]}x{size[1]} {mode}: median {t[len(t) // 2] * 1e3:.1f} ms, min {t[0] * 1e3:.1f} ms"
                  + (f" ({painted} thing segments)" if mode == "grid" else ""))
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15, sys.argv[2] if len(sys.argv) > 2 else "both")
