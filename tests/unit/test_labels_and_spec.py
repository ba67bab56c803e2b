import json
from pathlib import Path

import pytest

from export.labels import LabelSet, LabelsFileError, model_version, read_labels
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


def test_labels_file_roundtrip_with_temperatures_and_calibration(tmp_path: Path, label_names: list[str]):
    temperatures = [0.5 + i / 10 for i in range(28)]
    block = {"method": "per-label", "fitted_on": "dev", "ece_before": 0.04, "ece_after": 0.01}
    LabelSet(label_names, [0.5] * 28, "v2", temperatures=temperatures, calibration=block).write(
        tmp_path / "labels.json"
    )
    data = json.loads((tmp_path / "labels.json").read_text())
    assert data["labels"][3]["temperature"] == pytest.approx(0.8)
    assert data["calibration"] == block
    back = read_labels(tmp_path / "labels.json")
    assert back.temperatures == pytest.approx(temperatures)
    assert back.calibration == block


def test_labels_file_without_temperatures_reads_as_one(tmp_path: Path, label_names: list[str]):
    old = {
        "model_version": "student-5719d5850fb3",
        "activation": "sigmoid",
        "tuned_on": "dev",
        "labels": [{"id": i, "name": n, "threshold": 0.4} for i, n in enumerate(label_names)],
    }
    (tmp_path / "labels.json").write_text(json.dumps(old))
    labels = read_labels(tmp_path / "labels.json")
    assert labels.temperatures == [1.0] * 28
    assert labels.calibration is None
    assert labels == LabelSet(label_names, [0.4] * 28, "student-5719d5850fb3")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_finite_and_positive(tmp_path: Path, label_names: list[str], bad: float):
    with pytest.raises(LabelsFileError, match="temperatures must be finite and greater than 0"):
        LabelSet(label_names, [0.5] * 28, "v", temperatures=[1.0] * 27 + [bad])
    with pytest.raises(LabelsFileError, match="28 labels but 2 temperatures"):
        LabelSet(label_names, [0.5] * 28, "v", temperatures=[1.0, 2.0])
    data = LabelSet(label_names, [0.5] * 28, "v").to_json()
    data["labels"][5]["temperature"] = "hot"
    (tmp_path / "labels.json").write_text(json.dumps(data))
    with pytest.raises(LabelsFileError, match="could not convert string to float"):
        read_labels(tmp_path / "labels.json")
    data["labels"][5]["temperature"] = 1.0
    data["calibration"] = "per-label"
    (tmp_path / "labels.json").write_text(json.dumps(data))
    with pytest.raises(LabelsFileError, match="'calibration' must be an object"):
        read_labels(tmp_path / "labels.json")


def test_model_version_changes_with_weights_thresholds_and_temperatures():
    thresholds, temperatures = [0.3] * 28, [1.0] * 28
    base = model_version("student", "abc123", thresholds, temperatures)
    assert base.startswith("student-") and len(base) == len("student-") + 12
    assert model_version("student", "abc123", list(thresholds), list(temperatures)) == base  # stable
    assert model_version("student", "abc124", thresholds, temperatures) != base
    assert model_version("student", "abc123", [0.31, *thresholds[1:]], temperatures) != base
    assert model_version("student", "abc123", thresholds, [*temperatures[:-1], 1.5]) != base
    # Below the precision the labels file keeps, nothing served changes, so neither does the version.
    assert model_version("student", "abc123", thresholds, [1.00001, *temperatures[1:]]) == base


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
