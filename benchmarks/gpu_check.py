#!/usr/bin/env python3
"""GPU check: build, test and time everything on a CUDA machine in one time-boxed run.

    make gpu-check GPU_CHECK_OUT=DIR                   # = python3 benchmarks/gpu_check.py --out DIR
    python3 benchmarks/gpu_check.py [--out DIR] [--budget S] [--steps build,suite,...] [--build auto|always|never]
                                    [--dry-run]

Uses the Python and torch it runs under (no virtualenv, nothing downloaded).  Steps, each a
subprocess with its own time limit, all inside ``--budget`` seconds (default 470: the whole run
ends within 8 minutes):

  env        device, driver, versions, tools (nvidia-smi, nvcc, compute-sanitizer, pytest plugins)
  build      ``pip install --no-build-isolation --no-deps --no-index -e .`` with FORCE_CUDA=1,
             TORCH_CUDA_ARCH_LIST = the visible GPUs', MAX_JOBS = cores; skipped when the extension
             is up to date (built here for this torch and these GPUs, newer than every source)
  import     ``import rtpanoptic`` and the backends each op has
  suite      ``pytest tests`` on the GPU (pytest-xdist and pytest-timeout when installed),
             continuing past failures; one line per test in tests.jsonl
  sanitizer  compute-sanitizer memcheck and racecheck over a few CUDA op tests (beside the suite)
  bench-ops  benchmarks/test_bench_gpu.py: every op, triton / cuda / reference / torchvision
  bench-e2e  the ``tri-cityscapes-r50`` preset (random weights, heavy post-processing load) at
             1024x2048 and 512x1024, batch 1: fp32, bf16 autocast, channels_last, torch.compile,
             network + post-processing captured in one CUDA graph, and the post-processing's
             device stage alone captured (``Predictor.capture_postprocess``), or why they cannot be

Files written into the results folder (``--out``, else ``$GPU_CHECK_OUT``, else gpu_check_out/),
rewritten after every step so that a run cut short still leaves them: gpu_check.json (every
figure), gpu_check.md (tables for benchmarks/RESULTS.md), gpu_check.log (everything printed),
tests.jsonl, bench_ops.jsonl, bench_e2e.jsonl.

Without a GPU (or with ``--dry-run``) it says so and runs what can run: the build when the
extension is stale, test collection, a few CPU benchmark rounds at a small size; the files are
marked "no GPU".  Exit status: 0 when every step passed or was skipped, 1 when one failed or ran
out of time (details in the files), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import importlib.machinery
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("env", "build", "import", "suite", "sanitizer", "bench-ops", "bench-e2e")
DEFAULT_BUDGET_S = 470
# Step time limits (seconds) on a GPU machine / in a dry run; every step also stops at the budget.
LIMITS_GPU = {"env": 30, "build": 240, "import": 60, "suite": 150, "sanitizer": 140, "bench-ops": 90, "bench-e2e": 240}
LIMITS_DRY = {"env": 30, "build": 900, "import": 120, "suite": 240, "sanitizer": 10, "bench-ops": 150, "bench-e2e": 150}
PER_TEST_TIMEOUT_S = 120
BENCH_BUDGET_S = 0.25  # seconds of rounds per op benchmark on the GPU (conftest.run): ~70 benchmarks
SUITE_WORKERS = 8
# compute-sanitizer runs every GPU kernel once, forward and backward, on small ragged inputs
# (tests/ops/sanitizer_cases.py); each tool: (time limit in s, arguments of the script).
SANITIZER_SCRIPT = "tests/ops/sanitizer_cases.py"
SANITIZER_TOOLS = {"memcheck": (90, []), "racecheck": (60, ["--backends", "cuda"])}
E2E_SIZES_GPU = [(1024, 2048), (512, 1024)]
E2E_SIZE_DRY = (128, 128)
E2E_PRESET = "tri-cityscapes-r50"
COMPILE_MIN_LEFT_S = 100  # a torch.compile case starts only with this much of the step left
FILES = ("gpu_check.json", "gpu_check.md", "gpu_check.log", "tests.jsonl", "bench_ops.jsonl", "bench_e2e.jsonl")
GOALS = {
    "post": "post-processing <= 1 ms at 1024x2048",
    "pfd": "panoptic_from_dense < 100 us at Q=100, 256x512",
    "nms": "CUDA NMS no slower than torchvision at N = 1k / 5k / 20k",
    "fps": "end to end >= 60 FPS, R-50 at 1024x2048, bf16",
}


# ------------------------------------------------------------------------------------ logging
class Log:
    """Timestamped lines to stdout (flushed) and to gpu_check.log; safe from several threads."""

    def __init__(self, path: Path):
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.path = path

    def __call__(self, msg: str, prefix: str = "") -> None:
        stamp = f"[{datetime.datetime.now():%H:%M:%S} +{time.monotonic() - self.t0:6.1f}s]"
        text = "".join(f"{stamp} {prefix}{line}\n" for line in (msg.splitlines() or [""]))
        with self.lock, open(self.path, "a") as f:
            print(text, end="", flush=True)
            f.write(text)


def run_command(cmd: list[str], log: Log, name: str, timeout: float, env: dict | None = None,
                cwd: Path = ROOT) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, streaming its output into the log; kill the group at
    ``timeout``.  Returns (exit status or None on time-out, the output)."""
    log(f"$ {' '.join(cmd)}  (limit {timeout:.0f} s)", f"[{name}] ")
    if timeout <= 0:
        return None, ""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
    except OSError as exc:  # the program is missing
        log(f"cannot start: {exc}", f"[{name}] ")
        return 127, str(exc)
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            log(line.rstrip("\n"), f"[{name}] ")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
        log(f"time limit of {timeout:.0f} s reached: stopped", f"[{name}] ")
    reader.join(timeout=10)
    return rc, "".join(lines)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


