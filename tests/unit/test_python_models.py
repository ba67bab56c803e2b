"""The hand-written Triton python models (model_repository/*/1/model.py), run outside Triton with a stub
``triton_python_backend_utils``: the tokenizer against the export's own tokenizer, and the manifest
checks every model makes at load. (tests/e2e runs them inside a real tritonserver.)"""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contract.text
from contract.manifest import FileEntry, Manifest, VariantEntry
from export.training.train import base_model_path
from tests.support.python_backend import (
    ModelLoadError,
    StubError,
    StubTensor,
    initialize,
    install_stub,
    load_model_module,
)

TOKEN_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
MAX_LENGTH = 128


@pytest.fixture
def load_model(monkeypatch: pytest.MonkeyPatch):
    install_stub(monkeypatch)
    return load_model_module


def tokenizer_config(pad_to_multiple_of: int, max_length: int = MAX_LENGTH) -> dict[str, Any]:
    params = {"tokenizer_file": "tokenizer.json", "max_length": str(max_length)}
    params["pad_to_multiple_of"] = str(pad_to_multiple_of)
    return {
        "parameters": {k: {"string_value": v} for k, v in params.items()},
        "output": [{"name": n} for n in TOKEN_INPUTS],
    }


def manifest(tokenizer: dict[str, FileEntry], variant_file: FileEntry, labels: list[str]) -> Manifest:
    entry = VariantEntry(
        variant_file.file,
        variant_file.sha256,
        variant_file.size_bytes,
        "int8",
        "batch",
        [0.5] * len(labels),
        [1.0] * len(labels),
    )
    return Manifest(
        "tiny", "here", labels, TOKEN_INPUTS, MAX_LENGTH, tokenizer, variant_file, {"int8": entry}
    )


@pytest.fixture
def tokenizer_dir(tmp_path: Path, label_names: list[str]) -> Path:
    """A tokenizer version directory: the MiniLM tokenizer files and a manifest naming them."""
    version_dir = tmp_path / "tokenizer" / "1"
    version_dir.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy2(base_model_path() / name, version_dir / name)
    files = {
        name: FileEntry.of(version_dir / name)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
    }
    manifest(files, FileEntry("model.onnx", "0" * 64, 1), label_names).write(version_dir / "manifest.json")
    return version_dir


def texts_request(*texts: str | bytes) -> dict[str, StubTensor]:
    rows = np.array([t.encode() if isinstance(t, str) else t for t in texts], dtype=object).reshape(-1, 1)
    return {"TEXT": StubTensor("TEXT", rows)}


SHORT = ["Thanks!", "ok"]
LONG = [
    "I can't believe I finally solved it after three weeks of trying, thank you so much for the help " * 3
]


@pytest.mark.parametrize("multiple", [1, 16])
def test_each_request_gets_the_export_tokenizers_tensors_padded_to_its_own_longest_row(
    load_model, tokenizer_dir, multiple
):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)
    model = initialize(load_model("tokenizer"), tokenizer_dir, tokenizer_config(multiple))
    # Two requests executed together: the short one must not be padded to the long one's length.
    responses = model.execute([texts_request(*SHORT), texts_request(*LONG)])
    for texts, response in zip([SHORT, LONG], responses, strict=True):
        assert response.error is None
        want = reference(
            texts,
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            pad_to_multiple_of=multiple,
            return_tensors="np",
        )
        for name in TOKEN_INPUTS:
            assert response.outputs[name].dtype == np.int64
            np.testing.assert_array_equal(response.outputs[name], want[name], err_msg=name)
    short_width = responses[0].outputs["input_ids"].shape[1]
    assert short_width < responses[1].outputs["input_ids"].shape[1]
    assert short_width % multiple == 0
    assert responses[1].outputs["input_ids"].shape[1] <= max(MAX_LENGTH, multiple)
    alone = model.execute([texts_request(*SHORT)])[0]
    np.testing.assert_array_equal(alone.outputs["input_ids"], responses[0].outputs["input_ids"])


