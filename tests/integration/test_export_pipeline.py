"""Export of a tiny random-init model end to end: optimum ONNX, variants, gates, thresholds, install."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from contract.manifest import Manifest, read_installed
from contract.spec import ServingSpec
from export.packaging.repository import stale_configs
from export.packaging.runtime import load_tokenizer, onnx_classifier, torch_classifier
from export.pipeline import ExportOptions, export_model, install
from export.training.calibration import calibrated_probabilities
from export.training.data import load_dataset
from export.training.gates import GateFailed
from export.training.metrics import f1_scores
from tests.support.models import build_tiny_model

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
    assert set(manifest.variants) == {"fp32", "fp16", "int8", "int8_dynamic", "torch_fp16"}
    assert manifest.variants["int8_dynamic"].execution == "per_row"  # batch-dependent scales: one row a run
    assert {manifest.variants[v].execution for v in ("fp32", "fp16", "int8")} == {"batch"}
    # BERT has token_type_ids; they are kept because the model has them.
    assert spec.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    for variant in [manifest.onnx, *(v for v in manifest.variants.values() if v.file.endswith(".onnx"))]:
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
    files = {"raw": manifest.onnx.file} | {
        name: v.file for name, v in manifest.variants.items() if v.file.endswith(".onnx")
    }
    ops = {name: {n.op_type for n in onnx.load(str(out / f)).graph.node} for name, f in files.items()}
    assert "Attention" in ops["fp32"] or "MultiHeadAttention" in ops["fp32"]  # ORT fusions applied
    assert "Attention" not in ops["raw"]  # the TensorRT input stays standard ONNX
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops["int8_dynamic"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["int8"]  # static: fixed, calibrated scales
    assert "DynamicQuantizeLinear" not in ops["int8"]
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


def test_reports_manifest_and_spec_written(exported, label_names):
    out, manifest, spec = exported
    parity = json.loads((out / "reports" / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["results"]["fp32"]["max_abs_logit_diff"] < 1e-4
    assert parity["results"]["int8"]["samples"] == 120  # the whole (tiny) dev split: sample capped
    accuracy = json.loads((out / "reports" / "accuracy.json").read_text())
    assert set(accuracy["results"]) >= {"torch", "fp32", "fp16", "int8", "int8_dynamic"}
    assert accuracy["results"]["_criteria"]["split"] == "dev"
    assert manifest.labels == label_names
    for entry in manifest.variants.values():
        assert len(set(entry.thresholds)) > 1  # tuned per label, not one global cut
    # Fitted per variant, on that variant's own dev logits.
    assert manifest.variants["int8"].temperatures != manifest.variants["fp32"].temperatures
    assert Manifest.read(out / "manifest.json") == manifest
    assert spec.labels == label_names and spec.max_length == manifest.max_length == 128


def test_decisions_on_dev_and_test_only_reported_with_intervals(exported):
    out, manifest, _ = exported
    calibration = json.loads((out / "reports" / "calibration.json").read_text())
    assert calibration["passed"] is True and "dev" in calibration["results"]["split"]
    assert set(calibration["results"]["per_variant"]) == set(manifest.variants) | {"raw"}
    test = json.loads((out / "reports" / "test.json").read_text())
    assert test["_about"]["split"] == "test" and "bootstrap" in test["_about"]["interval"]
    for variant in manifest.variants:
        lo, hi = test[variant]["at_tuned"]["macro_f1_ci95"]
        assert lo <= test[variant]["at_tuned"]["macro_f1"] <= hi
    summary = json.loads((out / "reports" / "summary.json").read_text())
    assert summary["decisions_on"] == "dev" and summary["model_version"] == manifest.version
    table = (out / "reports" / "summary.md").read_text()
    fp32 = calibration["results"]["per_variant"]["fp32"]
    assert f"| {fp32['ece_before']:.5f} / {fp32['ece_after']:.5f} |" in table  # the dev ECE column
    assert f"**{test['int8']['at_tuned']['macro_f1']:.4f}**" in table
    png = (out / "reports" / "reliability.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_each_variant_is_served_as_the_report_scores_it(exported, tiny_data):
    """The manifest's temperatures and thresholds, applied to the variant's logits run as served,
    give exactly the test F1 the report states."""
    out, manifest, _ = exported
    test = load_dataset(tiny_data)[1]["test"]
    for name in ("fp32", "int8", "int8_dynamic"):
        entry = manifest.variants[name]
        clf = onnx_classifier(out / entry.file, load_tokenizer(out), execution=entry.execution)
        probs = calibrated_probabilities(clf.predict(test.texts[:100]), np.array(entry.temperatures))
        f1 = f1_scores(probs, test.labels[:100], np.array(entry.thresholds, dtype=np.float32))
        report = json.loads((out / "reports" / "test.json").read_text())
        assert round(f1.macro, 4) == report[name]["at_tuned"]["macro_f1"], name


def test_calibration_none_keeps_temperatures_at_one(tmp_path, tiny_model, tiny_data):
    opts = dataclasses.replace(LOOSE, variants=("fp32",), calibration="none")
    manifest = export_model(str(tiny_model), tmp_path, opts, tiny_data)
    assert manifest.variants["fp32"].temperatures == [1.0] * 28
    report = json.loads((tmp_path / "reports" / "calibration.json").read_text())
    assert report["results"]["method"] == "none"
    fp32 = report["results"]["per_variant"]["fp32"]
    assert fp32["ece_before"] == fp32["ece_after"]


def test_calibration_gate_failure_raises_and_writes_no_manifest(tmp_path, tiny_model, tiny_data):
    # A negative tolerance fails even an unchanged macro-F1.
    opts = dataclasses.replace(LOOSE, variants=("fp32",), max_calibration_f1_drop=-1.0)
    with pytest.raises(GateFailed, match="macro-F1"):
        export_model(str(tiny_model), tmp_path, opts, tiny_data)
    report = json.loads((tmp_path / "reports" / "calibration.json").read_text())
    assert report["passed"] is False
    assert (tmp_path / "reports" / "reliability.png").is_file()  # the evidence is still written
    assert json.loads((tmp_path / "reports" / "summary.json").read_text())["passed"] is False
    assert not (tmp_path / "manifest.json").exists()  # a failed export never produces a manifest


def test_a_model_trained_at_another_length_is_refused(tmp_path, tiny_model, tiny_data):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "training_report.json").write_text(json.dumps({"config": {"max_length": 64}}))
    with pytest.raises(ValueError, match="trained with max_length 64"):
        export_model(str(model), tmp_path / "out", LOOSE, tiny_data)


def test_install_writes_repository_layout(exported, tmp_path):
    out, manifest, spec = exported
    repo = tmp_path / "model_repository"
    (repo / "classifier" / "1").mkdir(parents=True)
    (repo / "classifier" / "1" / "model.old.onnx").write_bytes(b"stale")
    (repo / "classifier" / "1" / "model.plan").write_bytes(b"a plan of another model")
    (repo / "labels.json").write_text("{}")
    install(out, repo)
    files = {p.name for p in (repo / "classifier" / "1").iterdir()}
    # stale model and plan removed
    assert files == {v.file for v in manifest.variants.values()} | {"model.onnx", "manifest.json"}
    assert (repo / "tokenizer" / "1" / "tokenizer.json").is_file()
    assert not (repo / "labels.json").exists()
    for model in ("tokenizer", "classifier", "postprocess"):  # travels with each model
        assert Manifest.read(repo / model / "1" / "manifest.json") == manifest
    assert read_installed(repo) == manifest
    assert ServingSpec.read(repo / "spec.json") == spec
    assert stale_configs(repo, spec) == []  # configs generated for this model's interface
    (repo / "classifier" / "1" / "model.int8.onnx").write_bytes(b"truncated")
    assert read_installed(repo) is None  # a damaged file means "not prepared"


def test_install_refuses_an_export_whose_files_differ_from_its_manifest(exported, tmp_path):
    import shutil

    out, _, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace("[UNK]", "[UNKNOWN]"))
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        install(copy, tmp_path / "repo")
    assert not (tmp_path / "repo" / "manifest.json").exists()


def test_parity_gate_failure_raises_and_reports(tmp_path, tiny_model, tiny_data):
    opts = ExportOptions(
        variants=("int8",), eval_limit=50, max_macro_f1_drop=1.0, parity_tolerance={"int8": 1e-9}
    )
    with pytest.raises(GateFailed, match="int8: max"):
        export_model(str(tiny_model), tmp_path, opts, tiny_data)
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    assert report["passed"] is False
    assert not (tmp_path / "manifest.json").exists()  # a failed export never produces a manifest


def test_mislabelled_model_is_refused(tmp_path, tiny_data, label_names):
    model = build_tiny_model(tmp_path / "m", list(reversed(label_names)))
    with pytest.raises(ValueError, match="does not match the GoEmotions labels"):
        export_model(str(model), tmp_path / "out", LOOSE, tiny_data)


def test_install_writes_a_runnable_tensorrt_build_script(exported, tmp_path):
    import os
    import subprocess

    out, manifest, _ = exported
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
    plan = repo / "classifier" / "1" / "model.plan"
    assert plan.read_text() == "plan\n"
    assert (repo / "classifier" / "1" / "model.plan.digest").read_text().strip() == manifest.digest
    (tmp_path / "args").unlink()
    rerun = subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True)
    assert "plan is current" in rerun.stdout and not (tmp_path / "args").exists()  # no rebuild
    # A plan stamped for another manifest is never reused: the script rebuilds it.
    (repo / "classifier" / "1" / "model.plan.digest").write_text("another-model\n")
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True)
    assert (tmp_path / "args").exists()
    assert (repo / "classifier" / "1" / "model.plan.digest").read_text().strip() == manifest.digest


# --- a model with the learning signals (the offline student's shape) ---


@pytest.fixture(scope="module")
def signal_export(tmp_path_factory, tiny_signal_model: Path, tiny_data: Path) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("signal-export")
    # a precision floor on two signals (a random model reaches 0.25 where the signals' base rate is lower)
    opts = dataclasses.replace(
        LOOSE, variants=("fp32", "fp16", "int8"), signal_min_precision={"giving_up": 0.25, "stuck": 0.25}
    )
    return out, export_model(str(tiny_signal_model), out, opts, tiny_data)


def test_signal_columns_are_fitted_on_the_learner_dev_split(signal_export):
    from contract.names import WITH_LEARNING_SIGNALS
    from export.training.calibration import calibrated_probabilities, fit_mapping
    from export.training.learner_data import learner_targets, load_learner_messages
    from export.training.metrics import recall_first_thresholds

    out, manifest = signal_export
    assert manifest.labels == list(WITH_LEARNING_SIGNALS)
    texts, targets = learner_targets("dev", load_learner_messages())
    floors = np.array([0.25, np.nan, 0.25])  # giving_up, boredom, stuck: as the fixture asked
    for name in ("fp32", "int8"):
        entry = manifest.variants[name]
        assert len(entry.thresholds) == len(entry.temperatures) == 31
        logits = onnx_classifier(out / entry.file, load_tokenizer(out), execution=entry.execution).predict(
            texts
        )
        fit = fit_mapping(logits[:, 28:], targets[:, 28:])
        probs = calibrated_probabilities(logits[:, 28:], fit.temperatures)
        cuts = recall_first_thresholds(probs, targets[:, 28:], floors, fit.thresholds, confidence=0.95)
        assert entry.thresholds[28:] == [round(float(t), 4) for t in cuts], name
        assert entry.temperatures[28:] == [round(float(t), 4) for t in fit.temperatures], name
        assert entry.thresholds[29] == round(float(fit.thresholds[1]), 4)  # boredom: no floor, best F1
    summary = json.loads((out / "reports" / "summary.json").read_text())
    assert summary["signal_min_precision"] == {"giving_up": 0.25, "stuck": 0.25}
    assert summary["signal_precision_confidence"] == 0.95  # the default: floors hold at a lower bound
    assert (
        "giving_up for the most recall at precision (its one-sided 95% lower bound) >= 0.25"
        in (out / "reports" / "summary.md").read_text()
    )
    gate = json.loads((out / "reports" / "signal_accuracy.json").read_text())
    assert gate["passed"] and gate["results"]["_criteria"]["split"] == "learner dev"
    test = json.loads((out / "reports" / "test.json").read_text())
    for name in ("torch", "fp32", "int8"):
        giving_up = test[name]["learning_signals"]["giving_up"]
        assert giving_up["support"] > 0 and {"precision", "recall", "f1", "recall_ci95"} <= set(giving_up)
    spec = ServingSpec.read(out / "spec.json")
    assert spec.labels == list(WITH_LEARNING_SIGNALS)


def test_the_precision_floors_decide_the_served_signal_cuts(
    tmp_path, tiny_signal_model, tiny_data, monkeypatch
):
    # a random model's signals are flat, so every rule lands on the same cut: a stand-in rule shows that
    # the floors reach it, per variant, and that what it returns is what the manifest serves
    import export.pipeline as pipeline

    calls = []

    def stand_in(probs, labels, min_precision, fallback, confidence):
        calls.append((np.asarray(min_precision).tolist(), confidence))
        return np.where(np.isfinite(min_precision), 0.123, fallback).astype(np.float32)

    monkeypatch.setattr(pipeline, "recall_first_thresholds", stand_in)
    opts = dataclasses.replace(
        LOOSE,
        variants=("fp32", "int8"),
        signal_min_precision={"stuck": 0.6},
        signal_precision_confidence=0.9,
    )
    out = tmp_path / "out"
    manifest = export_model(str(tiny_signal_model), out, opts, tiny_data)
    # one fit per runner: torch, the raw ONNX export, fp32, int8
    assert len(calls) == 4 and all(c[2] == 0.6 and np.isnan(c[:2]).all() and k == 0.9 for c, k in calls)
    assert json.loads((out / "reports" / "summary.json").read_text())["signal_precision_confidence"] == 0.9
    assert (
        "stuck for the most recall at precision (its one-sided 90% lower bound) >= 0.6"
        in (out / "reports" / "summary.md").read_text()
    )
    for entry in manifest.variants.values():
        assert entry.thresholds[30] == 0.123 and 0.123 not in entry.thresholds[:30]


def test_signal_model_installs_with_31_wide_configs(signal_export, tmp_path):
    out, manifest = signal_export
    install(out, tmp_path / "repo")
    for rel in (
        "classifier/configs/embedded.pbtxt",
        "postprocess/configs/embedded.pbtxt",
        "goemotions/config.pbtxt",
    ):
        assert "dims: [31]" in (tmp_path / "repo" / rel).read_text(), rel
    assert read_installed(tmp_path / "repo") == manifest


def test_a_model_with_some_signals_only_is_refused(tmp_path, tiny_data, label_names):
    model = build_tiny_model(tmp_path / "m", [*label_names, "giving_up"])
    with pytest.raises(ValueError, match="optionally followed by"):
        export_model(str(model), tmp_path / "out", LOOSE, tiny_data)


def test_the_torch_variant_is_gated_and_fitted_like_the_others(exported, tiny_model):
    """torch_fp16 (the embedded server's GPU variant): FP16 weights + architecture in one file, checked
    for parity against torch, fitted on its own dev logits, and answering as transformers does."""
    from export.packaging.torch_variant import torch_runtime_classifier

    out, manifest, spec = exported
    entry = manifest.variants["torch_fp16"]
    assert entry.file == "model.fp16.safetensors" and entry.precision == "fp16" and entry.execution == "batch"
    assert entry.quantization["runtime"] == "torch"
    parity = json.loads((out / "reports" / "parity.json").read_text())["results"]["torch_fp16"]
    assert 0 < parity["max_abs_logit_diff"] < parity["tolerance"] == 5e-2  # FP16 rounding, FP32 arithmetic
    accuracy = json.loads((out / "reports" / "accuracy.json").read_text())["results"]
    assert "torch_fp16" in accuracy
    tok = load_tokenizer(out)
    texts = ["I love this!", "why does it never work", "ok"]
    ref = torch_classifier(str(tiny_model), tok, spec.input_names).logits(texts)
    got = torch_runtime_classifier(out / entry.file, tok, spec.input_names).logits(texts)
    np.testing.assert_allclose(got, ref, atol=5e-2)


def test_the_state_distribution_report_covers_every_text(signal_export, tiny_data, tmp_path):
    from export.learner_gap import state_distribution, write_distribution
    from gateway.learning.policy import INTERVENTION_LEVELS

    out, manifest = signal_export
    report = state_distribution(out, "test", tiny_data)
    assert report["texts"] == 120 and report["model"] == manifest.served_version("int8")
    for key in ("intervention_levels", "readiness_states", "primary_learning_emotions"):
        assert sum(report[key].values()) == pytest.approx(1.0, abs=1e-3), key
    assert set(report["intervention_levels"]) <= set(INTERVENTION_LEVELS)
    paths = write_distribution(report, tmp_path, "test")
    assert [p.name for p in paths] == [
        "state_distribution.json",
        "state_distribution.md",
        "state_distribution.png",
    ]


def test_candidates_are_compared_on_the_dev_splits_only(signal_export, tiny_data):
    from export.learner_gap import select, selection_markdown
    from export.training.learner_data import load_learner_messages

    out, manifest = signal_export
    report = select([out], tiny_data)
    (row,) = report["candidates"]
    dev = [m for m in load_learner_messages() if m.split == "dev"]
    assert report["split"] == "dev" and row["learner_dev_texts"] == len(dev)
    assert row["goemotions_dev_texts"] == 120 and row["model"] == manifest.served_version("int8")
    assert set(row["signal_f1"]) == set(row["signals_on_goemotions_dev"]) == {"giving_up", "boredom", "stuck"}
    assert all(0.0 <= rate <= 1.0 for rate in row["signals_on_goemotions_dev"].values())
    assert row["giving_up_messages"] == sum("giving_up" in m.learning for m in dev)
    assert 0 <= row["giving_up_at_least_moderate"] <= row["giving_up_messages"]
    table = selection_markdown(report, "cmd")
    assert f"`{out}`" in table
    assert f"| {row['giving_up_at_least_moderate']} of {row['giving_up_messages']} |" in table
    assert report["choice"]["chosen"] is None  # no GoEmotions-only export to hold it to


def test_the_domain_gap_report_pairs_the_goemotions_drop_against_its_baseline(signal_export, exported):
    from export import learner_gap

    report = learner_gap.run(signal_export[0], baseline=exported[0])
    model, baseline = report["model"], report["baseline"]
    drop = model["goemotions_drop"]  # baseline minus model, on the same resampled texts
    expected = baseline["goemotions_test"]["macro_f1"] - model["goemotions_test"]["macro_f1"]
    assert drop["difference"] == pytest.approx(expected, abs=2e-4)
    lo, hi = drop["difference_ci95"]
    assert lo <= drop["difference"] <= hi and lo < hi
    row = next(t for t in report["targets"] if t["target"].startswith("GoEmotions test macro-F1 drop"))
    assert f"paired 95% CI [{lo:+.3f}, {hi:+.3f}]" in row["measured"]


def test_the_domain_gap_report_sets_the_drop_beside_other_seeds_and_splits_it_by_label(
    signal_export, exported
):
    from export import learner_gap

    report = learner_gap.run(
        signal_export[0], baseline=exported[0], model_seeds=[signal_export[0]], baseline_seeds=[exported[0]]
    )
    model, baseline, seeds = report["model"], report["baseline"], report["seeds"]
    # the per-label F1s are the ones the GoEmotions macro-F1 averages
    per_label = [v["f1"] for v in model["goemotions_per_label"].values()]
    assert np.mean(per_label) == pytest.approx(model["goemotions_test"]["macro_f1"], abs=2e-4)
    # a seed scored on its own (goemotions_test) agrees with the full evaluation of the same export
    assert [r["macro_f1"] for r in seeds["model"]["runs"]] == [model["goemotions_test"]["macro_f1"]] * 2
    assert seeds["baseline"]["mean"] == pytest.approx(baseline["goemotions_test"]["macro_f1"])
    expected = baseline["goemotions_test"]["macro_f1"] - model["goemotions_test"]["macro_f1"]
    assert seeds["drop_of_means"] == pytest.approx(expected, abs=1e-4)
    assert seeds["drop_ci95"] is None  # each side's runs are one export twice: no spread to estimate
    recipe = report["targets"][-3]  # judged between the recipe means too, before the two learner targets
    assert recipe["target"].startswith("GoEmotions test macro-F1 drop between the recipe means")
    assert recipe["met"] == (seeds["drop_of_means"] <= 0.01)
    shares = [r["share"] for r in model["goemotions_drop_by_label"]]
    assert shares == sorted(shares, reverse=True)
    text = learner_gap.markdown(report, "cmd")
    assert f"Drop between the recipe means: {seeds['drop_of_means']:+.3f}." in text
    assert f"| {model['goemotions_drop_by_label'][0]['label']} |" in text
    split = model["goemotions_drop_by_frequency"]
    assert sorted(split["frequent"]["labels"] + split["rare"]["labels"]) == sorted(
        model["goemotions_per_label"]
    )
    assert split["frequent"]["share"] + split["rare"]["share"] == pytest.approx(expected, abs=5e-4)
    assert f"over the {len(split['rare']['labels'])} rarer ones" in text
    assert learner_gap.run(signal_export[0], baseline=exported[0])["seeds"] is None


def test_the_model_bench_runs_every_variant_an_export_has(exported, tmp_path):
    # torch_fp16 is safetensors run by the torch runtime; loading it as ONNX broke `make bench-model`
    from export.__main__ import main

    out, manifest, _ = exported
    args = [
        "bench",
        "--export-dir",
        str(out),
        "--rounds",
        "1",
        "--invariance-texts",
        "8",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "model_report.json").read_text())
    assert set(report["bench"]["paths"]) == {"torch", "raw", *manifest.variants}
    assert report["bench"]["paths"]["torch_fp16"]["bs32_texts_per_s"] > 0
    assert "| torch_fp16 | batch |" in (tmp_path / "model_report.md").read_text()


def test_the_second_reading_report_scores_the_model_against_both_readings(signal_export, tmp_path):
    from contract.names import GOEMOTIONS_LABELS
    from export import learner_agreement
    from export.learner_gap import Served, present_labels_f1
    from export.training.learner_data import load_learner_messages, load_second_reading

    out, manifest = signal_export
    report = learner_agreement.run(out)
    messages = load_learner_messages()
    second = load_second_reading(messages)
    test = [m for m in messages if m.split == "test"]
    model = report["model"]
    assert model["name"] == manifest.served_version("int8")
    assert report["splits"]["test"]["n"] == len(test) and report["dev_and_test"]["n"] == len(second)
    assert model["first"]["giving_up"]["support"] == sum("giving_up" in m.learning for m in test)
    assert model["second"]["giving_up"]["support"] == sum("giving_up" in second[m.id].learning for m in test)
    assert model["first"]["learning_state"]["giving_up_messages"] == model["first"]["giving_up"]["support"]
    served = Served.load(out)
    probs = served.probabilities([m.text for m in test])
    for name, reading in (("first", test), ("second", [second[m.id] for m in test])):
        gold = learner_agreement.multi_hot(reading, GOEMOTIONS_LABELS, "labels")
        want = present_labels_f1(
            probs[:, : len(GOEMOTIONS_LABELS)], gold, served.thresholds[: len(GOEMOTIONS_LABELS)]
        )
        assert model[name]["labels"] == want, name
    paths = learner_agreement.write(report, tmp_path, "cmd")
    assert [p.name for p in paths] == [
        "learner_agreement.md",
        "learner_agreement.json",
        "learner_agreement.png",
    ]
    text = paths[0].read_text(encoding="utf-8")
    assert f"## The served model `{model['name']}` against each reading (test)" in text
    assert f"| messages read twice | {len(second) - len(test)} of " in text
    below = model["giving_up_below_moderate"]
    assert (
        len(below)
        == model["first"]["giving_up"]["support"]
        - model["first"]["learning_state"]["giving_up_at_least_moderate"]
    )
    assert all(f"| {r['id']} | {r['text']} | {r['level']} |" in text for r in below)
