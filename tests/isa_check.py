"""The precision and kernel tests once per CPU code path this machine can take (``make isa-check``).

oneDNN (convolutions, the bf16/fp16 autocast) and ATen (elementwise ops, reductions, the
references' F.interpolate) pick kernels for the CPU at run time, and so do the C++ kernels
(csrc/cpu/simd.h follows ATen's capability: AVX2 or scalar).  A tolerance tuned on one CPU can
fail on another (issue 23: an AMX Xeon), so the tests whose results go through those kernels run
under each limit this machine can emulate:

- ``ONEDNN_MAX_CPU_ISA``: ``ALL`` (the machine's best: AMX where present) or ``AVX2`` (no native
  bf16: PyTorch falls back to its own bf16 convolutions);
- ``ATEN_CPU_CAPABILITY``: ``avx512`` (taken as the best the CPU has where it lacks AVX-512),
  ``avx2``, ``default`` (scalar; the C++ kernels' scalar paths);
- ``OMP_NUM_THREADS=1`` in the last setting (other work splits, the same results).

Usage: ``python tests/isa_check.py [pytest options]`` (after ``make test``, which runs the kernels at
the best of both); prints passed / failed / skipped and the CPU time per setting, exits 1 if any
setting failed or collected nothing.
"""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The network under autocast / channels_last against fp32, and bit-for-bit claims about batches.
NETWORK = ["tests/test_precision.py", "tests/test_batch_independence.py"]
# Not Inductor: under an overridden ATen capability torch 2.14.1's Inductor computed wrong values with
# frozen weights (avx2) and generated C++ that does not compile (default); fast=True avoids freezing
# there (execution.fast_compile), but compiling is not what these settings check.
NETWORK_K = "not cli and not compile and not evaluator and not option_errors and not emulated and not inductor"
# The C++ kernels with run-time SIMD paths (nms, batched_nms, panoptic_from_dense, select_queries,
# upsample_argmax) and those compared with ATen-computed references within tolerances.
KERNELS = [f"tests/ops/test_{name}.py" for name in
           ("boxes", "panoptic", "select_queries", "upsample_argmax", "dense", "attention", "mask_loss")]

# (name, environment, whether the kernel tests run too).  oneDNN's limit does not reach the C++
# kernels, and at the machine's best (the first setting) they are what `make test` runs already.
SETTINGS = [
    ("oneDNN ALL, ATen avx512", {"ONEDNN_MAX_CPU_ISA": "ALL", "ATEN_CPU_CAPABILITY": "avx512"}, False),
    ("oneDNN ALL, ATen avx2", {"ONEDNN_MAX_CPU_ISA": "ALL", "ATEN_CPU_CAPABILITY": "avx2"}, True),
    ("oneDNN ALL, ATen default", {"ONEDNN_MAX_CPU_ISA": "ALL", "ATEN_CPU_CAPABILITY": "default"}, True),
    ("oneDNN AVX2, ATen default, 1 thread",
     {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}, False),
]
PROBE = ("import torch; print(torch.backends.cpu.get_cpu_capability(), "
         "'bf16-oneDNN' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'bf16-ATen', "
         "torch.get_num_threads(), 'threads')")


def _counts(output: str) -> dict[str, int]:
    """pytest's final ``N passed, M failed, K skipped ...`` line as a dict."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)}


def run(name: str, env: dict[str, str], kernels: bool, extra: list[str]) -> bool:
    """One setting: the network tests (and the kernel tests' cpp cases when ``kernels``); True if
    something ran and nothing failed."""
    env = {**os.environ, "TRITON_INTERPRET": "1", **env}
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd=ROOT)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    runs = [[*NETWORK, "-k", NETWORK_K]] + ([[*KERNELS, "-k", "cpp"]] if kernels else [])
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    total: dict[str, int] = {}
    tails = []
    for args in runs:
        proc = subprocess.run([*pytest, *args], env=env, capture_output=True, text=True, cwd=ROOT)
        counts = _counts(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        if proc.returncode != 0:
            tails.append(proc.stdout[-3000:] + proc.stderr[-1000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ok = not tails and total.get("passed", 0) > 0
    print(f"{'ok  ' if ok else 'FAIL'} {name:38s} [{probe.stdout.strip() or probe.stderr.strip()[-200:]}] "
          f"{total.get('passed', 0)} passed, {total.get('failed', 0) + total.get('error', 0) + total.get('errors', 0)} "
          f"failed, {total.get('skipped', 0)} skipped; {time.monotonic() - t0:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    for tail in tails:
        print(tail, flush=True)
    return ok


def main(argv: list[str]) -> int:
    results = [run(name, env, kernels, argv) for name, env, kernels in SETTINGS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
