"""Mutation check: the same wrong rule applied everywhere at once must fail a test.

A parity test (a backend against the reference) cannot see a rule changed in the reference and the
kernels together; only a test with an independent, hand-computed expectation can.  Each mutation
below is such a change -- text substitutions in the Python reference and the Triton kernels (and the
pipeline or evaluation code that has no second implementation) -- applied to a temporary copy of this
tree; the tests that pin the rule run there, and the mutation must be *killed* (a test fails).

The C++ sources are not mutated: that needs a rebuild of the extension in the copy (minutes per
mutation on a small machine).  The cpp parametrisations are deselected instead, so a mutation can
only be killed by the reference or Triton cases, never by a cpp case that still follows the old rule.

Usage: ``python tests/mutation_check.py`` (``make mutation-check``) runs every mutation against this
tree's tests; ``--tests-from main`` takes ``tests/`` from a git revision instead (the "before" of a
change to the tests); ``--only NAME`` runs one mutation.  Exit status 1 if a mutation survives.
Runs Triton through its interpreter (TRITON_INTERPRET=1) and needs the built extension
(rtpanoptic/_C*.so) in this tree.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_CPP = "not cpp and not cuda"
PIPELINE_TESTS = ("tests/test_pipeline_hand_built.py", "tests/test_inference.py", "tests/test_mask_mode.py",
                  "tests/test_postprocess_fused.py")


@dataclass(frozen=True)
class Mutation:
    """``edits``: ``(path, old, new)`` text substitutions (every occurrence; each must occur), applied
    together; ``tests``: the test files that pin the rule; ``select``: their pytest ``-k`` expression."""

    name: str
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...]
    select: str = NOT_CPP


REF, GRID, RELEASE = "rtpanoptic/ops/reference.py", "kernels/panoptic_from_dense.py", "kernels/panoptic_from_dense_release.py"
# the panoptic ops' tests with hand-computed expectations (their parity tests compare two mutated
# implementations, and the random ones run long in the interpreter)
PANOPTIC_TESTS = ("tests/ops/test_panoptic.py", "tests/ops/test_panoptic_release.py")
HAND_BUILT = (f"({NOT_CPP}) and (two_things or order_overlap or sigma_controls or stuff_area_limit"
              " or threshold_is_strict or no_queries_is_stuff or hand_computed or small_plane or at_equality)")

MUTATIONS = (
    Mutation("stuff kept if area > limit (was >=)", (
        (REF, "if area == 0 or area < stuff_area_limit:", "if area == 0 or area <= stuff_area_limit:"),
        (GRID, "(stuff_area >= stuff_area_limit)", "(stuff_area > stuff_area_limit)"),
    ), PANOPTIC_TESTS, HAND_BUILT),
    Mutation("release masks > sigma (was >=)", (
        (REF, "masks = up[:, :height, :width] >= sigma", "masks = up[:, :height, :width] > sigma"),
        (RELEASE, "(v - margin >= sigma)", "(v - margin > sigma)"),
        (RELEASE, "(v + margin < sigma)", "(v + margin <= sigma)"),
        (RELEASE, "(v00 >= sigma)", "(v00 > sigma)"),
        (RELEASE, "(value >= sigma)", "(value > sigma)"),
    ), PANOPTIC_TESTS, HAND_BUILT),
    Mutation("grid masks >= sigma (was >)", (
        (REF, "_upcast(sem_probs)[query_classes] > sigma", "_upcast(sem_probs)[query_classes] >= sigma"),
        (GRID, "(s * sem > sigma)", "(s * sem >= sigma)"),
    ), PANOPTIC_TESTS, HAND_BUILT),
    Mutation("overlap: skipped at ratio >= threshold (was >)", (
        (REF, "(area - free_area) / area > overlap_threshold", "(area - free_area) / area >= overlap_threshold"),
        (GRID, "(ratio <= overlap_threshold)", "(ratio < overlap_threshold)"),
        (RELEASE, "(ratio <= overlap_threshold)", "(ratio < overlap_threshold)"),
    ), PANOPTIC_TESTS, HAND_BUILT),
    Mutation("score threshold: dropped at score <= threshold (was <)", (
        (REF, "query_scores[j].item() < score_threshold", "query_scores[j].item() <= score_threshold"),
        (GRID, "query_scores[order].double() < score_threshold", "query_scores[order].double() <= score_threshold"),
        (RELEASE, "query_scores[order].double() < score_threshold",
         "query_scores[order].double() <= score_threshold"),
    ), PANOPTIC_TESTS, HAND_BUILT),
    Mutation("TRI epsilon 1e-6 (was 1e-7)", (
        (REF, "TRI_EPS = 1e-7", "TRI_EPS = 1e-6"),
    ), ("tests/ops/test_attention.py",), f"({NOT_CPP}) and hand_computed"),
    Mutation("semantic_probs: align_corners=True", (
        ("rtpanoptic/ops/upsample.py",
         'return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False).softmax(dim=1)',
         'return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True).softmax(dim=1)'),
    ), (*PIPELINE_TESTS, "tests/test_semantic_probs.py"), "not cuda"),
    Mutation("release mode without its padding cell", (
        ("rtpanoptic/inference.py", "hr, wr = min(hv + 1, dense.shape[-2]), min(wv + 1, dense.shape[-1])",
         "hr, wr = hv, wv"),
    ), PIPELINE_TESTS, "not cuda"),
    Mutation("segment_stats: the corner cell's term of the grid area left out", (
        ("rtpanoptic/inference.py", "- a * (stride * last_row - b * corner)",
         "- a * stride * last_row"),
    ), ("tests/test_segment_stats_grid.py",), "not cuda"),
    Mutation("PQ: the first crowd region of a class (was the last)", (
        ("rtpanoptic/evaluation/panoptic_quality.py", "        crowd_of_cat[g_cat[g]] = g\n",
         "        crowd_of_cat[g_cat[g]] = g if crowd_of_cat[g_cat[g]] < 0 else crowd_of_cat[g_cat[g]]\n"),
    ), ("tests/evaluation/test_panoptic_quality.py",), "not cuda"),
)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def copy_tree(dest: Path, tests_from: str | None) -> None:
    """This tree's tracked and untracked-but-not-ignored files as they are now, the built extension,
    and, with ``tests_from``, ``tests/`` of that git revision instead of this tree's."""
    files = _git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    files += [str(p.relative_to(ROOT)) for p in (ROOT / "rtpanoptic").glob("_C*.so")]
    files += ["rtpanoptic/_build_info.json"] if (ROOT / "rtpanoptic/_build_info.json").exists() else []
    for name in filter(None, files):
        if tests_from and name.startswith("tests/"):
            continue
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if tests_from:
        archive = subprocess.run(["git", "archive", tests_from, "tests"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    # rtpanoptic.kernels is the top-level kernels/ (setup.py's package_dir): a link in a source tree
    (dest / "rtpanoptic" / "kernels").symlink_to(Path("..") / "kernels", target_is_directory=True)


def apply(tree: Path, mutation: Mutation) -> None:
    for path, old, new in mutation.edits:
        file = tree / path
        text = file.read_text()
        if old not in text:
            raise SystemExit(f"mutation {mutation.name!r}: {path} no longer contains {old!r}; update tests/mutation_check.py")
        file.write_text(text.replace(old, new))


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "TRITON_INTERPRET": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_the_copy(tree: Path) -> None:
    """The copy's rtpanoptic and Triton kernels are the ones imported there (not an installed or
    editable one), and the Triton backend is there (the interpreter)."""
    code = ("import rtpanoptic.kernels.panoptic_from_dense as k; from rtpanoptic import ops; "
            "print(k.__file__); print('triton' in ops.available_backends('cpu')['panoptic_from_dense'])")
    where, triton = subprocess.run([sys.executable, "-c", code], cwd=tree, env=_env(tree), check=True,
                                   capture_output=True, text=True).stdout.split()
    if not Path(where).is_relative_to(tree):
        raise SystemExit(f"the copy imports the kernels from {where}, not from {tree}: mutations would not apply")
    if triton != "True":
        raise SystemExit("no Triton backend on the CPU: install triton and set TRITON_INTERPRET=1")


def run_tests(tree: Path, mutation: Mutation, verbose: bool) -> tuple[str, float]:
    """``killed`` (a test failed), ``survived`` (all passed) or ``error: ...`` (nothing ran, or pytest broke)."""
    tests = [t for t in mutation.tests if (tree / t).exists()]
    if not tests:
        return "survived (no test file)", 0.0
    env = _env(tree)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k", mutation.select, *tests]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if verbose:
        print(done.stdout[-3000:], done.stderr[-2000:], sep="\n")
    if done.returncode == 1:
        return "killed", seconds
    if done.returncode == 0:
        return "survived", seconds
    if done.returncode == 5:
        return "survived (no test selected)", seconds
    return f"error: pytest exit status {done.returncode}: {done.stdout.strip().splitlines()[-1:]}", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests-from", metavar="REV", help="take tests/ from this git revision (e.g. main)")
    parser.add_argument("--only", metavar="NAME", help="run the mutations whose name contains NAME")
    parser.add_argument("--verbose", action="store_true", help="print the end of every pytest output")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or args.only in m.name]
    if not chosen:
        raise SystemExit(f"--only {args.only!r}: no mutation of that name")
    with tempfile.TemporaryDirectory(prefix="rtp-mutation-") as tmp:
        base = Path(tmp) / "base"
        copy_tree(base, args.tests_from)
        check_imports_the_copy(base)
        outcomes = []
        for mutation in chosen:
            tree = Path(tmp) / "tree"
            shutil.copytree(base, tree, symlinks=True)
            apply(tree, mutation)
            outcome, seconds = run_tests(tree, mutation, args.verbose)
            shutil.rmtree(tree)
            outcomes.append(outcome)
            print(f"{outcome:>10}  {seconds:6.1f} s  {mutation.name}", flush=True)
    survived = sum(o.startswith("survived") for o in outcomes)
    errors = sum(o.startswith("error") for o in outcomes)
    print(f"{len(outcomes)} mutations: {outcomes.count('killed')} killed, {survived} survived, {errors} errors")
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
