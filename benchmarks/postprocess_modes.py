"""`Predictor.postprocess` in both mask modes, interleaved: ``mask_mode="grid"`` (the default) and
``"release"`` (the release-exact masks), on the TRI preset's head outputs with the heavy load of
``test_bench_end_to_end.py`` (random weights, ~100 queries), batch 1, at 512x1024 and 1024x2048.

``OMP_NUM_THREADS=2 python benchmarks/postprocess_modes.py [rounds]``: median and min ms of each
mode (rounds interleaved, after 3 warm-up calls), and the load average.  Results:
benchmarks/RESULTS.md."""
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_end_to_end as stages


def main(rounds: int = 15) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for size in [(512, 1024), (1024, 2048)]:
        stages._SETUP = None
        _size, predictor, _batch, outputs, sizes, *_ = stages._stage_setup(size)
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
            print(f"{size[0]}x{size[1]} {mode}: median {t[len(t) // 2] * 1e3:.1f} ms, min {t[0] * 1e3:.1f} ms")
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
