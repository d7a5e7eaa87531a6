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


def _sig(spec: str, f: str = "fp32") -> dict:
    """``"a=*F n=i32"`` -> ``{"a": "*fp32", "n": "i32"}`` (``F``: the float type ``f``)."""
    return dict(item.replace("F", f).split("=") for item in spec.split())


_ATT = "dense_ptr=*F query_ptr=*F eps_ptr=*F out_ptr=*F Q=i32 P=i32"
_ATT_BWD = "grad_ptr=*F dense_ptr=*F query_ptr=*F eps_ptr=*F gdense_ptr=*F gquery_part_ptr=*fp32 Q=i32 P=i32"
_DECODE = "off_ptr=*F out_ptr=*F H=i32 W=i32 stride=i32"
_GATHER = "off_ptr=*F meta_ptr=*i64 lev_ptr=*F box_ptr=*F fg_ptr=*u8 H=i32 W=i32 out_stride=i32"
_LOSS = "dense_ptr=*F query_ptr=*F mask_ptr=*u8 order_ptr=*i32 start_ptr=*i32 err_ptr=*fp32 count_ptr=*i32 Q=i32 P=i32"
_LOSS_BWD = ("dense_ptr=*F query_ptr=*F mask_ptr=*u8 order_ptr=*i32 start_ptr=*i32 weight_ptr=*fp32 "
             "gdense_ptr=*fp32 gquery_ptr=*fp32 Q=i32 P=i32")
_MASKS = ("dense_ptr=*F sem_ptr=*F query_ptr=*F class_ptr=*i32 order_ptr=*i32 params_ptr=*F masks_ptr=*i32 "
          "area_ptr=*i32 Q=i32 P=i32 NW=i32")
_SCAN = "masks_ptr=*i32 area_ptr=*i64 eligible_ptr=*i32 thr_ptr=*fp64 accepted_ptr=*i32 free_ptr=*i64 Q=i32 NW=i32"
_PAINT = ("masks_ptr=*i32 accepted_ptr=*i32 sem_ptr=*F is_thing_ptr=*i8 seg_ptr=*i32 hist_ptr=*i32 "
          "K=i32 C=i32 P=i32 NW=i32")
_NMS = "box_ptr=*F cls_ptr=*i32 thr_ptr=*F mask_ptr=*i32 N=i32 NW=i32"
F32, F64 = tl.float32, tl.float64

# (kernel, argument types, constexpr values): every kernel, in the dtypes the ops launch it with.
CASES = [
    (ia._iou_attention_fwd, _sig(_ATT), dict(TRI=True, QBLOCK=16, BLOCK=256)),
    (ia._iou_attention_fwd, _sig(_ATT, "bf16"), dict(TRI=False, QBLOCK=16, BLOCK=256)),
    (ia._iou_attention_bwd, _sig(_ATT_BWD), dict(TRI=True, ACC=F32, BLOCK=256)),
    (ia._iou_attention_bwd, _sig(_ATT_BWD, "fp16"), dict(TRI=False, ACC=F32, BLOCK=256)),
    (ia._iou_attention_bwd, _sig(_ATT_BWD.replace("*fp32", "*fp64"), "fp64"), dict(TRI=True, ACC=F64, BLOCK=256)),
    (db._decode_boxes_kernel, _sig(_DECODE), dict(BLOCK=256)),
    (db._decode_boxes_kernel, _sig(_DECODE, "bf16"), dict(BLOCK=256)),
    (bi._box_iou_kernel, _sig("a_ptr=*F b_ptr=*F out_ptr=*F N=i32 M=i32", "fp16"), dict(UPCAST=True, BN=32, BM=64)),
    (gl._gather_levelness_kernel, _sig(_GATHER), dict(L=5, OPMATH=F32, BLOCK=512)),
    (gl._gather_levelness_kernel, _sig(_GATHER, "bf16"), dict(L=5, OPMATH=F32, BLOCK=512)),
    (ml._mask_loss_fwd, _sig(_LOSS), dict(ACC=F32, BLOCK=512)),
    (ml._mask_loss_fwd, _sig(_LOSS.replace("*fp32", "*fp64"), "fp64"), dict(ACC=F64, BLOCK=512)),
    (ml._mask_loss_bwd, _sig(_LOSS_BWD), dict(ACC=F32, BLOCK=512)),
    (ml._mask_loss_bwd, _sig(_LOSS_BWD, "bf16"), dict(ACC=F32, BLOCK=512)),
    (pd._masks_kernel, _sig(_MASKS), dict(TRI=True, QB=8, WB=32)),
    (pd._masks_kernel, _sig(_MASKS, "fp16"), dict(TRI=False, QB=8, WB=32)),
    (pd._masks_kernel, _sig(_MASKS, "bf16"), dict(TRI=True, QB=8, WB=32)),
    (pd._masks_kernel, _sig(_MASKS, "fp64"), dict(TRI=True, QB=8, WB=32)),
    (pd._fusion_kernel, _sig(_SCAN.replace("thr_ptr=*fp64", "thr_ptr=*fp64 taken_ptr=*i32")), dict(WB=1024)),
    (pd._fusion_resident_kernel, _sig(_SCAN), dict(NWB=8192)),
    (pd._paint_kernel, _sig(_PAINT), dict(WB=32, CB=32)),
    (pd._stuff_kernel, _sig("seg_ptr=*i32 lut_ptr=*i32 P=i32"), dict(BLOCK=1024)),
    (nm._nms_mask_kernel, _sig(_NMS), dict(OUT=F32, UPCAST=False, BATCHED=True, BR=32, WB=2)),
    (nm._nms_mask_kernel, _sig(_NMS, "bf16"), dict(OUT=tl.bfloat16, UPCAST=True, BATCHED=False, BR=32, WB=2)),
    (nm._nms_sweep_kernel, _sig("mask_ptr=*i32 keep_ptr=*i32 N=i32 NW=i32"), dict(NWB=4096)),
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
        except Exception as e:
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
