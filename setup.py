"""Build script for rtpanoptic.

One extension, ``rtpanoptic._C``, holds every C++ (CPU) kernel and, when CUDA is
available, every CUDA kernel.  The ops register themselves with ``TORCH_LIBRARY``
(schemas in ``csrc/ops.cpp``) and are loaded with ``torch.ops.load_library``.

Environment variables:
  FORCE_CUDA=1          compile the CUDA kernels even without a visible GPU; a missing
                        toolkit is then an error, never a silent skip.
  FORCE_CUDA=0          never compile CUDA kernels.
  CUDA_HOME             CUDA toolkit root (default: /usr/local/cuda when it has nvcc).
  TORCH_CUDA_ARCH_LIST  GPU architectures, e.g. "9.0" or "8.0;9.0+PTX".  Default: the visible
                        GPUs' (torch's own default); with no GPU visible, every architecture the
                        installed torch was built for that nvcc can compile, the newest also as PTX.
  RTPANOPTIC_DEBUG=1    build with -O0 -g.

The extension only works with the torch it was compiled against: the wheel's metadata pins
``torch==<that version>`` and ``rtpanoptic/_build_info.json`` (written next to the extension)
records it, so that ``import rtpanoptic`` can say so when another torch is installed.
"""
import glob
import importlib.util
import json
import os
import shutil
import subprocess
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


def _nvcc_codes(cuda_home):
    """``sm_XY`` targets this nvcc can compile (None when it cannot say)."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-code"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.split()) or None


def _arch(code):
    """``sm_90`` -> ``9.0``, ``sm_120`` -> ``12.0``; None for a suffixed (``sm_90a``) or odd name."""
    digits = code[len("sm_"):]
    return f"{digits[:-1]}.{digits[-1]}" if code.startswith("sm_") and digits.isdigit() and len(digits) >= 2 else None


def default_arch_list(torch, cuda_home):
    """TORCH_CUDA_ARCH_LIST for a build with no GPU visible: the architectures the installed torch
    was built for that nvcc can compile, the newest also as PTX (so newer GPUs JIT-compile it)."""
    flags = getattr(torch._C, "_cuda_getArchFlags", lambda: None)() or ""
    codes = [c for c in flags.split() if _arch(c)]
    supported = _nvcc_codes(cuda_home)
    if supported is not None:
        codes = [c for c in codes if c in supported]
    archs = sorted({_arch(c) for c in codes}, key=lambda a: tuple(int(x) for x in a.split(".")))
    if not archs:
        archs = ["8.0", "9.0"]  # torch reports nothing usable: the data-centre GPUs of the last two generations
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


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


def _cuda_targets():
    """What nvcc will be asked for (``sm_90`` machine code, ``compute_90`` PTX), as cpp_extension
    resolves TORCH_CUDA_ARCH_LIST or the visible GPUs; None if this torch cannot say."""
    from torch.utils import cpp_extension

    try:
        flags = cpp_extension._get_cuda_arch_flags()  # private, present in torch 2.4 - 2.14
    except Exception:
        return None
    return sorted({f.split("code=")[-1] for f in flags if "code=" in f})


def _extensions():
    """-> (the extension, the build record written to ``rtpanoptic/_build_info.json``)."""
    import torch

    build_cuda, cuda_home = _want_cuda(torch)
    if build_cuda:
        # cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(torch, cuda_home)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("RTPANOPTIC_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # The kernels promise the reference's rounding: no a*b+c contracted into one FMA, on any
    # target (the CPU SIMD paths pick their ISA at run time: csrc/cpu/simd.h).
    cxx = opt + ([] if sys.platform == "win32" else ["-ffp-contract=off"])
    # at::parallel_for is inline (ATen/ParallelOpenMP.h): without OpenMP in this build it runs every
    # kernel's range on the calling thread.  torch's wheels bundle libgomp.so.1, which the kernels
    # then share with ATen (one thread pool, torch.set_num_threads applies).
    link = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx += link
    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))]
    sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    extra = {"cxx": cxx}
    include_dirs = [os.path.join(ROOT, "csrc")]
    library_dirs = []
    define_macros = []
    ext_cls = CppExtension
    info = {"torch": str(torch.__version__), "cuda": None, "cuda_targets": None}
    if build_cuda:
        sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
        include_dirs += _cuda_wheel_include_dirs()
        library_dirs.append(os.path.join(cuda_home, "lib64"))
        extra["nvcc"] = opt + ["--expt-relaxed-constexpr", "-fmad=false"]
        define_macros.append(("WITH_CUDA", None))
        ext_cls = CUDAExtension
        info.update(cuda=torch.version.cuda, cuda_targets=_cuda_targets())
    what = f"CPU + CUDA ({' '.join(info['cuda_targets'] or ['?'])})" if build_cuda else "CPU-only"
    print(f"rtpanoptic: building the {what} extension for torch {torch.__version__}", file=sys.stderr)
    ext = ext_cls(
        "rtpanoptic._C",
        sources,
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=link,
    )
    return [ext], info


def _torch_requirement():
    """``torch==X.Y.Z``: the extension is ABI-tied to the torch it was compiled against (a local
    label such as ``+cu130`` is left out: ``==2.14.1`` accepts every local variant of 2.14.1)."""
    import torch

    return f"torch=={str(torch.__version__).split('+')[0]}"


DEPENDENCIES = [
    "torchvision>=0.19",
    "numpy>=1.24",
    "pillow>=9.0",
    "pyyaml>=6.0",
    "tqdm>=4.60",
    "pycocotools>=2.0.7",
    "matplotlib>=3.7",
]


def _cmdclass(info):
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionWithInfo(BuildExtension.with_options(use_ninja=True)):
        """Also writes ``rtpanoptic/_build_info.json`` beside ``_C`` (into the wheel, and into the
        source tree for in-place and editable builds)."""

        def run(self):
            super().run()
            dirs = [os.path.join(self.build_lib, "rtpanoptic")]
            if self.inplace:
                dirs.append(os.path.join(ROOT, "rtpanoptic"))
            for d in dirs:
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "_build_info.json"), "w") as f:
                    json.dump(info, f, indent=1)

    return {"build_ext": BuildExtensionWithInfo}


EXTENSIONS, BUILD_INFO = _extensions()

setup(
    packages=find_packages(include=["rtpanoptic", "rtpanoptic.*"]) + ["rtpanoptic.kernels"],
    package_dir={"rtpanoptic.kernels": "kernels"},
    package_data={"rtpanoptic": ["configs/*.yaml"]},
    install_requires=[_torch_requirement(), *DEPENDENCIES],
    ext_modules=EXTENSIONS,
    cmdclass=_cmdclass(BUILD_INFO),
    zip_safe=False,
)
