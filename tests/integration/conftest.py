"""Fixtures shared by the in-process gateway tests."""

from __future__ import annotations

import pytest

from tests.support.fake_triton import FakeTriton


@pytest.fixture
def fake(label_names: list[str]) -> FakeTriton:
    return FakeTriton(label_names)
