"""Fixtures shared by the in-process gateway tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.labels import LabelSet
from tests.integration.test_gateway import FakeTriton


@pytest.fixture
def labels_file(tmp_path: Path, label_names: list[str]) -> Path:
    path = tmp_path / "labels.json"
    LabelSet(label_names, [0.5] * 28, "test-v1").write(path)
    return path


@pytest.fixture
def fake(label_names: list[str]) -> FakeTriton:
    return FakeTriton(label_names)
