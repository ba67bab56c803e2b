"""The model manifest (contract/manifest.py) and the serving spec: identity, digest, one max_length."""

import dataclasses
import json
from pathlib import Path

import pytest

from contract.manifest import FileEntry, Manifest, ManifestError, VariantEntry
from contract.names import DEFAULT_MAX_LENGTH, GOEMOTIONS_LABELS, OUTPUT_LABELS
from contract.spec import ServingSpec, TensorRTProfile
from export.pipeline import MODEL_REPOSITORY
from export.training.data import load_label_names
from export.training.train import TrainConfig


def variant(**overrides) -> VariantEntry:
    fields = {
        "file": "model.int8.onnx",
        "sha256": "a" * 64,
        "size_bytes": 10,
        "precision": "int8",
        "execution": "batch",
        "thresholds": [0.3] * 28,
        "temperatures": [1.2] * 28,
        "quantization": {"mode": "static", "per_channel": True},
    }
    return VariantEntry(**{**fields, **overrides})


def manifest(**overrides) -> Manifest:
    fields = {
        "name": "student",
        "source": "/somewhere/build/models/student",
        "labels": list(GOEMOTIONS_LABELS),
        "input_names": ["input_ids", "attention_mask"],
        "max_length": 128,
        "tokenizer": {"tokenizer.json": FileEntry("tokenizer.json", "b" * 64, 5)},
        "onnx": FileEntry("model.onnx", "c" * 64, 7),
        "variants": {"int8": variant()},
    }
    return Manifest(**{**fields, **overrides})


def test_roundtrip_version_and_served_version(tmp_path: Path):
    m = manifest()
    m.write(tmp_path / "manifest.json")
    back = Manifest.read(tmp_path / "manifest.json")
    assert back == m
    assert m.version == f"student-{m.digest[:12]}"
    assert m.served_version("int8") == f"{m.version}-int8"
    with pytest.raises(ManifestError, match="variant 'fp16'"):
        m.served_version("fp16")
    # What the Triton python models read without this package: the same version string.
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == m.version


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 64},
        {"labels": [*GOEMOTIONS_LABELS[1:], GOEMOTIONS_LABELS[0]]},
        {"input_names": ["input_ids", "attention_mask", "token_type_ids"]},
        {"tokenizer": {"tokenizer.json": FileEntry("tokenizer.json", "d" * 64, 5)}},
        {"onnx": FileEntry("model.onnx", "e" * 64, 7)},
        {"variants": {"int8": variant(sha256="f" * 64)}},
        {"variants": {"int8": variant(quantization={"mode": "static", "per_channel": False})}},
        {"variants": {"int8": variant(execution="per_row")}},
        {"variants": {"int8": variant(thresholds=[0.31] + [0.3] * 27)}},
        {"variants": {"int8": variant(temperatures=[1.2] * 27 + [1.3])}},
        {"variants": {"int8": variant(), "fp16": variant(file="model.fp16.onnx", precision="fp16")}},
        {"name": "other"},
    ],
)
def test_digest_changes_with_every_answer_changing_field(change):
    assert manifest(**change).digest != manifest().digest


def test_digest_ignores_what_cannot_change_an_answer():
    assert manifest(source="SamLowe/elsewhere").digest == manifest().digest
    # Below the precision the manifest keeps, nothing served changes.
    assert manifest(variants={"int8": variant(temperatures=[1.2000001] * 28)}).digest == manifest().digest


def test_digest_follows_the_bytes_of_a_file(tmp_path: Path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"vocab": 1}')
    before = manifest(tokenizer={"tokenizer.json": FileEntry.of(path)})
    path.write_text('{"vocab": 2}')
    after = manifest(tokenizer={"tokenizer.json": FileEntry.of(path)})
    assert before.digest != after.digest
    assert after.mismatched_files(tmp_path, list(after.tokenizer.values())) == []
    assert before.mismatched_files(tmp_path, list(before.tokenizer.values())) == ["tokenizer.json"]


def test_hand_edits_and_old_schemas_are_refused(tmp_path: Path):
    m = manifest()
    data = m.to_json()
    data["variants"]["int8"]["thresholds"][0] = 0.9
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="digest does not match"):
        Manifest.read(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text(json.dumps({**m.to_json(), "schema": 1}))
    with pytest.raises(ManifestError, match="schema 1"):
        Manifest.read(tmp_path / "manifest.json")
    with pytest.raises(ManifestError, match="missing"):
        Manifest.read(tmp_path / "nothing.json")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"thresholds": [0.0] * 28}, "strictly between"),
        ({"temperatures": [float("nan")] * 28}, "finite"),
        ({"execution": "sometimes"}, "execution must be"),
        ({"thresholds": [0.5]}, "thresholds but"),
    ],
)
def test_variant_entries_are_validated(bad, message):
    with pytest.raises(ManifestError, match=message):
        variant(**bad)


def test_one_max_length_for_training_export_and_serving():
    spec = ServingSpec.read(MODEL_REPOSITORY / "spec.json")
    assert spec.max_length == DEFAULT_MAX_LENGTH == TrainConfig().max_length
    assert list(GOEMOTIONS_LABELS) == load_label_names() == spec.labels[:28]
    assert tuple(spec.labels) in OUTPUT_LABELS  # the committed spec serves the student's 28 + signals
    assert dataclasses.fields(ServingSpec)  # the spec has no labels file any more
    assert "labels_file" not in json.loads((MODEL_REPOSITORY / "spec.json").read_text())


def test_tensorrt_profile_shapes_and_validation():
    profile = TensorRTProfile(min_batch=1, opt_batch=8, max_batch=32, min_seq=1, opt_seq=32, max_seq=128)
    shapes = profile.shapes(["input_ids", "attention_mask"])
    assert shapes == {
        "min": "input_ids:1x1,attention_mask:1x1",
        "opt": "input_ids:8x32,attention_mask:8x32",
        "max": "input_ids:32x128,attention_mask:32x128",
    }
    with pytest.raises(ValueError, match="min_batch <= opt_batch"):
        TensorRTProfile(opt_batch=64)
    with pytest.raises(ValueError, match="min_seq <= opt_seq"):
        TensorRTProfile(min_seq=0)


def test_spec_roundtrip_and_consistency(tmp_path: Path, label_names: list[str]):
    spec = ServingSpec(input_names=["input_ids", "attention_mask"], max_length=128, labels=label_names)
    spec.write(tmp_path / "spec.json")
    assert ServingSpec.read(tmp_path / "spec.json") == spec
    assert spec.num_labels == 28
    with pytest.raises(ValueError, match="max_seq"):
        ServingSpec(input_names=[], max_length=512, labels=label_names)
    with pytest.raises(ValueError, match="max_batch"):
        ServingSpec(input_names=[], max_length=64, labels=label_names, max_batch_size=64)


def test_spec_for_another_model_keeps_serving_settings(label_names: list[str]):
    spec = ServingSpec(
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        max_length=128,
        labels=label_names,
        cpu_instances=3,
    )
    roberta = spec.for_model(["input_ids", "attention_mask"], 256, label_names)
    assert roberta.input_names == ["input_ids", "attention_mask"]
    assert roberta.cpu_instances == 3
    assert roberta.tensorrt.max_seq == 256  # the profile grows with the model's max length
