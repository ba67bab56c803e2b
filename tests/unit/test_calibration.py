"""Temperature scaling, ECE, the calibration gate, and the Triton postprocess model's copy of the maths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contract.manifest import FileEntry, Manifest, VariantEntry
from export.pipeline import ExportOptions
from export.training.calibration import (
    GLOBAL,
    NONE,
    PER_LABEL,
    TEMPERATURE_BOUNDS,
    calibrated_probabilities,
    carry_thresholds,
    expected_calibration_error,
    fit_temperatures,
    per_label_ece,
    reliability,
    reliability_diagram,
    retune_thresholds,
)
from export.training.gates import calibration_gate
from export.training.metrics import f1_scores, sigmoid, tune_thresholds
from tests.support.python_backend import StubTensor, initialize, install_stub, load_model_module


def calibrated_data(n: int = 20_000, labels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits that are calibrated by construction: each label is drawn with probability sigmoid(logit)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-1.5, 2.0, (n, labels))
    gold = (rng.random((n, labels)) < sigmoid(logits)).astype(np.float32)
    return logits, gold


def test_overconfident_logits_get_back_their_factor_and_ece_drops():
    logits, gold = calibrated_data()
    factors = np.array([2.5, 1.0, 0.5])  # over-confident, calibrated, under-confident
    distorted = logits * factors
    fit = fit_temperatures(distorted, gold)
    assert fit.method == PER_LABEL and fit.fallback_labels == []
    np.testing.assert_allclose(fit.temperatures, factors, rtol=0.08)
    before = expected_calibration_error(calibrated_probabilities(distorted), gold)
    after = expected_calibration_error(calibrated_probabilities(distorted, fit.temperatures), gold)
    assert before > 0.03 and after < before / 3
    per_label_before = per_label_ece(calibrated_probabilities(distorted), gold)
    per_label_after = per_label_ece(calibrated_probabilities(distorted, fit.temperatures), gold)
    assert per_label_after[0] < per_label_before[0] and per_label_after[2] < per_label_before[2]


def test_global_fits_one_temperature_per_label_fits_each():
    logits, gold = calibrated_data()
    uniform = fit_temperatures(logits * 3.0, gold, GLOBAL)
    assert uniform.method == GLOBAL and len(set(uniform.temperatures.tolist())) == 1
    assert uniform.temperatures[0] == pytest.approx(3.0, rel=0.08)

    mixed = logits * np.array([3.0, 1.0, 0.5])
    per_label, single = fit_temperatures(mixed, gold), fit_temperatures(mixed, gold, GLOBAL)
    assert 0.5 < single.temperatures[0] < 3.0  # one compromise temperature
    nll = {
        name: -np.mean(np.where(gold > 0.5, np.log(p), np.log1p(-p)))
        for name, p in (
            ("per-label", calibrated_probabilities(mixed, per_label.temperatures)),
            ("global", calibrated_probabilities(mixed, single.temperatures)),
        )
    }
    assert nll["per-label"] < nll["global"]


def test_label_without_positives_falls_back_to_the_global_temperature():
    logits, gold = calibrated_data()
    gold[:, 1] = 0.0
    fit = fit_temperatures(logits * 2.0, gold)
    assert fit.fallback_labels == [1]
    assert fit.temperatures[1] == fit.global_temperature
    assert fit.temperatures[0] == pytest.approx(2.0, rel=0.08)


def test_separable_label_stays_within_bounds_and_none_is_identity():
    logits = np.array([[-3.0], [-1.0], [2.0], [4.0]])
    gold = np.array([[0.0], [0.0], [1.0], [1.0]])
    fit = fit_temperatures(logits, gold)
    # Perfectly separated: sharper is always better, so the optimum is the lower bound.
    assert fit.temperatures[0] == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)
    none = fit_temperatures(logits, gold, NONE)
    assert none.temperatures.tolist() == [1.0] and none.method == NONE


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="calibration method"):
        fit_temperatures(np.zeros((2, 2)), np.zeros((2, 2)), "isotonic")
    with pytest.raises(ValueError, match="shape"):
        fit_temperatures(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="calibration must be one of"):
        ExportOptions(calibration="platt")


def test_calibrated_probabilities_at_one_are_the_plain_sigmoid():
    logits = np.array([[-80.0, -1.0, 0.0, 3.0, 1e6]], dtype=np.float32)
    np.testing.assert_array_equal(calibrated_probabilities(logits), sigmoid(logits))
    np.testing.assert_allclose(calibrated_probabilities(logits, 2.0), sigmoid(logits / 2.0))


def test_reliability_bins_and_ece_by_hand():
    probs = np.array([[0.05], [0.05], [0.95], [0.95], [1.0]])
    gold = np.array([[0.0], [1.0], [1.0], [1.0], [1.0]])
    rel = reliability(probs, gold, bins=10)
    assert rel.counts.tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 3]  # 1.0 belongs to the last bin
    assert rel.confidence[0] == pytest.approx(0.05) and rel.frequency[0] == pytest.approx(0.5)
    assert np.isnan(rel.frequency[1])
    # bin 0: 2/5 * |0.05 - 0.5|; bin 9: 3/5 * |(0.95 + 0.95 + 1) / 3 - 1|
    assert rel.ece == pytest.approx(0.4 * 0.45 + 0.6 * (1 - 2.9 / 3))
    assert rel.as_dict()["frequency"][1] is None  # JSON-safe
    with pytest.raises(ValueError, match="shape"):
        reliability(probs, gold[:3])


def test_reliability_diagram_is_a_png(tmp_path: Path):
    logits, gold = calibrated_data(n=2000)
    before = reliability(calibrated_probabilities(logits * 3), gold)
    after = reliability(calibrated_probabilities(logits), gold)
    path = reliability_diagram(before, after, tmp_path / "out" / "reliability.png", title="synthetic")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_calibration_gate_passes_a_good_fit_out_of_fold_and_reports_per_variant():
    logits, gold = calibrated_data()
    distorted = logits * 2.0  # overconfident by a factor 2: temperature scaling must undo it
    report = calibration_gate({"fp32": distorted, "int8": distorted + 0.01}, gold, PER_LABEL, ["a", "b", "c"])
    assert report.passed, report.failures
    fp32 = report.results["per_variant"]["fp32"]
    assert fp32["ece_after"] < fp32["ece_before"] / 3
    assert set(fp32["per_label"]) == {"a", "b", "c"}
    assert set(report.results["per_variant"]) == {"fp32", "int8"}
    assert "cross-fitted" in report.results["split"]


def test_calibration_gate_fails_when_ece_rises_or_f1_drops():
    logits, gold = calibrated_data()
    worse = calibration_gate({"fp32": logits}, gold, PER_LABEL, ["a", "b", "c"], max_ece_rise=-1.0)
    assert not worse.passed and "raised the ECE" in worse.failures[0]
    strict = calibration_gate({"fp32": logits}, gold, PER_LABEL, ["a", "b", "c"], max_macro_f1_drop=-0.01)
    assert not strict.passed and any("macro-F1" in f for f in strict.failures)


def test_cross_fitting_scores_each_fold_with_a_fit_from_the_other(monkeypatch):
    """Out of fold: a text is never scored with temperatures fitted on itself."""
    from export.training import gates

    logits, gold = calibrated_data(n=2_000)
    seen: list[int] = []
    real = gates.fit_mapping

    def spy(z, y, method):
        seen.append(z.shape[0])
        return real(z, y, method)

    monkeypatch.setattr(gates, "fit_mapping", spy)
    gates.cross_fitted(logits, gold, PER_LABEL)
    assert len(seen) == 2 and sum(seen) == 2_000 and max(seen) < 2_000


@pytest.fixture
def postprocess(monkeypatch: pytest.MonkeyPatch):
    """Triton's postprocess model.py loaded with a stub ``triton_python_backend_utils``."""
    install_stub(monkeypatch)
    module = load_model_module("postprocess")

    def load(version_dir: Path, variant: str = "int8"):
        config = {
            "parameters": {"variant": {"string_value": variant}},
            "output": [{"name": "PROBABILITIES", "dims": [28]}, {"name": "LABELS", "dims": [-1]}],
        }
        return initialize(module, version_dir, config)

    return load