# ------------------------------------------------------------------------------- the check
class Check:
    def __init__(self, args: argparse.Namespace):
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        for name in FILES:  # a results folder holds one run
            with contextlib.suppress(FileNotFoundError):
                (self.out / name).unlink()
        self.log = Log(self.out / "gpu_check.log")
        self.deadline = time.monotonic() + args.budget
        self.build_mode = args.build
        self.steps_wanted = args.steps
        import torch

        self.torch = torch
        self.gpu = torch.cuda.is_available() and not args.dry_run
        self.no_gpu_reason = None if self.gpu else ("--dry-run" if args.dry_run else "no CUDA GPU is visible")
        self.limits = LIMITS_GPU if self.gpu else LIMITS_DRY
        self.plugins = {p: _version(p) for p in ("pytest-xdist", "pytest-timeout", "pytest-benchmark")}
        self.result: dict = {"gpu": self.gpu, "no_gpu_reason": self.no_gpu_reason, "budget_s": args.budget,
                             "steps": [], "env": {}, "tests": {}, "sanitizer": [], "import": {}}
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.write_lock = threading.Lock()  # the sanitizer step records from its own thread
        self.env = self._base_env()

    # -- environment of every subprocess
    def _base_env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.gpu:
            env.pop("TRITON_INTERPRET", None)  # compiled Triton kernels on the GPU
        else:
            env["TRITON_INTERPRET"] = "1"
            env["CUDA_VISIBLE_DEVICES"] = ""
        wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
        if wheels:  # packages the image lacks, carried as wheels (make gpu-wheels)
            site = self.tmp / "site"
            rc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                 "--no-compile", "--target", str(site), *wheels], capture_output=True, text=True)
            self.log(f"carried wheels {[Path(w).name for w in wheels]} -> {site}: exit {rc.returncode} "
                     f"{rc.stderr.strip()[-300:]}")
            if rc.returncode == 0:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
                env["PATH"] = os.pathsep.join(filter(None, [str(site / "bin"), env.get("PATH")]))  # ninja
        return env

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def limit(self, step: str) -> float:
        return max(0.0, min(self.limits[step], self.left() - 3))

    # -- step bookkeeping
    def record(self, name: str, status: str, seconds: float, detail: str = "") -> dict:
        entry = {"name": name, "status": status, "seconds": round(seconds, 1), "detail": detail}
        self.result["steps"].append(entry)
        self.log(f"== {name}: {status} in {seconds:.1f} s{': ' + detail if detail else ''}")
        self.write()
        return entry

    def run_step(self, name: str, fn) -> None:
        if name not in self.steps_wanted:
            self.record(name, "skipped", 0.0, "not among --steps")
            return
        if self.limit(name) < 5:
            self.record(name, "skipped", 0.0, "not run: the time budget is spent")
            return
        self.log(f"== {name} (limit {self.limit(name):.0f} s, {self.left():.0f} s of the budget left)")
        t0 = time.monotonic()
        try:
            status, detail = fn()
        except Exception as exc:  # a bug in this script must not lose the files
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
        self.record(name, status, time.monotonic() - t0, detail)

    # -- steps
    def step_env(self):
        torch, env = self.torch, self.result["env"]
        env.update({
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": str(torch.__version__), "torch_cuda": torch.version.cuda,
            "triton": _version("triton"), "torchvision": _version("torchvision"), "setuptools": _version("setuptools"),
            "pytest_plugins": self.plugins,
            "commit": _git("rev-parse", "--short", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
            "nvcc": _first_line([_nvcc(), "--version"], last=True), "compute_sanitizer": _sanitizer(),
        })
        if self.gpu:
            props = torch.cuda.get_device_properties(0)
            env["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                             "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
                             "count": torch.cuda.device_count()}
            query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
            _, out = run_command(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], self.log, "env",
                                  self.limit("env"), self.env)
            env["nvidia_smi"] = out.strip()
            env["driver"] = _csv_field(out, "driver_version")
        env["checks"] = version_checks(self.env, self.installed_versions())
        self.log(json.dumps(env, indent=1))
        where = env.get("device", {}).get("name") or f"no GPU ({self.no_gpu_reason})"
        return "ok", "; ".join([where, *env["checks"]])

    def step_build(self):
        stale = self.extension_stale()
        if self.build_mode == "never":
            return "skipped", f"--build never ({stale or 'up to date'})"
        if stale is None and self.build_mode == "auto":
            return "skipped", "the extension is up to date"
        self.log(f"building: {stale or '--build always'}")
        env = dict(self.env, MAX_JOBS=str(os.cpu_count() or 4))
        if self.gpu:
            env["FORCE_CUDA"] = "1"
            env["TORCH_CUDA_ARCH_LIST"] = ";".join(self.visible_archs())
        cmd = [sys.executable, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."]
        rc, out = run_command(cmd, self.log, "build", self.limit("build"), env)
        if rc != 0:
            hint = ""
            if "license" in out and "must be valid" in out:
                hint = f"; setuptools {_version('setuptools')} is older than 77: carry a newer one (make gpu-wheels)"
            return ("timeout" if rc is None else "failed"), f"pip exit {rc}{hint}"
        stale = self.extension_stale()
        return ("failed", f"built, but {stale}") if stale else ("ok", "built")

    def step_import(self):
        code = (
            "import json, rtpanoptic\n"
            "from rtpanoptic import ops, _extension\n"
            "dev = 'cuda' if __import__('torch').cuda.is_available() else 'cpu'\n"
            "print('IMPORT ' + json.dumps({'file': rtpanoptic.__file__, 'build': _extension.build_info(),\n"
            "      'extension_error': _extension.load_error(), 'backends': ops.available_backends(dev)}))\n"
        )
        rc, out = run_command([sys.executable, "-c", code], self.log, "import", self.limit("import"), self.env,
                              cwd=self.tmp)
        found = [ln[len("IMPORT "):] for ln in out.splitlines() if ln.startswith("IMPORT ")]
        if rc != 0 or not found:
            return ("timeout" if rc is None else "failed"), f"exit {rc}: {_tail(out)}"
        self.result["import"] = info = json.loads(found[-1])
        if self.gpu:
            missing = sorted(op for op, backends in info["backends"].items() if "cuda" not in backends)
            if missing:
                return "failed", f"no cuda backend for {missing}: {info['extension_error']}"
        return "ok", info["extension_error"] or "extension loaded"

    def step_suite(self):
        jsonl = self.out / "tests.jsonl"
        env = dict(self.env, GPU_CHECK_TESTS_JSONL=str(jsonl),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), self.env.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "pytest", "tests", "-p", "gpu_check_plugin", "-p", "no:cacheprovider", "-q",
               "--tb=short"]
        if not self.gpu:
            cmd += ["--collect-only", "-q"]  # -qq: one line per test file
        else:
            if self.plugins["pytest-timeout"]:
                cmd += [f"--timeout={PER_TEST_TIMEOUT_S}"]
            if self.plugins["pytest-xdist"]:
                workers = max(1, min(SUITE_WORKERS, (os.cpu_count() or 2) // 2))
                cmd += ["-n", str(workers), "--dist", "loadgroup"]
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // workers))
        sanitizer = None
        if self.gpu and "sanitizer" in self.steps_wanted:  # beside the suite: it checks, it does not time
            sanitizer = threading.Thread(target=self.run_step, args=("sanitizer", self.step_sanitizer))
            sanitizer.start()
        rc, _ = run_command(cmd, self.log, "suite", self.limit("suite"), env)
        if sanitizer is not None:
            sanitizer.join()
        lines = read_jsonl(jsonl)
        tests = self.result["tests"] = summarize_tests(lines)
        if rc is None:
            return "timeout", (f"{_counts(tests)}; stopped at the time limit, "
                               f"{len(tests.get('not_reached') or [])} tests not reached")
        if not self.gpu:
            tests["not_reached"] = []  # collected, never meant to run
            ok = rc == 0 and tests.get("collected", 0) > 0
            return ("ok" if ok else "failed"), (f"collected {tests.get('collected', 0)} tests, "
                                                f"{tests.get('gpu_first', 0)} of them first (exit {rc})")
        missed = len(tests.get("not_reached") or [])
        return ("ok" if rc == 0 and not missed else "failed"), \
            f"{_counts(tests)}{f', {missed} not reached' if missed else ''} (pytest exit {rc})"

    def step_sanitizer(self):
        tool_path = _sanitizer()
        if not self.gpu:
            return "skipped", f"no GPU ({self.no_gpu_reason})"
        if not tool_path:
            return "skipped", "compute-sanitizer not found"
        env = dict(self.env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # exact allocation bounds for memcheck
        statuses = []
        for tool, (cap, args) in SANITIZER_TOOLS.items():
            cmd = [tool_path, "--tool", tool, "--error-exitcode", "97", "--print-limit", "20",
                   sys.executable, SANITIZER_SCRIPT, *args]
            rc, out = run_command(cmd, self.log, tool, min(cap, self.limit("sanitizer")), env)
            status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
            self.result["sanitizer"].append({"tool": tool, "status": status, "exit": rc, **sanitizer_counts(out)})
            statuses.append(f"{tool} {status}" + (" (no test selected)" if rc == 5 else ""))
        worst = "failed" if any("failed" in s for s in statuses) else (
            "timeout" if any("timeout" in s for s in statuses) else "ok")
        return worst, ", ".join(statuses)

    def step_bench_ops(self):
        jsonl = self.out / "bench_ops.jsonl"
        env = dict(self.env, RTP_BENCH_JSONL=str(jsonl), RTP_BENCH_BUDGET_S=str(BENCH_BUDGET_S))
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--benchmark-enable",
               "--benchmark-columns=median,rounds", "--tb=short"]
        if self.gpu:
            cmd.append("benchmarks/test_bench_gpu.py")
            if self.plugins["pytest-timeout"]:
                cmd.append(f"--timeout={PER_TEST_TIMEOUT_S}")
        else:  # a few CPU rounds at a small size: the same harness, end to end
            cmd += ["benchmarks/test_bench_nms.py", "-k", "test_nms and cpu and 1000"]
        rc, _ = run_command(cmd, self.log, "bench-ops", self.limit("bench-ops"), env)
        n = len(read_jsonl(jsonl))
        if rc is None:
            return "timeout", f"{n} benchmarks recorded before the time limit"
        return ("ok" if rc == 0 and n else "failed"), f"{n} benchmarks (pytest exit {rc})"

    def step_bench_e2e(self):
        jsonl = self.out / "bench_e2e.jsonl"
        limit = self.limit("bench-e2e")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--e2e-worker", str(jsonl),
               "--e2e-seconds", str(int(limit)), *(["--dry-run"] if not self.gpu else [])]
        rc, _ = run_command(cmd, self.log, "bench-e2e", limit + 5, self.env)
        rows = read_jsonl(jsonl)
        errors = [r for r in rows if r.get("error") and r.get("kind") != "graph"]
        if rc is None:
            return "timeout", f"{len(rows)} cases recorded before the time limit"
        status = "ok" if rc == 0 and rows and not errors else "failed"
        return status, f"{len(rows)} cases, {len(errors)} failed (exit {rc})"

    def installed_versions(self):
        """``dist -> version or None`` as the steps' subprocesses see them (carried wheels included)."""
        dists = sorted({*image_pins(), "setuptools", "torch"})
        code = ("import importlib.metadata as m, json, sys\n"
                "def v(d):\n    try: return m.version(d)\n    except m.PackageNotFoundError: return None\n"
                "print(json.dumps({d: v(d) for d in sys.argv[1:]}))")
        proc = subprocess.run([sys.executable, "-c", code, *dists], env=self.env, capture_output=True, text=True,
                              timeout=60, cwd=self.tmp)
        found = json.loads(proc.stdout) if proc.returncode == 0 else {}
        return lambda dist: found[dist] if dist in found else _version(dist)

    # -- the extension on disk
    def visible_archs(self) -> list[str]:
        torch = self.torch
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return [f"{a}.{b}" for a, b in sorted(caps)]

    def extension_stale(self) -> str | None:
        """Why the extension must be (re)built for this run, or None when it is up to date."""
        # a fresh interpreter: an install made by this run is invisible to this process's import system
        code = "import importlib.util as u; s = u.find_spec('rtpanoptic'); print(s.origin if s else '')"
        origin = subprocess.run([sys.executable, "-c", code], cwd=self.tmp, env=self.env, capture_output=True,
                                text=True, timeout=60).stdout.strip()
        if not origin:
            return "rtpanoptic is not installed for this Python"
        pkg = Path(origin).resolve().parent
        if pkg != ROOT / "rtpanoptic":
            return f"the installed rtpanoptic is another copy ({pkg})"
        so = pkg / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])
        if not so.exists():
            return f"{so.name} does not exist"
        info_path = pkg / "_build_info.json"
        if not info_path.exists():
            return "no build record (_build_info.json)"
        info = json.loads(info_path.read_text())
        if info.get("torch") != str(self.torch.__version__):
            return f"built for torch {info.get('torch')}, running {self.torch.__version__}"
        sources = [ROOT / "setup.py", *ROOT.glob("csrc/**/*.*")]
        newest = max(sources, key=lambda p: p.stat().st_mtime)
        if newest.stat().st_mtime > info_path.stat().st_mtime:  # the record is written after each build
            return f"{newest.relative_to(ROOT)} changed after the last build"
        if self.gpu:
            targets = set(info.get("cuda_targets") or [])
            missing = [a for a in self.visible_archs() if "sm_" + a.replace(".", "") not in targets]
            if missing:
                return f"no CUDA code for the visible GPUs' arch {missing} (built for {sorted(targets) or 'no GPU'})"
        return None

    # -- files
    def write(self) -> None:
        with self.write_lock:
            res = self.result
            res["ops"] = read_jsonl(self.out / "bench_ops.jsonl")
            res["end_to_end"] = read_jsonl(self.out / "bench_e2e.jsonl")
            res["goals"] = goals(res["ops"], res["end_to_end"], self.gpu)
            (self.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
            (self.out / "gpu_check.md").write_text(markdown(res))

    def run(self) -> int:
        self.log(f"GPU check of {ROOT} -> {self.out}; budget {self.deadline - time.monotonic():.0f} s; "
                 + ("GPU run" if self.gpu else f"DRY RUN, no GPU ({self.no_gpu_reason})"))
        try:
            self.run_step("env", self.step_env)
            self.run_step("build", self.step_build)
            self.run_step("import", self.step_import)
            self.run_step("suite", self.step_suite)
            if not (self.gpu and "suite" in self.steps_wanted):  # else it ran beside the suite
                self.run_step("sanitizer", self.step_sanitizer)
            self.run_step("bench-ops", self.step_bench_ops)
            self.run_step("bench-e2e", self.step_bench_e2e)
        finally:
            self.write()
            shutil.rmtree(self.tmp, ignore_errors=True)
        bad = [s["name"] for s in self.result["steps"] if s["status"] in ("failed", "timeout")]
        self.log(f"done in {time.monotonic() - self.log.t0:.0f} s; "
                 + (f"steps that failed or ran out of time: {bad}" if bad else "every step passed or was skipped")
                 + f"; files in {self.out}")
        self.log((self.out / "gpu_check.md").read_text())
        return 1 if bad else 0


# ------------------------------------------------------------------------ end-to-end worker
def e2e_worker(jsonl: Path, seconds: float, dry: bool) -> int:
    """Every end-to-end case, one JSON line each as soon as it is measured (run as a subprocess)."""
    import torch

    from rtpanoptic.benchmark import exception_summary, graph_timings, heavy_postprocess_load, stage_timings
    from rtpanoptic.execution import RunMode
    from rtpanoptic.model import build_model

    end = time.monotonic() + seconds
    device = "cpu" if dry else "cuda"
    torch.manual_seed(0)
    model = build_model(E2E_PRESET).eval().to(device)
    heavy_postprocess_load(model)
    bf16 = "bf16"
    if dry:
        sizes, iters = [E2E_SIZE_DRY], 1
        eager = [RunMode(), RunMode(channels_last=True)]
        graphs, compiled = [], []
    else:
        sizes, iters = E2E_SIZES_GPU, 20
        eager = [RunMode(), RunMode(precision=bf16), RunMode(channels_last=True), RunMode(bf16, channels_last=True)]
        graphs = [RunMode(), RunMode(bf16, channels_last=True)]
        compiled = [(E2E_SIZES_GPU[0], RunMode(bf16, True, True)), (E2E_SIZES_GPU[0], RunMode(compile=True)),
                    (E2E_SIZES_GPU[1], RunMode(bf16, True, True))]

    def emit(row):
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        print("E2E " + json.dumps(row), flush=True)

    failed = False
    cases = [("eager", s, m) for s in sizes for m in eager] + [("graph", s, m) for s in sizes for m in graphs]
    cases += [("compile", s, m) for s, m in compiled]
    for kind, size, mode in cases:
        row = {"kind": kind, "preset": E2E_PRESET, "device": device, "size": f"{size[0]}x{size[1]}",
               "mode": mode.name}
        left = end - time.monotonic()
        if left < (COMPILE_MIN_LEFT_S if kind == "compile" else 10):
            emit({**row, "skipped": f"not run: {left:.0f} s of the step left"})
            continue
        try:
            if kind == "graph":
                row.update(graph_timings(model, size, mode, iters=iters))
            else:
                row.update(stage_timings(model, size, mode, iters=iters))
        except Exception as exc:  # recorded, and the next case runs
            row["error"] = exception_summary(exc)
            failed = True
            if device == "cuda":
                torch.cuda.synchronize()
        emit(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    if dry:
        emit({"kind": "graph", "preset": E2E_PRESET, "device": device, "size": "-", "mode": "-",
              "skipped": "CUDA graphs need a GPU"})
    return 1 if failed else 0


# ------------------------------------------------------------------------------ summaries
def summarize_tests(lines: list[dict]) -> dict:
    """tests.jsonl lines -> counts per outcome, the collected count, the failures, the run's order
    (how many need a GPU, the first ones) and the tests not reached (collected, never reported: a
    run stopped at its time limit)."""
    counts: dict = {}
    failures = []
    order: list[str] = []
    reported = set()
    for line in lines:
        if "collected" in line:
            counts["collected"] = line["collected"]
            order = line.get("order", [])
            if "gpu_first" in line:
                counts["gpu_first"] = line["gpu_first"]
            continue
        reported.add(line["nodeid"])
        counts[line["outcome"]] = counts.get(line["outcome"], 0) + 1
        if line["outcome"] in ("failed", "error"):
            failures.append({"nodeid": line["nodeid"], "outcome": line["outcome"], "message": line["message"]})
    not_reached = [n for n in order if n not in reported]
    return {**counts, "failures": failures, "first": order[:counts.get("gpu_first", 0)][:50],
            "not_reached": not_reached}


def sanitizer_counts(out: str) -> dict:
    """``{"errors", "hazards", "tests_passed"}`` from compute-sanitizer's output around a pytest run
    or :data:`SANITIZER_SCRIPT` (``ok  <case>`` per agreeing case); a run stopped at its time limit
    prints no summary: its printed reports are counted."""
    errors = re.findall(r"ERROR SUMMARY: (\d+) error", out)
    hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazard", out)
    reported = re.findall(r"^=========\s+(?:Invalid |Error: |Race reported|Misaligned |Out-of-range )", out, re.M)
    passed = re.findall(r"(\d+) passed", out)
    cases_ok = len(re.findall(r"^ok  ", out, re.M))
    return {"errors": int(errors[-1]) if errors else len(reported),
            "hazards": int(hazards[-1]) if hazards else None,
            "tests_passed": int(passed[-1]) if passed else (cases_ok or None)}


def _counts(tests: dict) -> str:
    keys = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
    return ", ".join(f"{tests[k]} {k}" for k in keys if tests.get(k)) or "no test ran"


def op_time(row: dict) -> float | None:
    """ms of one benchmark line: the CUDA-event median on the GPU, else the wall-clock median."""
    return row.get("cuda_ms", row.get("wall_median_ms"))


def _impl(row: dict) -> str:
    params = row.get("params", {})
    return params.get("impl") or params.get("backend") or "?"


def goals(ops_rows: list[dict], e2e_rows: list[dict], gpu: bool) -> list[dict]:
    """The issue's targets against what was measured (``met`` None where nothing was)."""
    def best(rows, key):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return min(vals) if vals else None

    big = [r for r in e2e_rows if r.get("size") == "1024x2048" and r.get("device") == "cuda"]
    out = []
    post = best([r for r in big if r.get("kind") == "eager"], "postprocess_ms")
    graph_post = best([r for r in big if r.get("kind") == "graph"], "postprocess_ms")  # replay + host stage
    measured = [f"{post:.3f} ms"] if post is not None else []
    if graph_post is not None:
        measured.append(f"{graph_post:.3f} ms from a CUDA graph")
    fastest = min((v for v in (post, graph_post) if v is not None), default=None)
    out.append({"goal": GOALS["post"], "measured": ", ".join(measured) or None,
                "met": None if fastest is None else fastest <= 1.0})
    pfd = {_impl(r): op_time(r) for r in ops_rows if r.get("group") == "panoptic_from_dense Q=100 256x512"
           and r.get("device") == "cuda"}
    fast = {k: v for k, v in pfd.items() if k in ("cuda", "triton") and v is not None}
    out.append({"goal": GOALS["pfd"], "measured": ", ".join(f"{k} {1e3 * v:.0f} us" for k, v in sorted(fast.items()))
                or None, "met": (min(fast.values()) < 0.1) if fast else None})
    nms_parts, nms_met = [], []
    for n in (1000, 5000, 20000):
        times = {_impl(r): op_time(r) for r in ops_rows if r.get("group") == f"nms N={n}" and r.get("device") == "cuda"}
        if times.get("cuda") is not None and times.get("torchvision") is not None:
            nms_parts.append(f"N={n}: cuda {times['cuda']:.3f} / torchvision {times['torchvision']:.3f} ms")
            nms_met.append(times["cuda"] <= times["torchvision"])
    out.append({"goal": GOALS["nms"], "measured": "; ".join(nms_parts) or None,
                "met": all(nms_met) if len(nms_met) == 3 else None})
    bf16 = [r["fps"] for r in big if "bf16" in r.get("mode", "") and isinstance(r.get("fps"), (int, float))]
    fps = max(bf16) if bf16 else None
    out.append({"goal": GOALS["fps"], "measured": None if fps is None else f"{fps:.1f} FPS",
                "met": None if fps is None else fps >= 60})
    if not gpu:
        for g in out:
            g["measured"], g["met"] = "no GPU", None
    return out


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(res: dict) -> str:
    """The report: tables ready to paste into benchmarks/RESULTS.md."""
    env = res.get("env", {})
    dev = env.get("device", {})
    where = (f"{dev.get('name')} (sm_{dev.get('capability', '?').replace('.', '')}, {dev.get('sms')} SMs, "
             f"{dev.get('memory_gib')} GiB), driver {env.get('driver')}") if res["gpu"] else \
        f"**no GPU** ({res.get('no_gpu_reason')}): a dry run; no figure below is a GPU figure"
    lines = [
        f"# GPU check {env.get('date', '')[:10]}" + ("" if res["gpu"] else " — no GPU (dry run)"),
        "",
        "| | |", "|---|---|",
        f"| device | {where} |",
        f"| software | torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), triton {env.get('triton')}, "
        f"torchvision {env.get('torchvision')}, Python {env.get('python')}, nvcc: {env.get('nvcc') or 'none'} |",
        f"| machine | {env.get('cpus')} CPU cores, {env.get('host')} |",
        f"| code | commit {env.get('commit')}{' + local changes' if env.get('dirty') else ''}, {env.get('date')} |",
        "",
        "## Steps", "", "| step | status | s | detail |", "|---|---|---:|---|",
    ]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['detail'].replace('|', '/')[:300]} |"
              for s in res["steps"]]
    tests = res.get("tests") or {}
    if tests:
        ran = _counts(tests) if res["gpu"] else "collection only (no GPU)"
        lines += ["", "## Tests", "", f"collected {tests.get('collected', '?')}: {ran}; "
                  f"run first (need a GPU): {tests.get('gpu_first', '?')}"]
        missed = tests.get("not_reached") or []
        if missed:
            lines.append(f"not reached ({len(missed)}): " + ", ".join(f"`{n}`" for n in missed[:40])
                         + (" ..." if len(missed) > 40 else ""))
        for f in tests.get("failures", [])[:60]:
            lines.append(f"- {f['outcome']}: `{f['nodeid']}` — {f['message'].replace('|', '/')[:200]}")
    if res.get("sanitizer"):
        lines += ["", "## compute-sanitizer", "", f"cases: `{SANITIZER_SCRIPT}`", "",
                  "| tool | status | errors | hazards | tests passed |", "|---|---|---:|---:|---:|"]
        lines += [f"| {s['tool']} | {s['status']} | {_fmt(s['errors'])} | {_fmt(s['hazards'])} | "
                  f"{_fmt(s['tests_passed'])} |" for s in res["sanitizer"]]
    lines += _ops_table(res.get("ops", []), res["gpu"])
    lines += _e2e_table(res.get("end_to_end", []), res["gpu"])
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {_fmt(g['measured'])} | {({True: 'yes', False: 'NO', None: '—'})[g['met']]} |"
              for g in res.get("goals", [])]
    return "\n".join(lines) + "\n"


