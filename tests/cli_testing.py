"""Running the command line in-process from the tests (``pythonpath = ["tests"]`` in pyproject.toml
makes this importable as ``cli_testing``)."""
from __future__ import annotations

from rtpanoptic.cli import main


def exit_code(argv) -> int:
    """``rtpanoptic ARGV`` in this process: its exit status (argparse's SystemExit included)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        return exc.code


def one_line_error(capsys, argv, *matches) -> str:
    """Exit status 2 and exactly one line on stderr (no traceback) holding every match; returns it."""
    capsys.readouterr()
    rc = exit_code(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for m in matches:
        assert str(m) in err, (m, err)
    return err
