import json
from pathlib import Path

import pytest

from export.labels import LabelSet, LabelsFileError, read_labels
from export.spec import Manifest, ServingSpec, TensorRTProfile, VariantFile


def test_labels_file_roundtrip(tmp_path: Path, label_names: list[str]):
    thresholds = [0.05 + i / 40 for i in range(28)]
    LabelSet(label_names, thresholds, "v1").write(tmp_path / "labels.json")
    data = json.loads((tmp_path / "labels.json").read_text())
    assert data["activation"] == "sigmoid"
    assert data["labels"][27] == {"id": 27, "name": "neutral", "threshold": pytest.approx(thresholds[27])}
    back = read_labels(tmp_path / "labels.json")
    assert back.names == label_names
    assert back.thresholds == pytest.approx(thresholds, abs=1e-4)
    assert back.model_version == "v1"


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, float("nan")])
def test_threshold_out_of_range_rejected(label_names: list[str], bad: float):
    with pytest.raises(LabelsFileError, match="strictly between 0 and 1"):
        LabelSet(label_names, [0.5] * 27 + [bad], "v1")


def test_labels_file_errors(tmp_path: Path, label_names: list[str]):
    with pytest.raises(LabelsFileError, match="missing"):
        read_labels(tmp_path / "labels.json")
    (tmp_path / "labels.json").write_text("{not json")
    with pytest.raises(LabelsFileError, match="not valid JSON"):
        read_labels(tmp_path / "labels.json")
    (tmp_path / "labels.json").write_text(
        json.dumps({"model_version": "v", "labels": [{"id": 1, "name": "a"}]})
    )
    with pytest.raises(LabelsFileError, match="without gaps"):
        read_labels(tmp_path / "labels.json")
    with pytest.raises(LabelsFileError, match="thresholds"):
        LabelSet(label_names, [0.5], "v")


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


def test_manifest_roundtrip(tmp_path: Path):
    manifest = Manifest("org/model", "model-abc", {"int8": VariantFile("model.int8.onnx", "abc", 10)})
    manifest.write(tmp_path / "manifest.json")
    assert Manifest.read(tmp_path / "manifest.json") == manifest
