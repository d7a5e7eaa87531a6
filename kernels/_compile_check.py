"""Compile every Triton kernel for a GPU architecture without a GPU: frontend, LLVM and ptxas.

    python -m rtpanoptic.kernels._compile_check [--arch 90] [kernel names...]

Run *without* ``TRITON_INTERPRET=1`` (the interpreter replaces ``@triton.jit``).  It catches what
the interpreter cannot (unsupported Python in a kernel, type errors of the compiled dialect) and
checks the PTX for approximate float32 division (``div.full``), which would break the
bit-identical results of ``panoptic_from_dense`` / ``nms``.  Used by tests/ops/test_triton_compile.py.
"""
from __future__ import annotations

import argparse
import sys
import time

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import box_iou as bi
from . import decode_boxes as db
from . import gather_levelness as gl
from . import iou_attention as ia
from . import mask_loss as ml
from . import nms as nm
from . import panoptic_from_dense as pd

CASES = [
  (ia._iou_attention_fwd, dict(dense_ptr="*fp32", query_ptr="*fp32", eps_ptr="*fp32", out_ptr="*fp32", Q="i32", P="i32"), dict(TRI=True, QBLOCK=16, BLOCK=256)),
  (ia._iou_attention_fwd, dict(dense_ptr="*bf16", query_ptr="*bf16", eps_ptr="*bf16", out_ptr="*bf16", Q="i32", P="i32"), dict(TRI=False, QBLOCK=16, BLOCK=256)),
  (ia._iou_attention_bwd, dict(grad_ptr="*fp32", dense_ptr="*fp32", query_ptr="*fp32", eps_ptr="*fp32", gdense_ptr="*fp32", gquery_part_ptr="*fp32", Q="i32", P="i32"), dict(TRI=True, ACC=tl.float32, BLOCK=256)),
  (ia._iou_attention_bwd, dict(grad_ptr="*fp16", dense_ptr="*fp16", query_ptr="*fp16", eps_ptr="*fp16", gdense_ptr="*fp16", gquery_part_ptr="*fp32", Q="i32", P="i32"), dict(TRI=False, ACC=tl.float32, BLOCK=256)),
  (db._decode_boxes_kernel, dict(off_ptr="*fp32", out_ptr="*fp32", H="i32", W="i32", stride="i32"), dict(BLOCK=256)),
  (db._decode_boxes_kernel, dict(off_ptr="*bf16", out_ptr="*bf16", H="i32", W="i32", stride="i32"), dict(BLOCK=256)),
  (bi._box_iou_kernel, dict(a_ptr="*fp16", b_ptr="*fp16", out_ptr="*fp16", N="i32", M="i32"), dict(UPCAST=True, BN=32, BM=64)),
  (gl._gather_levelness_kernel, dict(off_ptr="*fp32", meta_ptr="*i64", lev_ptr="*fp32", box_ptr="*fp32", fg_ptr="*u8", H="i32", W="i32", out_stride="i32"), dict(L=5, OPMATH=tl.float32, BLOCK=512)),
  (gl._gather_levelness_kernel, dict(off_ptr="*bf16", meta_ptr="*i64", lev_ptr="*bf16", box_ptr="*bf16", fg_ptr="*u8", H="i32", W="i32", out_stride="i32"), dict(L=5, OPMATH=tl.float32, BLOCK=512)),
  (ml._mask_loss_fwd, dict(dense_ptr="*fp32", query_ptr="*fp32", mask_ptr="*u8", order_ptr="*i32", start_ptr="*i32", err_ptr="*fp32", count_ptr="*i32", Q="i32", P="i32"), dict(ACC=tl.float32, BLOCK=512)),
  (ml._mask_loss_bwd, dict(dense_ptr="*fp32", query_ptr="*fp32", mask_ptr="*u8", order_ptr="*i32", start_ptr="*i32", weight_ptr="*fp32", gdense_ptr="*fp32", gquery_ptr="*fp32", Q="i32", P="i32"), dict(ACC=tl.float32, BLOCK=512)),
  (ml._mask_loss_bwd, dict(dense_ptr="*bf16", query_ptr="*bf16", mask_ptr="*u8", order_ptr="*i32", start_ptr="*i32", weight_ptr="*fp32", gdense_ptr="*fp32", gquery_ptr="*fp32", Q="i32", P="i32"), dict(ACC=tl.float32, BLOCK=512)),
  (pd._masks_kernel, dict(dense_ptr="*fp32", sem_ptr="*fp32", query_ptr="*fp32", class_ptr="*i32", order_ptr="*i32", params_ptr="*fp32", masks_ptr="*i32", area_ptr="*i32", Q="i32", P="i32", NW="i32"), dict(TRI=True, QB=8, WB=32)),
  (pd._fusion_kernel, dict(masks_ptr="*i32", area_ptr="*i64", eligible_ptr="*i32", thr_ptr="*fp64", taken_ptr="*i32", accepted_ptr="*i32", free_ptr="*i64", Q="i32", NW="i32"), dict(WB=1024)),
  (pd._paint_kernel, dict(masks_ptr="*i32", accepted_ptr="*i32", sem_ptr="*fp32", is_thing_ptr="*i8", seg_ptr="*i32", hist_ptr="*i32", K="i32", C="i32", P="i32", NW="i32"), dict(WB=32, CB=32)),
  (pd._stuff_kernel, dict(seg_ptr="*i32", lut_ptr="*i32", P="i32"), dict(BLOCK=1024)),
  (nm._nms_mask_kernel, dict(box_ptr="*fp32", cls_ptr="*i32", thr_ptr="*fp32", mask_ptr="*i32", N="i32", NW="i32"), dict(OUT=tl.float32, UPCAST=False, BATCHED=True, BR=32, WB=2)),
  (nm._nms_sweep_kernel, dict(mask_ptr="*i32", keep_ptr="*i32", N="i32", NW="i32"), dict(NWB=4096)),
  (ia._iou_attention_bwd, dict(grad_ptr="*fp64", dense_ptr="*fp64", query_ptr="*fp64", eps_ptr="*fp64", gdense_ptr="*fp64", gquery_part_ptr="*fp64", Q="i32", P="i32"), dict(TRI=True, ACC=tl.float64, BLOCK=256)),
  (pd._masks_kernel, dict(dense_ptr="*fp16", sem_ptr="*fp16", query_ptr="*fp16", class_ptr="*i32", order_ptr="*i32", params_ptr="*fp16", masks_ptr="*i32", area_ptr="*i32", Q="i32", P="i32", NW="i32"), dict(TRI=False, QB=8, WB=32)),
  (pd._masks_kernel, dict(dense_ptr="*bf16", sem_ptr="*bf16", query_ptr="*bf16", class_ptr="*i32", order_ptr="*i32", params_ptr="*bf16", masks_ptr="*i32", area_ptr="*i32", Q="i32", P="i32", NW="i32"), dict(TRI=True, QB=8, WB=32)),
  (pd._masks_kernel, dict(dense_ptr="*fp64", sem_ptr="*fp64", query_ptr="*fp64", class_ptr="*i32", order_ptr="*i32", params_ptr="*fp64", masks_ptr="*i32", area_ptr="*i32", Q="i32", P="i32", NW="i32"), dict(TRI=True, QB=8, WB=32)),
  (nm._nms_mask_kernel, dict(box_ptr="*bf16", cls_ptr="*bf16", thr_ptr="*bf16", mask_ptr="*i32", N="i32", NW="i32"), dict(OUT=tl.bfloat16, UPCAST=True, BATCHED=False, BR=32, WB=2)),
  (ml._mask_loss_fwd, dict(dense_ptr="*fp64", query_ptr="*fp64", mask_ptr="*u8", order_ptr="*i32", start_ptr="*i32", err_ptr="*fp64", count_ptr="*i32", Q="i32", P="i32"), dict(ACC=tl.float64, BLOCK=512)),
]


def compile_all(arch: int = 90, only=()) -> int:
    """Compile the kernels; print one line each; return the number of failures."""
    target = GPUTarget("cuda", arch, 32)
    fails = 0
    for fn, sig, const in CASES:
        name = fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__
        if only and name not in only:
            continue
        full = dict(sig)
        full.update({k: "constexpr" for k in const})
        start = time.time()
        try:
            kernel = triton.compile(ASTSource(fn, full, const), target=target, options=dict(enable_fp_fusion=False))
            ptx = kernel.asm["ptx"]
            if "div.full.f32" in ptx or "div.approx.f32" in ptx:
                raise AssertionError("approximate float32 division in the PTX")
            print(f"OK   {name} ({time.time() - start:.1f}s)")
        except Exception as e:  # noqa: BLE001 - report every kernel
            fails += 1
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:2000]}")
    return fails


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("kernels", nargs="*")
    args = parser.parse_args(argv)
    return 1 if compile_all(args.arch, tuple(args.kernels)) else 0


if __name__ == "__main__":
    sys.exit(main())
