"""Build script for rtpanoptic.

One extension, ``rtpanoptic._C``, holds every C++ (CPU) kernel and, when CUDA is
available, every CUDA kernel.  The ops register themselves with ``TORCH_LIBRARY``
(schemas in ``csrc/ops.cpp``) and are loaded with ``torch.ops.load_library``.

Environment variables:
  FORCE_CUDA=1          compile the CUDA kernels even without a visible GPU; a missing
                        toolkit is then an error, never a silent skip.
  FORCE_CUDA=0          never compile CUDA kernels.
  CUDA_HOME             CUDA toolkit root (default: /usr/local/cuda when it has nvcc).
  TORCH_CUDA_ARCH_LIST  GPU architectures (default "8.0;9.0" when no GPU is visible).
  RTPANOPTIC_DEBUG=1    build with -O0 -g.
"""
import glob
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(home, "include")) and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def _cuda_wheel_include_dirs():
    """Headers shipped by the nvidia-* wheels torch depends on (e.g. nvidia/cu13/include)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
    return dirs


def _want_cuda(torch):
    force = os.environ.get("FORCE_CUDA")
    cuda_home = _find_cuda_home()
    if force == "0":
        return False, None
    if force == "1":
        if torch.version.cuda is None:
            sys.exit("FORCE_CUDA=1 but the installed torch is a CPU-only build")
        if cuda_home is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME")
        return True, cuda_home
    return (torch.version.cuda is not None and torch.cuda.is_available() and cuda_home is not None), cuda_home


def _extensions():
    import torch

    build_cuda, cuda_home = _want_cuda(torch)
    if build_cuda:
        # cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("RTPANOPTIC_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # The kernels promise the reference's rounding: no a*b+c contracted into one FMA, on any
    # target (the CPU SIMD paths pick their ISA at run time: csrc/cpu/simd.h).
    cxx = opt + ([] if sys.platform == "win32" else ["-ffp-contract=off"])
    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))]
    sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    extra = {"cxx": cxx}
    include_dirs = [os.path.join(ROOT, "csrc")]
    library_dirs = []
    define_macros = []
    ext_cls = CppExtension
    if build_cuda:
        sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
        include_dirs += _cuda_wheel_include_dirs()
        library_dirs.append(os.path.join(cuda_home, "lib64"))
        extra["nvcc"] = opt + ["--expt-relaxed-constexpr"]
        define_macros.append(("WITH_CUDA", None))
        ext_cls = CUDAExtension
    print(f"rtpanoptic: building {'CPU + CUDA' if build_cuda else 'CPU-only'} extension", file=sys.stderr)
    return [
        ext_cls(
            "rtpanoptic._C",
            sources,
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            define_macros=define_macros,
            extra_compile_args=extra,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    packages=find_packages(include=["rtpanoptic", "rtpanoptic.*"]) + ["rtpanoptic.kernels"],
    package_dir={"rtpanoptic.kernels": "kernels"},
    package_data={"rtpanoptic": ["configs/*.yaml"]},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
