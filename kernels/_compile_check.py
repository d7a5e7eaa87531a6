"""Compile every Triton kernel for a GPU without one, exactly as the ops launch it.

    python -m rtpanoptic.kernels._compile_check [--arch 90] [kernel names...]

1. A subprocess runs every op (forward and backward; float32, float16, bfloat16 and float64; the
   GPU block sizes) through Triton's interpreter and records each launch: the kernel, the types
   of its arguments, its constexpr values and its launch options.
2. This process compiles every distinct launch for ``sm_<arch>`` with those same options
   (frontend, LLVM, ptxas) and checks the PTX: no fused multiply-add (``fma.rn``: the ops promise
   results rounded like the reference's separate operations) and no approximate float32 division.
   A kernel's ``INTERPRET`` constexpr (True in every recorded launch) is compiled as False: the
   variant a GPU runs.  Fused multiply-adds are allowed only where a kernel reproduces a
   contracted reference on purpose: launches with the constexpr ``FMA`` True (whose ``FMA``
   False launches, recorded too, must have none) and the kernels of :data:`FUSED_BY_DESIGN`.
   The kernels of the modules in :data:`NO_WIDE_DIVISION` must have no 64-bit integer division.

It catches what the interpreter cannot (unsupported Python in a kernel, type errors of the
compiled dialect, options that differ from the intended ones).  Run it without
``TRITON_INTERPRET=1`` (the interpreter replaces ``@triton.jit``).  Used by
tests/ops/test_triton_compile.py.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time

# PTX instructions that would break the promised rounding.
FORBIDDEN = {
    "fused multiply-add": re.compile(r"\bfma\.r[nzmp]"),
    "approximate float32 division": re.compile(r"\bdiv\.(full|approx)\.f32"),
}
# Modules whose kernels must not divide 64-bit integers (a long software routine on a GPU, issue 24:
# the panoptic passes index their words with 32-bit arithmetic and per-row bases).
NO_WIDE_DIVISION = ("panoptic_from_dense", "panoptic_from_dense_release")
WIDE_DIVISION = re.compile(r"\b(div|rem)\.[su]64\b")
# Kernels whose GPU variant calls tl.fma unconditionally, reproducing ATen's contracted CPU
# arithmetic (kernels/upsample_argmax.py): their fused multiply-adds are the intended ones.
FUSED_BY_DESIGN = {"_upsample_argmax_kernel"}
_TORCH_TYPES = None


def _type_name(t) -> str:
    global _TORCH_TYPES
    import torch

    if _TORCH_TYPES is None:
        _TORCH_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                        torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
                        torch.uint8: "u8", torch.bool: "i1"}
    return _TORCH_TYPES[t.dtype]


# ----------------------------------------------------------------------- 1. record
def _describe(value):
    """A launch argument as JSON: a tensor's element type, a Triton dtype's name, or the value."""
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"tensor": _type_name(value)}
    if isinstance(value, tl.dtype):
        return {"dtype": value.name}
    return {"value": value}


def _workload() -> None:
    """Every op, forward and backward, in every dtype the ops take, with the GPU block sizes."""
    import torch

    from rtpanoptic import ops
    from rtpanoptic.ops.reference import SCORES

    from . import _common
    from . import panoptic_from_dense as pfd
    from . import panoptic_from_dense_release as pfr

    _common.GPU_BLOCKS_IN_INTERPRETER = True
    g = torch.Generator().manual_seed(0)

    def boxes(n, size=40.0):
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
        return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g, dtype=torch.float64) * size], 1)

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        b = boxes(40).to(dtype)
        s = torch.rand(40, generator=g).to(dtype)
        ops.box_iou(b, b[:7], backend="triton")
        ops.nms(b, s, 0.5, backend="triton")
        ops.batched_nms(b, s, torch.randint(0, 3, (40,), generator=g), 0.5, backend="triton")
        for global_thr in (0.3, None):
            ops.select_queries(b, s, torch.randint(0, 3, (40,), generator=g), 0.5, global_thr, 10, backend="triton")
        off = (torch.rand(2, 4, 6, 9, generator=g) * 20).to(dtype).requires_grad_()
        ops.decode_boxes(off, 8, backend="triton").sum().backward()
        levels = [(torch.rand(2, 4, h, w, generator=g) * 20).to(dtype).requires_grad_() for h, w in ((8, 12), (4, 6))]
        levelness = torch.randn(2, 3, 8, 12, generator=g).to(dtype)
        ops.gather_levelness(levels, levelness, 4, backend="triton")[0].sum().backward()
        dense = boxes(8 * 12).t().reshape(4, 8, 12).contiguous().to(dtype).requires_grad_()
        queries = boxes(5).to(dtype).requires_grad_()
        for score in SCORES:
            ops.iou_attention(dense, queries, score, backend="triton").sum().backward()
        masks = torch.rand(5, 8, 12, generator=g) > 0.5
        beta = torch.rand(5, generator=g).to(dtype)
        bi = torch.tensor([0, 1, 0, 1, 1])
        batch = torch.stack([dense.detach(), dense.detach().flip(1)]).requires_grad_()
        ops.mask_loss(batch, queries, masks, beta, bi, backend="triton").backward()
        sem = torch.softmax(torch.randn(4, 8, 12, generator=g), 0).to(dtype)
        is_thing = torch.tensor([False, True, True, False])
        scores = torch.rand(5, generator=g).to(dtype)
        args = (dense.detach(), sem, queries.detach(), torch.tensor([1, 2, 1, 2, 1]), scores, is_thing)
        for score in SCORES:
            ops.panoptic_from_dense(*args, sigma=0.1, score=score, stuff_area_limit=1, backend="triton")
        if dtype != torch.float64:  # the Triton upsample_argmax computes in float32
            logits = torch.randn(2, 5, 6, 9, generator=g).to(dtype)
            for out_dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):  # one launch per output dtype
                ops.upsample_argmax(logits, (24, 36), (22, 35), out_dtype=out_dtype, backend="triton")
        resident = pfd.RESIDENT_WORDS
        pfd.RESIDENT_WORDS = 0  # the streamed scan of grids beyond the register-resident size
        try:
            ops.panoptic_from_dense(*args, sigma=0.1, stuff_area_limit=1, backend="triton")
        finally:
            pfd.RESIDENT_WORDS = resident
        if dtype != torch.float64:  # the Triton panoptic_from_dense_release takes no float64
            release = torch.ops.rtpanoptic_triton.panoptic_from_dense_release
            for score, fma in zip(SCORES, (True, False)):  # both roundings of the bilinear value
                release(*args, 4, 30, 45, 0.1, score, 0.0, 0.5, 1, fma)
            copy = pfr.COPY_DEVICES
            pfr.COPY_DEVICES = ("cpu",)  # the CUDA variant at stride 1 (F.interpolate copies there)
            try:
                ops.panoptic_from_dense_release(*args, stride=1, size=(8, 11), sigma=0.1, backend="triton")
            finally:
                pfr.COPY_DEVICES = copy


def record() -> list[dict]:
    """Run :func:`_workload` (under ``TRITON_INTERPRET=1``) and return its launches."""
    from triton.runtime.interpreter import InterpretedFunction

    launches = []
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        bound = dict(zip(self.arg_names, args))
        bound.update({k: v for k, v in kwargs.items() if k in self.arg_names})
        launches.append({
            "module": self.fn.__module__, "kernel": self.fn.__name__,
            "args": {k: _describe(v) for k, v in bound.items()},
            "options": {k: v for k, v in kwargs.items() if k not in self.arg_names},
        })
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    try:
        _workload()
    finally:
        InterpretedFunction.run = run
    unique = {json.dumps(launch, sort_keys=True): launch for launch in launches}
    return list(unique.values())


def recorded_launches() -> list[dict]:
    """:func:`record` in a subprocess with ``TRITON_INTERPRET=1``."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", __spec__.name, "--record"], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"recording the launches failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- 2. compile