def test_a_bad_row_fails_only_its_own_request(load_model, tokenizer_dir):
    model = initialize(load_model("tokenizer"), tokenizer_dir, tokenizer_config(1))
    responses = model.execute(
        [texts_request("fine", b"\xff\xfe"), texts_request("fine too"), texts_request("ok", "  \t ")]
    )
    assert responses[0].error is not None and "not valid UTF-8" in responses[0].error.message
    assert responses[0].error.code == StubError.INVALID_ARG
    assert responses[1].error is None and responses[1].outputs["input_ids"].shape[0] == 1
    assert responses[2].error is not None and "row 1 is empty" in responses[2].error.message


def test_rows_are_normalised_like_the_gateways_cache_key(load_model, tokenizer_dir, monkeypatch):
    module = load_model("tokenizer")
    assert module.normalize is contract.text.normalize
    seen: list[str] = []
    monkeypatch.setattr(module, "normalize", lambda text: seen.append(text) or contract.text.normalize(text))
    model = initialize(module, tokenizer_dir, tokenizer_config(1))
    decomposed = unicodedata.normalize("NFD", "  Café déjà vu \n")
    response = model.execute([texts_request(decomposed, "plain")])[0]
    assert seen == [decomposed, "plain"]
    same = model.execute([texts_request("Café déjà vu", "plain")])[0]
    np.testing.assert_array_equal(response.outputs["input_ids"], same.outputs["input_ids"])


def test_the_tokenizer_refuses_files_or_a_max_length_its_manifest_does_not_name(load_model, tokenizer_dir):
    module = load_model("tokenizer")
    with pytest.raises(ModelLoadError, match="max_length 64 differs"):
        initialize(module, tokenizer_dir, tokenizer_config(1, max_length=64))
    with (tokenizer_dir / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ModelLoadError, match="differs from its manifest"):
        initialize(module, tokenizer_dir, tokenizer_config(1))
    data = json.loads((tokenizer_dir / "manifest.json").read_text())
    data["max_length"] = 64  # edited by hand: the digest no longer matches
    (tokenizer_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="digest does not match"):
        initialize(module, tokenizer_dir, tokenizer_config(1, max_length=64))


def test_the_classifier_refuses_weights_its_manifest_does_not_name(load_model, tmp_path, label_names):
    version_dir = tmp_path / "classifier" / "1"
    version_dir.mkdir(parents=True)
    weights = version_dir / "model.int8.onnx"
    weights.write_bytes(b"not the weights the manifest names")
    manifest({}, FileEntry("model.int8.onnx", "0" * 64, weights.stat().st_size), label_names).write(
        version_dir / "manifest.json"
    )
    config = {
        "parameters": {"variant": {"string_value": "int8"}},
        "input": [{"name": n} for n in TOKEN_INPUTS],
    }
    module = load_model("classifier")
    with pytest.raises(ModelLoadError, match=r"model\.int8\.onnx is missing or differs from its manifest"):
        initialize(module, version_dir, config)
    config["parameters"]["variant"]["string_value"] = "fp16"
    with pytest.raises(ModelLoadError, match="no variant 'fp16'"):
        initialize(module, version_dir, config)


def test_the_exports_classifier_normalises_texts_like_the_served_tokenizer():
    from export.packaging.runtime import Classifier

    seen: list[list[str]] = []

    def tokenizer(texts: list[str], **kwargs: Any) -> dict[str, Any]:
        seen.append(list(texts))
        ids = [[1] * len(t) for t in texts]
        if kwargs.get("return_tensors") == "np":
            width = max(map(len, ids))
            return {"input_ids": np.array([row + [0] * (width - len(row)) for row in ids])}
        return {"input_ids": ids}

    classifier = Classifier(
        tokenizer, ["input_ids"], 8, lambda feed: feed["input_ids"][:, :1].astype(np.float32)
    )
    decomposed = unicodedata.normalize("NFD", " Café \t")
    classifier.predict([decomposed, "ok"], batch_size=2)
    assert {t for batch_texts in seen for t in batch_texts} == {"Café", "ok"}
