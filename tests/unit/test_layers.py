"""Layer rules for the code import-linter cannot see: the python-backend models are files in Triton's
directory layout, not a package. The package rules are in pyproject.toml ([tool.importlinter]) and run
in `make lint`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "model_repository").glob("*/1/model.py"))
# What a Triton python model may use: the serving contract and its runtime libraries (the torch runtime
# for the embedded GPU configuration), never the training/packaging code (it is not in the Triton image)
# nor the gateway.
ALLOWED = {
    "contract",
    "numpy",
    "tokenizers",
    "onnxruntime",
    "torch",
    "torch_classifier",
    "triton_python_backend_utils",
}


def top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - {"__future__"}


def test_every_python_backend_model_is_checked() -> None:
    assert {p.parent.parent.name for p in MODELS} == {"tokenizer", "classifier", "postprocess"}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.parent.parent.name)
def test_python_backend_models_import_only_the_contract_and_runtimes(path: Path) -> None:
    outside = top_level_imports(path) - ALLOWED - set(sys.stdlib_module_names)
    assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "model.py"
    bad.write_text("import json\nfrom export.training import train\nimport gateway.app\n")
    assert top_level_imports(bad) - ALLOWED - set(sys.stdlib_module_names) == {"export", "gateway"}


TRAINING_ONLY = (
    "torch",
    "transformers",
    "optimum",
    "onnx",
    "onnxruntime",
    "tokenizers",
    "safetensors",
    "export",
)
IMPORT_EVERY_GATEWAY_MODULE = """
import importlib, importlib.abc, pkgutil, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"training-only module imported: {name}")
import gateway
sys.meta_path.insert(0, Block())
for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
    importlib.import_module(info.name)
from gateway.app import create_app
from gateway.settings import Settings
assert create_app(Settings()).openapi()["paths"]
"""


def test_the_gateway_runs_without_the_training_dependencies() -> None:
    """What the gateway image has (no torch, no ONNX, no export code) is enough to import every gateway
    module and build the app."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_GATEWAY_MODULE, ",".join(TRAINING_ONLY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
