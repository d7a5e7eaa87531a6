#!/usr/bin/env bash
# make image-check: the test suite on the GPU image's software, on a CPU machine.
#
# Builds a virtualenv from benchmarks/gpu_image.txt (the image's pinned list) with Python 3.12, copies
# the working tree (tracked and untracked-but-not-ignored files) into $IMAGE_DIR/src, builds the
# project there as benchmarks/gpu_check.py builds it (pip install --no-build-isolation -e .), runs
# gpu_check's dry run (its version checks and test ordering), then the suite with Triton's
# interpreter once per numpy version: the oldest the image may have (2.3) and the newest the
# registry serves.  A copy, so that the build for the image's torch never replaces this tree's.
#
#   IMAGE_DIR        where the venv and the copy live (default .image-check, git-ignored)
#   IMAGE_PYTHON     a Python 3.12 interpreter (default: pyenv's newest 3.12, else python3.12)
#   IMAGE_NUMPY      numpy versions to run, space-separated (default "2.3.* newest")
#   IMAGE_TESTS      what each numpy version runs: "2.3.*=tests/ops newest=tests" by default (numpy
#                    only matters to the interpreter, i.e. the op tests; the whole suite once)
#   IMAGE_PYTEST_ARGS extra pytest arguments (e.g. -x)
#   FORCE_CUDA       passed to the build (default 0: the CUDA sources compile in .ci/run already)
# Exit status: 0 when every run had 0 failures and 0 errors.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${IMAGE_DIR:-.image-check}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PINS=$ROOT/benchmarks/gpu_image.txt

py=${IMAGE_PYTHON:-}
if [ -z "$py" ]; then
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  py=$(ls -d "$root"/versions/3.12*/bin/python 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$py" ] || py=$(command -v python3.12 || true)
fi
[ -n "$py" ] && "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
  || { echo "image-check: no Python 3.12 found (set IMAGE_PYTHON)" >&2; exit 2; }

V=$DIR/venv
if [ ! -x "$V/bin/python" ] || ! cmp -s "$PINS" "$V/.pins"; then
  rm -rf "$V"
  "$py" -m venv "$V"
  "$V/bin/python" -m pip install -q --upgrade pip
  # ninja only to build faster here (the image may lack it: make gpu-wheels carries it there)
  "$V/bin/python" -m pip install -q -r "$PINS" "setuptools>=77" wheel ninja
  cp "$PINS" "$V/.pins"
fi
"$V/bin/python" - "$PINS" <<'PY'
import importlib.metadata as md, re, sys
for line in open(sys.argv[1]):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line)
    if m and not md.version(m[1]).startswith(m[2]):
        sys.exit(f"image-check: {m[1]} {md.version(m[1])} installed, {m[2]} pinned")
PY

SRC=$DIR/src
rm -rf "$SRC"
mkdir -p "$SRC"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$SRC"
cd "$SRC"
FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} "$V/bin/python" -m pip install -q --no-build-isolation --no-deps --no-index -e .
"$V/bin/python" tests/check_build.py

# gpu_check's dry run on this stack: environment and version checks, build record, import, the
# suite's collection in the GPU run's order (what it would run first)
"$V/bin/python" benchmarks/gpu_check.py --dry-run --out "$DIR/gpu_check_dry" --steps env,build,import,suite --build never

newest=$("$V/bin/python" -m pip index versions numpy 2>/dev/null | sed -n 's/^numpy (\(.*\))$/\1/p')
status=0
summary=""
set -f  # the version patterns (2.3.*) are not file names
numpys=${IMAGE_NUMPY:-2.3.* newest}
pairs=${IMAGE_TESTS:-2.3.*=tests/ops newest=tests}
for want in $numpys; do
  spec=$want
  [ "$want" = newest ] && spec=${newest:?cannot find the newest numpy}
  "$V/bin/python" -m pip install -q "numpy==$spec"
  tests=tests
  for pair in $pairs; do
    [ "${pair%%=*}" = "$want" ] && tests=${pair#*=}
  done
  have=$("$V/bin/python" -c 'import numpy; print(numpy.__version__)')
  echo "== image-check: numpy $have, TRITON_INTERPRET=1 pytest $tests"
  log=$DIR/pytest-numpy-$have.log
  set +e
  TRITON_INTERPRET=1 RTPANOPTIC_REQUIRE_EXTENSION=1 "$V/bin/python" -m pytest $tests -q -p no:cacheprovider \
    ${IMAGE_PYTEST_ARGS:-} 2>&1 | tee "$log" | tail -25
  rc=${PIPESTATUS[0]}
  set -e
  line=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$log" | tail -1)
  summary+="numpy $have, $tests: ${line:-no summary} (exit $rc)"$'\n'
  [ "$rc" = 0 ] || status=1
done
echo "== image-check ($("$V/bin/python" -c 'import sys, torch, triton; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}")')):"
printf '%s' "$summary"
exit $status
