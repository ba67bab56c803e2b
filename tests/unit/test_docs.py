"""The README stays short and every page it leads to exists: relative links and #anchors resolve; a
benchmark target leaves the committed multi-seed reports alone."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(path: Path) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in prose(path):
        if m := re.match(r"^#+\s+(.*)", line):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def broken_links(page: Path) -> list[str]:
    bad = []
    for link in LINK.findall("\n".join(prose(page))):
        if re.match(r"^[a-z]+://", link) or link.startswith("mailto:"):
            continue
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            bad.append(f"{link} (no such file)")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            bad.append(f"{link} (no such heading)")
    return bad


def test_readme_is_short_and_leads_to_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    linked = {Path(link.partition("#")[0]).name for link in LINK.findall(readme)}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_is_seen(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title here\n[ok](a.md#title-here) [gone](b.md) [x](a.md#nope)\n")
    assert broken_links(tmp_path / "a.md") == ["b.md (no such file)", "a.md#nope (no such heading)"]


def test_bench_model_leaves_the_committed_learner_gap_report_alone() -> None:
    """results/learner_gap.md is the multi-seed report (docs/performance.md has its command): `make
    bench-model` writes its one-model learner-gap run elsewhere, or a benchmark would overwrite it."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        ["make", "-n", "bench-model"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    runs = [line for line in dry.splitlines() if "-m export learner-gap" in line]
    assert runs, dry
    for line in runs:
        out = re.search(r"--out\s+(\S+)", line)
        assert out is not None and Path(out.group(1)).parts[0] != "results", line  # results/ is committed
