"""Hand-written learner sets for tests: a ``*.tsv`` in the learner-set format, and group names that land
in a chosen split."""

from __future__ import annotations

from pathlib import Path

from export.training.learner_data import COLUMNS, split_of

HEADER = "\t".join(COLUMNS) + "\n"


def write_learner_set(directory: Path, *rows: str, header: str = HEADER) -> Path:
    """``rows`` (tab-separated, without the header) as ``directory/part.tsv``; returns ``directory``."""
    (directory / "part.tsv").write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return directory


def group_in(split: str, start: int = 0) -> str:
    """The first group name ``grp-N`` (N >= ``start``) that ``split_of`` puts in ``split``."""
    return next(f"grp-{i}" for i in range(start, 1000) if split_of(f"grp-{i}") == split)
