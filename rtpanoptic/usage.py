"""Errors a user can fix, and the checks of output locations made before any long work.

:class:`UsageError` carries a one-line message; the command line prints it and exits with
status 2.  :func:`prepare_output_dir` / :func:`prepare_output_file` create and probe an output
location up front, so a read-only folder or a file in the way is reported before training,
evaluation or a benchmark runs, not after its results are computed.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


class UsageError(Exception):
    """An error the user can fix; its message is one line."""


def prepare_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the folder ``path`` (with its parents) and check that files can be written in it.

    ``what`` names the setting in messages (e.g. ``"--output-dir"``).  Nothing existing is
    changed: the probe is a temporary file of our own, removed at once.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise UsageError(f"{what} {p} is not a writable folder ({exc.strerror or exc})") from None
    return p


def prepare_output_file(path: str | os.PathLike, what: str) -> Path:
    """Check that the file ``path`` can be written (its folder is created); it is not touched."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder, not a file")
    prepare_output_dir(p.parent, f"the folder of {what}")
    return p
