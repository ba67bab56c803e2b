"""Shared fixtures: tiny random-init models with the real MiniLM tokenizer, and a small data dir."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from export.training.data import DATA_DIR, SPLITS, load_label_names
from tests.support.models import build_tiny_model

TINY_LINES = 120


@pytest.fixture(scope="session")
def label_names() -> list[str]:
    return load_label_names()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, label_names: list[str]) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", label_names)


@pytest.fixture(scope="session")
def tiny_signal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with the learning signals after the 28 labels (what the offline student is)."""
    from contract.names import WITH_LEARNING_SIGNALS

    return build_tiny_model(tmp_path_factory.mktemp("tiny-signals") / "model", list(WITH_LEARNING_SIGNALS))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first lines of each vendored split (real texts, real format traps) in a temp dir."""
    target = tmp_path_factory.mktemp("data")
    shutil.copy(DATA_DIR / "emotions.txt", target / "emotions.txt")
    for split in SPLITS:
        with (DATA_DIR / f"{split}.tsv").open(encoding="utf-8") as src:
            lines = [next(src) for _ in range(TINY_LINES)]
        (target / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return target
