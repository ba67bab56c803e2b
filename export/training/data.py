"""GoEmotions data: load and validate the vendored train/dev/test splits.

Format (see data/goemotions/README.md): no header, ``text<TAB>label ids<TAB>comment id``;
some texts are CSV-quoted with doubled quotes, so rows are read with ``csv`` and unquoted the way
Hugging Face ``datasets`` does. ``emotions.txt`` has no final newline; it must name the labels of
``contract.names.GOEMOTIONS_LABELS`` in that order (the model's output order every stage reads).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.names import GOEMOTIONS_LABELS
from export.arrays import Array

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "goemotions"
SPLITS = ("train", "dev", "test")
NUM_LABELS = len(GOEMOTIONS_LABELS)
# Records per split in the published rater-agreement split; a different count means a wrong or
# truncated file. Only enforced for the vendored copy (custom data dirs may be subsets).
EXPECTED_RECORDS = {"train": 43_410, "dev": 5_426, "test": 5_427}


class DataError(ValueError):
    """A GoEmotions file is missing or malformed; the message says which file and line."""


@dataclass(frozen=True)
class Split:
    name: str
    texts: list[str]
    labels: Array  # (n, 28) float32 multi-hot
    ids: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def load_label_names(data_dir: Path = DATA_DIR) -> list[str]:
    path = data_dir / "emotions.txt"
    if not path.is_file():
        raise DataError(f"{path}: missing (expected the {NUM_LABELS} GoEmotions label names, one per line)")
    names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
    if len(names) != NUM_LABELS:
        raise DataError(f"{path}: expected {NUM_LABELS} labels, found {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate label names")
    for line, (name, expected) in enumerate(zip(names, GOEMOTIONS_LABELS, strict=True), start=1):
        if name != expected:
            raise DataError(
                f"{path}: label {line} is {name!r}, expected {expected!r}: the labels and their order "
                "must be contract.names.GOEMOTIONS_LABELS (the model's output order every stage reads)"
            )
    return names


def load_split(name: str, data_dir: Path = DATA_DIR, expected_records: int | None = None) -> Split:
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    path = data_dir / f"{name}.tsv"
    if not path.is_file():
        raise DataError(f"{path}: missing (expected GoEmotions {name}.tsv)")
    texts: list[str] = []
    ids: list[str] = []
    rows: list[list[int]] = []
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if len(row) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, found {len(row)}")
            text, label_field, comment_id = row
            if not text.strip():
                raise DataError(f"{path}:{lineno}: empty text")
            try:
                label_ids = [int(x) for x in label_field.split(",")]
            except ValueError:
                raise DataError(f"{path}:{lineno}: label ids must be integers, got {label_field!r}") from None
            bad = [i for i in label_ids if not 0 <= i < NUM_LABELS]
            if bad:
                raise DataError(f"{path}:{lineno}: label id(s) {bad} outside 0..{NUM_LABELS - 1}")
            texts.append(text)
            rows.append(label_ids)
            ids.append(comment_id)
    if expected_records is not None and len(texts) != expected_records:
        raise DataError(
            f"{path}: expected {expected_records} records, found {len(texts)} (truncated or wrong file?)"
        )
    labels = np.zeros((len(rows), NUM_LABELS), dtype=np.float32)
    for i, label_ids in enumerate(rows):
        labels[i, label_ids] = 1.0
    log.debug("loaded %s: %d records", path, len(texts))
    return Split(name=name, texts=texts, labels=labels, ids=ids)


def load_dataset(data_dir: Path = DATA_DIR) -> tuple[list[str], dict[str, Split]]:
    """Label names and all three splits; record counts are enforced for the vendored copy."""
    vendored = data_dir.resolve() == DATA_DIR
    names = load_label_names(data_dir)
    splits = {s: load_split(s, data_dir, EXPECTED_RECORDS[s] if vendored else None) for s in SPLITS}
    return names, splits
