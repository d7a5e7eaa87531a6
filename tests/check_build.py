"""Exit status 1 (one line on stderr) when ``rtpanoptic._C`` was not built or does not load, or
when ``FORCE_CUDA=1`` and an op has no CUDA kernel registered (checked without a GPU).

``make test`` runs it before pytest: otherwise a broken build would pass as a run in which the
C++/CUDA tests merely skip.  Not a pytest module (tests/test_check_build.py tests it).
"""
from __future__ import annotations

import os
import sys


def problems(force_cuda: bool) -> list[str]:
    """What is wrong with the installed build (empty when nothing)."""
    from rtpanoptic import _extension, ops

    if not _extension.load():
        return [_extension.load_error() or "rtpanoptic._C did not load"]
    built = ops.available_backends()
    found = []
    for backend, wanted in (("cpp", True), ("cuda", force_cuda)):
        missing = [op for op in ops.OPS
                   if wanted and backend in ops.registry.ROWS[op].backends and backend not in built[op]]
        if missing:
            found.append(f"no {backend} kernel registered for {', '.join(missing)}")
    return found


def main() -> int:
    force_cuda = os.environ.get("FORCE_CUDA") == "1"
    found = problems(force_cuda)
    if found:
        print(f"check_build: {'; '.join(found)}", file=sys.stderr)
        return 1
    print(f"check_build: rtpanoptic._C loads with the C++{' and CUDA' if force_cuda else ''} kernels of every op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
