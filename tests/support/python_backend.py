"""Run the hand-written Triton python models (model_repository/*/1/model.py) outside Triton, with a stub
``triton_python_backend_utils`` that has just what they use."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODELS = Path(__file__).resolve().parents[2] / "model_repository"


class StubTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class StubError:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.message, self.code = message, code


class StubResponse:
    def __init__(
        self, output_tensors: list[StubTensor] | None = None, error: StubError | None = None
    ) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


class ModelLoadError(RuntimeError):
    pass


def install_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = types.ModuleType("triton_python_backend_utils")
    stub.Tensor = StubTensor  # type: ignore[attr-defined]
    stub.TritonError = StubError  # type: ignore[attr-defined]
    stub.InferenceResponse = StubResponse  # type: ignore[attr-defined]
    stub.TritonModelException = ModelLoadError  # type: ignore[attr-defined]
    stub.get_input_tensor_by_name = lambda request, name: request[name]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)


def load_model_module(model: str) -> types.ModuleType:
    """``model_repository/<model>/1/model.py`` as a module (install the stub first)."""
    spec = importlib.util.spec_from_file_location(f"{model}_model", MODELS / model / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def initialize(module: types.ModuleType, version_dir: Path, config: dict[str, Any]) -> Any:
    """The model's TritonPythonModel, initialised as Triton would for ``version_dir``."""
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(version_dir.parent),
            "model_version": version_dir.name,
        }
    )
    return model
