"""Triton's interpreter (``TRITON_INTERPRET=1``) on numpy >= 2.4, for Triton < 3.8.

The interpreter holds every scalar as a one-element numpy array and converts it to a Python int
with ``int(array)`` when a kernel writes ``range(n)`` with a runtime ``n`` (``__index__`` of its
tensor).  numpy 2.4 made ``int()`` of a non-0-d array an error ("only 0-dimensional arrays can be
converted to Python scalars"), so on Triton 3.6 every such loop fails under the interpreter;
Triton 3.8 converts ``array.squeeze()`` instead.  :func:`install` makes the older interpreters do
what 3.8 does.  It changes nothing else, and nothing at all for compiled (GPU) kernels, which
never run this code.
"""
from __future__ import annotations

import re

FIXED_IN = (3, 8)  # the first Triton whose interpreter converts scalars with squeeze()


def _version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string (``"3.6.0+git..."`` -> ``(3, 6)``; a missing minor is 0)."""
    major, minor = ([int(x) for x in re.findall(r"\d+", text)[:2]] + [0])[:2]
    return major, minor


def needed(triton_version: str) -> bool:
    """Whether the interpreter of ``triton_version`` needs the shim (it converts with ``int()``)."""
    return _version(triton_version) < FIXED_IN


def _index(self) -> int:
    # A scalar's data is a one-element array of any rank: item() is its value (as 3.8's squeeze()),
    # and a block of several elements still fails, as int() would.
    return int(self.handle.data.item())


def install() -> bool:
    """Patch this process's Triton interpreter when :func:`needed`; returns whether it is patched.
    Idempotent."""
    import triton
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or not needed(triton.__version__):
        return False
    if getattr(original, "rtpanoptic_index_shim", False):
        return True

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    patch_lang_tensor.rtpanoptic_index_shim = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
