# rtpanoptic: two commands on a fresh machine.
#   make demo   create .venv if missing, install, run the main job on the built-in default
#   make test   create .venv if missing, install, run the test suite (CPU; Triton via its interpreter)
#   make isa-check   the precision and kernel tests once per CPU code path this machine can emulate
#                    (ONEDNN_MAX_CPU_ISA x ATEN_CPU_CAPABILITY, one thread; see tests/isa_check.py)
# FORCE_CUDA=1 compiles the CUDA kernels even without a GPU (CI does); FORCE_CUDA=0 never does.
#   make gpu-check   on a GPU machine, with the Python and torch installed there (no venv, nothing
#                    downloaded): build, test suite, compute-sanitizer, benchmarks; results in
#                    $(GPU_CHECK_OUT) (see benchmarks/gpu_check.py; without a GPU: a dry run)
#   make gpu-wheels  download into .whl/ (git-ignored) what that machine may lack (cp312 manylinux)
#   make image-check the suite on the GPU image's software (benchmarks/gpu_image.txt: Python 3.12,
#                    torch 2.11, triton 3.6) with Triton's interpreter, numpy 2.3 and newest, on this
#                    CPU machine (benchmarks/image_check.sh; ~40 min on 2 cores; not part of .ci/run)
#   make mutation-check  the same wrong rule in the reference and the Triton kernels at once must fail a
#                    test (tests/mutation_check.py, 3-7 min; not part of `make test`)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
DEMO_ARGS ?=
PYTEST_ARGS ?=
MUTATION_ARGS ?=
GPU_CHECK_OUT ?= gpu_check_out
GPU_CHECK_ARGS ?=
# setuptools>=77 reads pyproject's `license = "MIT"`; the GPU image's may be older.  ninja: without
# it the build is serial (one nvcc at a time), past gpu_check's build limit.
GPU_WHEELS ?= setuptools==80.9.0 ninja==1.13.2

.PHONY: demo test isa-check lint bench install clean gpu-check gpu-wheels image-check mutation-check

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q "setuptools>=77" wheel ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/rtpanoptic demo $(DEMO_ARGS)

# check_build.py first: rtpanoptic._C must load (with FORCE_CUDA=1, with every op's CUDA kernel),
# or the C++/CUDA tests would merely skip.
test: $(VENV)/.installed
	$(PY) tests/check_build.py
	TRITON_INTERPRET=1 $(PY) -m pytest tests -q $(PYTEST_ARGS)

isa-check: $(VENV)/.installed
	$(PY) tests/isa_check.py $(PYTEST_ARGS)

mutation-check: $(VENV)/.installed
	TRITON_INTERPRET=1 $(PY) tests/mutation_check.py $(MUTATION_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .

bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-columns=min,median,mean,rounds $(PYTEST_ARGS)

gpu-check:
	PYTHONUNBUFFERED=1 $(PYTHON) benchmarks/gpu_check.py --out "$(GPU_CHECK_OUT)" $(GPU_CHECK_ARGS)

gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

image-check:
	bash benchmarks/image_check.sh

clean:
	rm -rf build *.egg-info rtpanoptic/_C*.so rtpanoptic/_build_info.json