def _manifest(label_names: list[str], thresholds, temperatures) -> Manifest:
    entry = VariantEntry(
        "model.int8.onnx", "a" * 64, 1, "int8", "batch", list(thresholds), list(temperatures)
    )
    return Manifest(
        "student",
        "here",
        label_names,
        ["input_ids"],
        128,
        {},
        FileEntry("model.onnx", "b" * 64, 1),
        {"int8": entry},
    )


def test_postprocess_matches_the_python_probabilities_thresholds_and_version(
    postprocess, tmp_path, label_names
):
    rng = np.random.default_rng(3)
    temperatures = np.round(rng.uniform(0.3, 3.0, 28), 4)
    thresholds = np.round(rng.uniform(0.05, 0.95, 28), 2)
    manifest = _manifest(label_names, thresholds.tolist(), temperatures.tolist())
    manifest.write(tmp_path / "1" / "manifest.json")
    model = postprocess(tmp_path / "1")
    blocks = [rng.normal(0, 4, (n, 28)).astype(np.float32) for n in (1, 5, 2)]
    blocks[1][0, :3] = [1e4, -1e4, 0.0]  # extremes stay finite on both sides
    responses = model.execute([{"logits": StubTensor("logits", b)} for b in blocks])
    for block, response in zip(blocks, responses, strict=True):
        expected = calibrated_probabilities(block, temperatures).astype(np.float32)
        np.testing.assert_array_equal(response.outputs["PROBABILITIES"], expected)
        for row, labels in zip(expected, response.outputs["LABELS"], strict=True):
            want = [n for n, p, t in zip(label_names, row, thresholds, strict=True) if p >= np.float32(t)]
            assert [x.decode() for x in labels if x] == want
        versions = response.outputs["MODEL_VERSION"]
        assert versions.shape == (block.shape[0], 1)
        assert {v.decode() for v in versions.ravel()} == {manifest.served_version("int8")}