def kernels() -> dict[str, object]:
    """Every ``@triton.jit`` kernel of the package (a JIT function whose first argument is a
    pointer ``*_ptr``; the others are device helpers), by name."""
    import triton

    from . import MODULES

    found = {}
    for module in MODULES:
        for obj in vars(module).values():
            if isinstance(obj, triton.runtime.JITFunction) and obj.arg_names and obj.arg_names[0].endswith("_ptr"):
                found[obj.fn.__name__] = obj
    return found


def compile_launch(launch: dict, arch: int) -> str:
    """Compile one recorded launch for ``sm_<arch>``; return its PTX."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    signature, constexprs = {}, {}
    for param in fn.params:
        arg = launch["args"][param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = tl.dtype(arg["dtype"]) if "dtype" in arg else arg["value"]
            if param.name == "INTERPRET":
                constexprs[param.name] = False  # recorded under the interpreter; a GPU runs the other branch
        elif "tensor" in arg:
            signature[param.name] = "*" + arg["tensor"]
        elif isinstance(arg["value"], float):
            signature[param.name] = "fp32"
        else:
            signature[param.name] = "i32" if -(2**31) <= arg["value"] < 2**31 else "i64"
    source = ASTSource(fn, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=launch["options"]).asm["ptx"]


def compile_all(arch: int = 90, only=()) -> int:
    """Compile every recorded launch; print one line each; return the number of failures."""
    launches = recorded_launches()
    fails = 0
    for launch in launches:
        name = launch["kernel"]
        if only and name not in only:
            continue
        start = time.time()
        try:
            ptx = compile_launch(launch, arch)
            fused = name in FUSED_BY_DESIGN or launch["args"].get("FMA", {}).get("value") is True
            bad = [what for what, pattern in FORBIDDEN.items()
                   if pattern.search(ptx) and not (fused and what == "fused multiply-add")]
            if launch["module"].rsplit(".", 1)[-1] in NO_WIDE_DIVISION and WIDE_DIVISION.search(ptx):
                bad.append("64-bit integer division")
            if bad:
                raise AssertionError(f"{', '.join(bad)} in the PTX (launch options {launch['options']})")
            print(f"OK   {name} {launch['options']} ({time.time() - start:.1f}s)")
        except Exception as e:
            fails += 1
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:2000]}")
    missing = sorted(set(kernels()) - {launch["kernel"] for launch in launches})
    if missing and not only:
        fails += len(missing)
        print(f"FAIL never launched by the workload (add them to _workload): {', '.join(missing)}")
    return fails


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--record", action="store_true", help="(internal) print the recorded launches as JSON")
    parser.add_argument("kernels", nargs="*")
    args = parser.parse_args(argv)
    if args.record:
        print(json.dumps(record()))
        return 0
    return 1 if compile_all(args.arch, tuple(args.kernels)) else 0


if __name__ == "__main__":
    sys.exit(main())