def _ops_table(rows: list[dict], gpu: bool) -> list[str]:
    if not rows:
        return []
    impls = [i for i in ("triton", "cuda", "cpp", "reference", "torchvision") if any(_impl(r) == i for r in rows)]
    what = "median of CUDA-event timings" if gpu else "wall-clock median (CPU)"
    out = ["", "## Ops", "", f"Each cell: {what} of one call, ms / peak extra memory, MB.", "",
           "| benchmark | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
    groups: dict[str, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(f"{r.get('group')} ({r.get('device')})", {})[_impl(r)] = r
    for group, by_impl in groups.items():
        cells = []
        for i in impls:
            r = by_impl.get(i)
            cells.append("—" if r is None else f"{_fmt(op_time(r), 3)} / {_fmt(r.get('peak_mem_mb'), 1)}")
        out.append(f"| {group} | " + " | ".join(cells) + " |")
    return out


def _e2e_table(rows: list[dict], gpu: bool) -> list[str]:
    if not rows:
        return []
    out = ["", f"## End to end: `{E2E_PRESET}` (R-50, random weights, heavy post-processing load), batch 1", "",
           "Median ms per image (" + ("CUDA events, each call waited for" if gpu else "wall clock, CPU") + "); "
           "end to end = upload + normalise + network + post-processing (results copied to the host).", "",
           "| size | mode | backbone+FPN | head | post-processing | end to end | FPS | peak MB | first call s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("kind") == "graph":
            continue
        if r.get("error") or r.get("skipped"):
            out.append(f"| {r['size']} | {r['mode']} | {(r.get('error') or r.get('skipped')).replace('|', '/')[:200]}"
                       " | | | | | | |")
            continue
        out.append(f"| {r['size']} | {r['mode']} | {_fmt(r.get('backbone_fpn_ms'))} | {_fmt(r.get('head_ms'))} | "
                   f"{_fmt(r.get('postprocess_ms'), 3)} | {_fmt(r.get('end_to_end_ms'))} | {_fmt(r.get('fps'), 1)} | "
                   f"{_fmt(r.get('peak_mem_mb'), 0)} | {_fmt(r.get('first_call_s'), 1)} |")
    graph = [r for r in rows if r.get("kind") == "graph"]
    if graph:
        out += ["", "CUDA graphs (one fixed-size image): `rtpanoptic.export.PanopticProgram` captured whole, the"
                " network alone, the post-processing's device stage (`Predictor.capture_postprocess`: the replay, and"
                " the replay + host stage, results on the host):", "",
                "| size | mode | network + post-processing | network | post-processing replay | + host stage |",
                "|---|---|---|---|---|---|"]
        for r in graph:
            whole = _fmt(r.get("end_to_end_ms")) + (f" ms ({r['fps']:.1f} FPS)" if r.get("fps") else "") \
                if "end_to_end_ms" in r else (r.get("end_to_end_error") or r.get("error") or r.get("skipped") or "—")
            net = f"{_fmt(r.get('network_ms'))} ms" if "network_ms" in r else (r.get("network_error") or "—")
            post = f"{_fmt(r.get('postprocess_device_ms'), 3)} ms" if "postprocess_device_ms" in r else \
                (r.get("postprocess_error") or "—")
            host = f"{_fmt(r.get('postprocess_ms'), 3)} ms" if "postprocess_ms" in r else "—"
            cells = [whole, net, post, host]
            out.append(f"| {r['size']} | {r['mode']} | " + " | ".join(c.replace("|", "/")[:300] for c in cells) + " |")
    return out


# ---------------------------------------------------------------------------------- helpers
IMAGE_PINS = ROOT / "benchmarks" / "gpu_image.txt"  # the GPU image's software (make image-check)
SUPPORTED_TORCH = ((2, 11), (2, 14))  # oldest and newest torch the suite is run on (README)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def image_pins(path: Path = IMAGE_PINS) -> dict[str, str]:
    """``{distribution: version}`` of the ``name==version`` lines of the image's pinned list."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s#;]+)", line)
        if m:
            pins[m[1].lower()] = m[2]
    return pins


def version_checks(env: dict | None = None, installed=None) -> list[str]:
    """What differs from the stack this check was prepared on, or would stop or slow a step, as
    sentences (empty when nothing does): versions against :data:`IMAGE_PINS`, torch outside the
    tested range, setuptools too old to read pyproject.toml, no ninja (a serial build).  The dry
    run makes the same checks, so a CPU run of the image's software sees them first.
    ``installed``: ``dist -> version or None`` (default: this Python's distributions)."""
    installed = installed or _version
    out = []
    for dist, want in image_pins().items():
        have = installed(dist)
        if have is None or _release(have)[:len(_release(want))] != _release(want):
            out.append(f"{dist} {have or 'missing'} (the image list pins {want})")
    torch_version = installed("torch")
    if torch_version and not SUPPORTED_TORCH[0] <= _release(torch_version)[:2] <= SUPPORTED_TORCH[1]:
        out.append(f"torch {torch_version} is outside the tested {SUPPORTED_TORCH[0]}..{SUPPORTED_TORCH[1]}")
    setuptools_version = installed("setuptools")
    if setuptools_version is None or _release(setuptools_version) < (77,):
        out.append(f"setuptools {setuptools_version or 'missing'} < 77 cannot build this project: carry it "
                   "(make gpu-wheels)")
    path = (env or os.environ).get("PATH")
    if shutil.which("ninja", path=path) is None:
        out.append("no ninja on PATH: the build is serial (make gpu-wheels carries ninja)")
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _nvcc() -> str:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = Path(home) / "bin" / "nvcc"
    return str(path) if path.exists() else (shutil.which("nvcc") or "nvcc")


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for pattern in ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer",
                    "/usr/local/cuda-*/compute-sanitizer/compute-sanitizer", "/opt/nvidia/*/compute-sanitizer"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def _first_line(cmd: list[str], last: bool = False) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out[-1] if last else out[0]) if out else None


def _csv_field(csv_text: str, field: str) -> str | None:
    rows = [r.split(", ") for r in csv_text.strip().splitlines()]
    if len(rows) < 2:
        return None
    header = [h.split(" [")[0].strip() for h in rows[0]]
    return rows[1][header.index(field)] if field in header and len(rows[1]) == len(header) else None


def _tail(text: str, n: int = 400) -> str:
    return " ".join(text.strip().splitlines()[-5:])[-n:]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT") or str(ROOT / "gpu_check_out"),
                   help="results folder (default: $GPU_CHECK_OUT, else gpu_check_out/)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run (default %(default)s)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--build", choices=("auto", "always", "never"), default="auto",
                   help="auto: build unless the extension is up to date (default)")
    p.add_argument("--dry-run", action="store_true", help="the no-GPU dry run even where a GPU is visible")
    p.add_argument("--e2e-worker", metavar="JSONL", help=argparse.SUPPRESS)
    p.add_argument("--e2e-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        p.error(f"unknown step(s) {unknown}; choose from {','.join(STEPS)}")
    if args.budget <= 0:
        p.error(f"--budget must be > 0 seconds, got {args.budget:g}")
    args.steps = steps
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.e2e_worker:
        return e2e_worker(Path(args.e2e_worker), args.e2e_seconds, args.dry_run)
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