def test_postprocess_refuses_a_variant_or_temperatures_it_cannot_serve(postprocess, tmp_path, label_names):
    _manifest(label_names, [0.5] * 28, [1.0] * 28).write(tmp_path / "1" / "manifest.json")
    with pytest.raises(RuntimeError, match="no variant 'fp16'"):
        postprocess(tmp_path / "1", "fp16")
    data = json.loads((tmp_path / "1" / "manifest.json").read_text())
    data["variants"]["int8"]["temperatures"][0] = 0.0
    (tmp_path / "1" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(RuntimeError, match="temperatures must be finite"):
        postprocess(tmp_path / "1")


def test_carried_thresholds_keep_every_decision():
    logits, _ = calibrated_data(n=5000, labels=3, seed=4)
    temperatures = np.array([0.7, 1.0, 2.5])
    cuts = np.array([0.3, 0.5, 0.81])
    carried = carry_thresholds(cuts, temperatures)
    before = calibrated_probabilities(logits) >= cuts
    after = calibrated_probabilities(logits, temperatures) >= carried
    # Only a probability within the 4-decimal rounding of a cut could flip.
    assert (before != after).mean() < 1e-3
    # T < 1 pushes a cut away from 0.5, T > 1 pulls it towards 0.5; T = 1 leaves it.
    assert carried[0] < 0.3 and carried[1] == pytest.approx(0.5) and 0.5 < carried[2] < 0.81


def test_retuned_thresholds_never_lose_dev_f1_against_the_carried_cuts():
    logits, gold = calibrated_data(n=4000, labels=4, seed=5)
    probs = calibrated_probabilities(logits, 1.3)
    carried = carry_thresholds(tune_thresholds(calibrated_probabilities(logits), gold), 1.3)
    retuned = retune_thresholds(probs, gold, carried)
    per_label = np.array(f1_scores(probs, gold, retuned).per_label)
    assert (per_label >= np.array(f1_scores(probs, gold, carried).per_label)).all()
    assert (per_label >= np.array(f1_scores(probs, gold, tune_thresholds(probs, gold)).per_label)).all()
    # A deliberately bad carried cut is replaced by the grid's.
    bad = carried.copy()
    bad[0] = 0.999
    assert retune_thresholds(probs, gold, bad)[0] == pytest.approx(tune_thresholds(probs, gold)[0])
