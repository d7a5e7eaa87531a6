"""The float formulas of the CUDA kernels (csrc/box_math.h, shared with the CPU kernels), compiled
by nvcc with the build's own flags (setup.py's ``extra["nvcc"]``) for sm_90, contain no fused
multiply-add: the kernels promise results rounded like the reference's separate operations.
Needs nvcc, not a GPU."""
import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
NVCC = shutil.which("nvcc") or next((p for p in [os.path.join(CUDA_HOME, "bin", "nvcc")] if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(NVCC is None or not (ROOT / "setup.py").exists(), reason="needs nvcc and the sources")

# One kernel per dtype calling every device function of box_math.h on data it cannot see.
PROBE = r"""
#include "box_math.h"
using namespace rtpanoptic;

template <typename T>
__global__ void probe(const T* __restrict__ in, const int64_t* __restrict__ idx, const int32_t* __restrict__ chosen,
                      T* __restrict__ out) {
  const int i = threadIdx.x;
  const T* b = in + 32 * i;
  T* o = out + 32 * i;
  o[0] = box_score<T>(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], Score::kIoU);
  o[1] = box_score<T>(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], Score::kTri);
  o[2] = pair_iou<T>(b[0], b[1], b[2], b[3], box_area<T>(b[0], b[1], b[2], b[3]), b[4], b[5], b[6], b[7],
                     box_area<T>(b[4], b[5], b[6], b[7]));
  T gd[4] = {b[8], b[9], b[10], b[11]}, gq[4] = {b[12], b[13], b[14], b[15]};
  box_score_backward<T>(b[16], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], Score::kTri, gd, gq);
  box_score_backward<T>(b[17], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], Score::kIoU, gd, gq);
  for (int c = 0; c < 4; ++c) o[3 + c] = gd[c] + gq[c];
  int64_t i0, i1;
  T w0, w1;
  bilinear_coeffs<T>(idx[i], idx[i + 1], b[18], &i0, &i1, &w0, &w1);
  o[7] = bilinear<T>(b[19], b[20], b[21], b[22], w0, w1, b[23], b[24]);
  o[8] = w0 + static_cast<T>(i0 + i1);
  o[9] = static_cast<T>(first_output_reaching<T>(idx[i + 2], idx[i + 3], idx[i + 4], b[25]));
  T adj[4] = {0, 0, 0, 0};
  const BilinearAxis<T> ys{idx[i + 2], idx[i + 3], b[26]}, xs{idx[i + 4], idx[i + 5], b[27]};
  bilinear_adjoint_at<T, T>(in, idx[i + 6], idx[i + 5], chosen, 1, idx[i], idx[i + 1], ys, xs, adj);
  o[13] = tap_weight<T>(idx[i], idx[i + 1], idx[i + 2], b[28], b[29]);
  o[10] = adj[0] + adj[3] + static_cast<T>(argmax_better(b[26], b[27]));
  o[11] = nan_min(b[28], b[29]) + nan_max(b[30], b[31]) + rtp_max(b[29], b[31]);
  o[12] = dmin_da(b[28], b[29]) + dmax_da(b[30], b[31]);
  o[14] = static_cast<T>(class_argmax<T>(in, idx[i], idx[i + 1], idx[i + 2]) + keeps_stuff(idx[i + 3], idx[i + 4]));
  o[15] = mask_loss_mean<T>(reinterpret_cast<const double*>(in), idx, b, idx[i], idx[i + 1]) +
          mask_error<T>(b[16], chosen[i] != 0);
}
template __global__ void probe<float>(const float*, const int64_t*, const int32_t*, float*);
template __global__ void probe<double>(const double*, const int64_t*, const int32_t*, double*);
"""
DEVICE_FUNCTIONS = re.compile(r"^RTP_HD\s+[\w:<>, ]+?\s(\w+)\(", re.M)


def _build_nvcc_flags() -> list[str]:
    """The flags setup.py gives nvcc: ``extra["nvcc"] = opt + [...]`` (opt is -O3 unless debugging)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "extra['nvcc']":
            return ["-O3"] + [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)]
    raise AssertionError("setup.py sets no extra['nvcc']")


def test_probe_calls_every_device_function():
    declared = set(DEVICE_FUNCTIONS.findall((ROOT / "csrc" / "box_math.h").read_text()))
    assert declared and {f for f in declared if f + "<" not in PROBE and f + "(" not in PROBE} == set()


def test_box_math_compiles_without_fma_with_the_build_flags(tmp_path):
    (tmp_path / "probe.cu").write_text(PROBE)
    cmd = [NVCC, "-ptx", "-arch=sm_90", "-std=c++17", *_build_nvcc_flags(), "-I", str(ROOT / "csrc"),
           str(tmp_path / "probe.cu"), "-o", str(tmp_path / "probe.ptx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ptx = (tmp_path / "probe.ptx").read_text()
    assert "div.rn.f32" in ptx and "div.rn.f64" in ptx  # the probe did instantiate both dtypes
    fused = re.findall(r"\bfma\.r[nzmp][.\w]*", ptx)
    assert not fused, f"{len(fused)} fused multiply-adds ({sorted(set(fused))}) with flags {_build_nvcc_flags()}"


def _torch_cuda_includes() -> list[str]:
    """Include folders for a .cu file using ATen: torch's, the toolkit's, the nvidia/cu* wheels' (as setup.py)."""
    import glob
    import importlib.util

    from torch.utils import cpp_extension

    dirs = list(cpp_extension.include_paths()) + [os.path.join(os.path.dirname(os.path.dirname(NVCC)), "include")]
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
    return dirs


def _kernel_fmas(src: Path, tmp_path) -> dict[str, list[str]]:
    """``src`` compiled as setup.py compiles it (its nvcc flags, torch's macros) to sm_90 PTX: the
    fused multiply-adds of each kernel entry, by demangled name."""
    from torch.utils import cpp_extension

    flags = [*_build_nvcc_flags(), *cpp_extension.COMMON_NVCC_FLAGS, "-DWITH_CUDA", "-DTORCH_API_INCLUDE_EXTENSION_H",
             "-DTORCH_EXTENSION_NAME=_C"]
    includes = [arg for d in [str(ROOT / "csrc"), *_torch_cuda_includes()] for arg in ("-I", d)]
    cmd = [NVCC, "-ptx", "-arch=sm_90", "-std=c++20", *flags, *includes, str(src), "-o", str(tmp_path / "k.ptx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    ptx = (tmp_path / "k.ptx").read_text()
    entries = re.split(r"(?=^(?:\.visible |\.weak )?\.entry )", ptx, flags=re.M)[1:]
    fused = {}
    for entry in entries:
        mangled = re.search(r"\.entry (\w+)", entry).group(1)
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() \
            if shutil.which("c++filt") else mangled
        fused[name] = re.findall(r"\bfma\.r[nzmp][.\w]*", entry)
    return fused


def test_release_kernel_fuses_only_the_bilinear_value(tmp_path):
    """csrc/cuda/panoptic_from_dense_release_kernel.cu for sm_90: exactly 3 fused multiply-adds per
    bits_kernel instantiation -- the explicit fma of upsample_math.h's bilinear_value, which
    reproduces ATen's contracted CUDA F.interpolate -- and none anywhere else (no contraction by nvcc)."""
    fused = _kernel_fmas(ROOT / "csrc" / "cuda" / "panoptic_from_dense_release_kernel.cu", tmp_path)
    assert len(fused) >= 12, sorted(fused)  # every kernel and dtype instantiation was found
    bits = {n: f for n, f in fused.items() if "bits_kernel" in n}
    assert len(bits) == 2, sorted(fused)  # float (for float16/bfloat16/float32) and double
    for name, found in bits.items():
        assert sorted(found) == ["fma.rn.f64"] * 3 if "double" in name else ["fma.rn.f32"] * 3, (name, found)
    others = {n: f for n, f in fused.items() if "bits_kernel" not in n and f}
    assert not others, others


def _kernel_stores(tmp_path) -> list[set[str]]:
    """The global store instructions of each kernel entry of the PTX that :func:`_kernel_fmas` left in
    ``tmp_path``, in its entries' order."""
    ptx = (tmp_path / "k.ptx").read_text()
    entries = re.split(r"(?=^(?:\.visible |\.weak )?\.entry )", ptx, flags=re.M)[1:]
    return [set(re.findall(r"\bst\.global\.[\w.]+", e)) for e in entries]


def test_upsample_argmax_writes_each_out_dtype_with_the_same_arithmetic(tmp_path):
    """csrc/cuda/upsample_argmax_kernel.cu for sm_90: one kernel per (input, output) dtype pair, each
    storing its output dtype's width directly (no int64 map cast afterwards), and the output dtype
    changes nothing else: the same fused multiply-adds (explicit, rounded once) for every output dtype
    of one input dtype."""
    fused = _kernel_fmas(ROOT / "csrc" / "cuda" / "upsample_argmax_kernel.cu", tmp_path)
    kernels = [(n, f, st) for (n, f), st in zip(fused.items(), _kernel_stores(tmp_path)) if "upsample_argmax_kernel<" in n]
    assert len(kernels) == 16, sorted(fused)  # 4 input dtypes x 4 output dtypes
    widths = {"long": "u64", "int": "u32", "short": "u16", "unsigned char": "u8"}
    by_input = {}
    for name, found, entry_stores in kernels:
        scalar, out = re.search(r"upsample_argmax_kernel<(.+?), (long|int|short|unsigned char)>", name).groups()
        assert entry_stores == {f"st.global.{widths[out]}"}, (name, entry_stores)
        assert found and set(found) == {"fma.rn.f64" if scalar == "double" else "fma.rn.f32"}, (name, found)
        by_input.setdefault(scalar, []).append(found)
    assert len(by_input) == 4 and all(len(v) == 4 and all(f == v[0] for f in v) for v in by_input.values())


def test_bitmask_nms_kernels_compile_without_fma(tmp_path):
    """csrc/cuda/select_queries_kernel.cu (suppression_mask.cuh's mask and scan kernels, shared with
    nms_kernel.cu) for sm_90: every instantiation is there and none contracts the IoU."""
    fused = _kernel_fmas(ROOT / "csrc" / "cuda" / "select_queries_kernel.cu", tmp_path)
    masks = [n for n in fused if "suppression_mask_kernel" in n]
    scans = [n for n in fused if "greedy_scan_kernel" in n]
    assert len(masks) == 12 and len(scans) == 2, sorted(fused)  # 4 dtypes x 3 (labels, global) forms; global on/off
    assert not {n: f for n, f in fused.items() if f}


def test_panoptic_grid_kernels_compile_without_fma(tmp_path):
    """csrc/cuda/panoptic_from_dense_kernel.cu for sm_90: the mask kernel (with its per-query mask
    statistics), the bounded fusion and the stuff kernels, every dtype instantiated, none with a
    fused multiply-add (the mask bits are score * P_sem > sigma rounded as the reference's)."""
    fused = _kernel_fmas(ROOT / "csrc" / "cuda" / "panoptic_from_dense_kernel.cu", tmp_path)
    for kernel in ("mask_kernel", "fusion_kernel", "stuff_count_kernel"):
        assert len([n for n in fused if kernel in n]) == 4, sorted(fused)  # float16, bfloat16, float32, float64
    assert not {n: f for n, f in fused.items() if f}
