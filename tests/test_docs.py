"""The documents' internal links: every relative link of README.md, docs/*.md and
benchmarks/RESULTS.md names a file of the repository and, with ``#anchor``, a heading of it
(anchors as GitHub makes them from headings)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to
    ``-``, a repeated anchor numbered ``-1``, ``-2``..."""
    out: set[str] = set()
    for line in _FENCE.sub("", markdown).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        base, n = slug, 0
        while slug in out:
            n += 1
            slug = f"{base}-{n}"
        out.add(slug)
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` (outside code blocks) whose file or heading does not exist."""
    bad = []
    for target in _LINK.findall(_FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text())):
            bad.append(target)
    return bad


def test_anchors_follow_github():
    text = "# The demo: `make demo` = `rtpanoptic demo`\n## A, b\n## A, b\n```\n# not a heading\n```\n"
    assert anchors(text) == {"the-demo-make-demo--rtpanoptic-demo", "a-b", "a-b-1"}


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "b.md").write_text("## Part two\n")
    (tmp_path / "a.md").write_text("# Top\n[ok](#top) [bad](#nowhere) [gone](c.md) [web](https://x.org/#y)\n"
                                   "[there](b.md#part-two) [not there](b.md#part-three)\n")
    assert broken_links(tmp_path / "a.md") == ["#nowhere", "c.md", "b.md#part-three"]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_internal_links_resolve(path):
    assert broken_links(path) == []


def test_readme_stays_short():
    # The README is the set-up commands, what the library is, the ops table and a tour; the rest is in docs/.
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
