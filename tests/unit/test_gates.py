import json
from pathlib import Path

import numpy as np

from export.training.gates import accuracy_gate, parity_gate


def test_parity_passes_within_and_fails_beyond_tolerance(tmp_path: Path):
    ref = np.zeros((4, 28), dtype=np.float32)
    near = ref + 1e-5
    far = ref.copy()
    far[2, 3] = 0.2
    report = parity_gate(ref, {"fp32": near, "fp16": far})
    assert not report.passed
    assert report.failures == ["fp16: max |Δlogit| 0.2 exceeds 0.05"]
    assert report.results["fp32"]["max_abs_logit_diff"] < 1e-4
    data = json.loads(report.write(tmp_path).read_text())
    assert data["passed"] is False and data["gate"] == "parity"


def test_parity_tolerance_override_and_non_finite():
    ref = np.zeros((2, 28), dtype=np.float32)
    off = ref + 0.2
    assert parity_gate(ref, {"fp16": off}, {"fp16": 0.3}).passed
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert parity_gate(ref, {"int8": bad}).failures == ["int8: non-finite logits"]


def _labels_and_probs(rng: np.random.Generator, noise: float = 0.1):
    labels = (rng.random((300, 28)) < 0.1).astype(np.float32)
    probs = np.clip(labels * 0.8 + rng.normal(0.1, noise, labels.shape), 0, 1)
    return labels, probs


def test_accuracy_gate_fails_a_variant_that_drops_macro_f1():
    rng = np.random.default_rng(1)
    labels, probs = _labels_and_probs(rng)
    degraded = probs.copy()
    degraded[:, :5] = rng.random((300, 5))  # five labels become noise
    thresholds = dict.fromkeys(("fp32", "fp16", "int8"), np.full(28, 0.5))
    report = accuracy_gate(labels, {"fp32": probs, "fp16": probs.copy(), "int8": degraded}, thresholds)
    assert [f.split(":")[0] for f in report.failures] == ["int8"]
    assert report.results["fp16"]["at_tuned"] == report.results["fp32"]["at_tuned"]


def test_accuracy_gate_minimum_on_reference():
    rng = np.random.default_rng(2)
    labels, probs = _labels_and_probs(rng, noise=0.3)
    thresholds = {"fp32": np.full(28, 0.5)}
    report = accuracy_gate(labels, {"fp32": probs}, thresholds, min_macro_f1=0.99)
    assert not report.passed and "below the minimum" in report.failures[0]
    assert accuracy_gate(labels, {"fp32": probs}, thresholds, min_macro_f1=0.5).passed


def test_accuracy_gate_scores_each_variant_at_its_own_thresholds():
    rng = np.random.default_rng(3)
    labels, probs = _labels_and_probs(rng)
    shifted = np.clip(probs - 0.3, 0, 1)  # the same ranking, on another scale
    report = accuracy_gate(
        labels, {"fp32": probs, "int8": shifted}, {"fp32": np.full(28, 0.5), "int8": np.full(28, 0.2)}
    )
    assert report.passed, report.failures
    assert report.results["int8"]["at_tuned"] == report.results["fp32"]["at_tuned"]
