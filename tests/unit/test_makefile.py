"""The Makefile's benchmark targets install what the benchmarks import: on a fresh machine `make
bench-gateway` depended on `prepare` alone and stopped at `import httpx` (a dev/loadtest dependency)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def targets() -> dict[str, tuple[list[str], list[str]]]:
    """Each rule's prerequisites and recipe lines."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        rule = re.match(r"^([A-Za-z0-9_.\-]+):(?!=)\s*(.*)$", line)
        if rule:
            current = rule.group(1)
            rules[current] = (rule.group(2).split(), [])
        elif line.startswith("\t") and current:
            rules[current][1].append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None
    return rules


def test_every_target_that_runs_a_benchmark_installs_the_benchmark_dependencies():
    rules = targets()
    runs_loadtest = [t for t, (_, recipe) in rules.items() if any("-m loadtest" in r for r in recipe)]
    assert len(runs_loadtest) >= 8, runs_loadtest  # bench-*, soak, loadtest: the parse found them
    missing = [t for t in runs_loadtest if "install-dev" not in rules[t][0]]
    assert not missing, f"{missing} do not depend on install-dev (httpx, locust)"
