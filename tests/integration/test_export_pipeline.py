"""Export of a tiny random-init model end to end: optimum ONNX, variants, gates, thresholds, install."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.calibration import calibrated_probabilities
from export.data import load_dataset
from export.gates import GateFailed
from export.labels import read_labels
from export.metrics import f1_scores
from export.pipeline import ExportOptions, export_model, install, read_installed
from export.repository import stale_configs
from export.runtime import load_tokenizer, onnx_classifier, torch_classifier
from export.spec import Manifest, ServingSpec
from tests.conftest import build_tiny_model

# Random weights: accuracy is meaningless, so the accuracy criteria are opened up (calibration's F1
# criterion too: the random logits push temperatures to their bounds); parity and ECE stay strict.
LOOSE = ExportOptions(eval_limit=100, max_macro_f1_drop=1.0, min_macro_f1=0.0, max_calibration_f1_drop=1.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model: Path, tiny_data: Path) -> tuple[Path, Manifest, ServingSpec]:
    out = tmp_path_factory.mktemp("export")
    manifest = export_model(str(tiny_model), out, LOOSE, tiny_data)
    return out, manifest, ServingSpec.read(out / "spec.json")


def test_every_variant_written_with_named_dynamic_io(exported):
    out, manifest, spec = exported
    assert set(manifest.variants) == {"raw", "fp32", "fp16", "int8"}
    # BERT has token_type_ids; they are kept because the model has them.
    assert spec.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    for variant in manifest.variants.values():
        session = ort.InferenceSession(str(out / variant.file), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == spec.input_names
        assert [o.name for o in session.get_outputs()] == ["logits"]
        for i in session.get_inputs():
            assert all(isinstance(d, str) for d in i.shape), (
                f"{variant.file} {i.name} has fixed dims {i.shape}"
            )
            assert i.type == "tensor(int64)"
        assert session.get_outputs()[0].type == "tensor(float)"  # FP16 keeps FP32 I/O


def test_variants_have_the_intended_graphs(exported):
    out, manifest, _ = exported
    ops = {
        name: {n.op_type for n in onnx.load(str(out / v.file)).graph.node}
        for name, v in manifest.variants.items()
    }
    assert "Attention" in ops["fp32"] or "MultiHeadAttention" in ops["fp32"]  # ORT fusions applied
    assert "Attention" not in ops["raw"]  # the TensorRT input stays standard ONNX
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops["int8"]
    fp16 = onnx.load(str(out / manifest.variants["fp16"].file))
    init_types = {i.data_type for i in fp16.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in init_types
    # normalization stays FP32: every LayerNorm-type node's scale is an FP32 initializer
    inits = {i.name: i.data_type for i in fp16.graph.initializer}
    norm_nodes = [n for n in fp16.graph.node if "LayerNormalization" in n.op_type]
    assert norm_nodes
    for node in norm_nodes:
        scales = [inits[x] for x in node.input if x in inits]
        assert scales and all(t == onnx.TensorProto.FLOAT for t in scales), node.name


def test_variants_match_torch_on_dynamic_shapes(exported, tiny_model):
    out, manifest, spec = exported
    tok = load_tokenizer(out)
    texts = ["I love this!", "This is confusing and I am annoyed, why does it never work " * 3, "ok"]
    ref = torch_classifier(str(tiny_model), tok, spec.input_names).logits(texts)
    got = onnx_classifier(out / manifest.variants["fp32"].file, tok).logits(texts)
    assert ref.shape == (3, 28)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_reports_labels_and_spec_written(exported, label_names):
    out, manifest, spec = exported
    parity = json.loads((out / "reports" / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["results"]["fp32"]["max_abs_logit_diff"] < 1e-4
    assert parity["results"]["int8"]["samples"] == 120  # the whole (tiny) test split: sample capped
    accuracy = json.loads((out / "reports" / "accuracy.json").read_text())
    assert set(accuracy["results"]) >= {"torch", "raw", "fp32", "fp16", "int8"}
    labels = read_labels(out / "labels.json")
    assert labels.names == label_names
    assert labels.model_version == manifest.model_version
    assert len(set(labels.thresholds)) > 1  # tuned per label, not one global cut
    assert Manifest.read(out / "manifest.json") == manifest
    assert spec.labels == label_names and spec.max_length == 128


def test_calibration_fitted_reported_and_written_to_the_labels_file(exported, tiny_model, tiny_data):
    out, manifest, spec = exported
    report = json.loads((out / "reports" / "calibration.json").read_text())
    assert report["passed"] is True
    results = report["results"]
    assert results["method"] == "per-label" and results["fitted_on"] == "dev"
    assert results["ece_after"] <= results["ece_before"]
    assert set(results["per_label"]) == set(spec.labels)
    assert sum(results["reliability_before"]["counts"]) == 100 * 28  # every (text, label) pair of test
    png = (out / "reports" / "reliability.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    labels = read_labels(out / "labels.json")
    assert labels.calibration is not None and labels.calibration["ece_after"] == results["ece_after"]
    assert len(set(labels.temperatures)) > 1  # one per label
    assert labels.temperatures == [results["per_label"][n]["temperature"] for n in labels.names]
    assert json.loads((out / "reports" / "summary.json").read_text())["calibration"]["method"] == "per-label"

    # Served as written: test probabilities through the file's temperatures at its thresholds score
    # exactly what the report says.
    test = load_dataset(tiny_data)[1]["test"]
    logits = onnx_classifier(out / manifest.variants["fp32"].file, load_tokenizer(out)).logits(
        test.texts[:100]
    )
    probs = calibrated_probabilities(logits, np.array(labels.temperatures))
    f1 = f1_scores(probs, test.labels[:100], np.array(labels.thresholds, dtype=np.float32))
    assert round(f1.macro, 4) == results["calibrated_tuned"]["macro_f1"]


def test_calibration_none_keeps_temperatures_at_one(tmp_path, tiny_model, tiny_data):
    opts = dataclasses.replace(LOOSE, variants=("fp32",), calibration="none")
    manifest = export_model(str(tiny_model), tmp_path, opts, tiny_data)
    labels = read_labels(tmp_path / "labels.json")
    assert labels.temperatures == [1.0] * 28
    assert labels.calibration is not None and labels.calibration["method"] == "none"
    assert labels.calibration["ece_before"] == labels.calibration["ece_after"]
    assert labels.model_version == manifest.model_version


def test_calibration_gate_failure_raises_and_writes_no_labels_file(tmp_path, tiny_model, tiny_data):
    # A negative tolerance fails even an unchanged macro-F1.
    opts = dataclasses.replace(LOOSE, variants=("fp32",), max_calibration_f1_drop=-1.0)
    with pytest.raises(GateFailed, match="calibration: macro-F1"):
        export_model(str(tiny_model), tmp_path, opts, tiny_data)
    report = json.loads((tmp_path / "reports" / "calibration.json").read_text())
    assert report["passed"] is False
    assert (tmp_path / "reports" / "reliability.png").is_file()  # the evidence is still written
    assert json.loads((tmp_path / "reports" / "summary.json").read_text())["passed"] is False
    assert not (tmp_path / "labels.json").exists()  # a failed export never produces a labels file


def test_install_writes_repository_layout(exported, tmp_path):
    out, manifest, spec = exported
    repo = tmp_path / "model_repository"
    (repo / "classifier" / "1").mkdir(parents=True)
    (repo / "classifier" / "1" / "model.old.onnx").write_bytes(b"stale")
    install(out, repo)
    files = {p.name for p in (repo / "classifier" / "1").iterdir()}
    assert files == {v.file for v in manifest.variants.values()}  # stale model removed
    assert (repo / "tokenizer" / "1" / "tokenizer.json").is_file()
    assert read_labels(repo / "labels.json").model_version == manifest.model_version
    assert read_installed(repo) == manifest
    assert ServingSpec.read(repo / "spec.json") == spec
    assert stale_configs(repo, spec) == []  # configs generated for this model's interface
    (repo / "classifier" / "1" / "model.int8.onnx").write_bytes(b"truncated")
    assert read_installed(repo) is None  # a damaged file means "not prepared"


def test_parity_gate_failure_raises_and_reports(tmp_path, tiny_model, tiny_data):
    opts = ExportOptions(
        variants=("int8",), eval_limit=50, max_macro_f1_drop=1.0, parity_tolerance={"int8": 1e-9}
    )
    with pytest.raises(GateFailed, match="int8: max"):
        export_model(str(tiny_model), tmp_path, opts, tiny_data)
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    assert report["passed"] is False
    assert not (tmp_path / "labels.json").exists()  # a failed export never produces a labels file


def test_mislabelled_model_is_refused(tmp_path, tiny_data, label_names):
    model = build_tiny_model(tmp_path / "m", list(reversed(label_names)))
    with pytest.raises(ValueError, match="does not match the GoEmotions labels"):
        export_model(str(model), tmp_path / "out", LOOSE, tiny_data)


def test_install_writes_a_runnable_tensorrt_build_script(exported, tmp_path):
    import os
    import subprocess

    out, _, _ = exported
    repo = tmp_path / "repo"
    install(out, repo)
    script = repo / "classifier" / "build_plan.sh"
    assert os.access(script, os.X_OK)
    fake = tmp_path / "trtexec"
    fake.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\nfor a; do case $a in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n'
    )
    fake.chmod(0o755)
    env = {
        **os.environ,
        "TRTEXEC": str(fake),
        "ARGS_OUT": str(tmp_path / "args"),
        "TIMING_CACHE": str(tmp_path / "tc"),
    }
    subprocess.run(["bash", str(script)], check=True, env=env)
    args = (tmp_path / "args").read_text().splitlines()
    assert f"--onnx={repo / 'classifier' / '1' / 'model.onnx'}" in args
    assert "--fp16" in args and f"--timingCacheFile={tmp_path / 'tc'}" in args
    assert any(a.startswith("--layerPrecisions=") and a.endswith(":fp32") for a in args)
    assert (repo / "classifier" / "1" / "model.plan").read_text() == "plan\n"
    (tmp_path / "args").unlink()
    rerun = subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True)
    assert "plan exists" in rerun.stdout and not (tmp_path / "args").exists()  # no rebuild
