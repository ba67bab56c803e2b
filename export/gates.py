"""Parity and accuracy gates: each writes a report and fails the export when a variant is off."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.arrays import Array
from export.calibration import (
    ECE_BINS,
    calibrated_probabilities,
    per_label_ece,
    reliability,
)
from export.metrics import f1_scores

# max |Δlogit| against the torch model on the parity sample. INT8 is loose on purpose: dynamic
# activation quantization moves the student's logits by ~0.1 on average and up to ~0.9 (per-channel
# weights); what matters for INT8 is the accuracy gate.
DEFAULT_PARITY_TOLERANCE = {"raw": 1e-3, "fp32": 1e-3, "fp16": 5e-2, "int8": 1.0}
DEFAULT_MAX_MACRO_F1_DROP = 0.01
# Temperature scaling is monotone per label, so with thresholds re-tuned on the calibrated dev
# probabilities the labels could be exactly the same as before; any macro-F1 difference comes only
# from where the fixed 0.05..0.95 threshold grid falls on each label's new probability scale.
DEFAULT_MAX_CALIBRATION_F1_DROP = 0.005


class GateFailed(RuntimeError):
    """One or more gates failed; the reports on disk say which and by how much."""


@dataclass
class GateReport:
    name: str
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.passed = False
        self.failures.append(message)

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(
            json.dumps(
                {
                    "gate": self.name,
                    "passed": self.passed,
                    "failures": self.failures,
                    "results": self.results,
                },
                indent=2,
            )
            + "\n"
        )
        return path


def parity_gate(
    reference: Array, variants: dict[str, Array], tolerance: dict[str, float] | None = None
) -> GateReport:
    tolerance = {**DEFAULT_PARITY_TOLERANCE, **(tolerance or {})}
    report = GateReport("parity")
    for name, logits in variants.items():
        diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
        prob_diff = np.abs(calibrated_probabilities(logits) - calibrated_probabilities(reference))
        tol = tolerance[name]
        max_diff = float(diff.max()) if diff.size else 0.0
        report.results[name] = {
            "max_abs_logit_diff": max_diff,
            "mean_abs_logit_diff": float(diff.mean()) if diff.size else 0.0,
            "max_abs_prob_diff": float(prob_diff.max()) if prob_diff.size else 0.0,
            "tolerance": tol,
            "samples": int(reference.shape[0]),
        }
        if not np.isfinite(logits).all():
            report.fail(f"{name}: non-finite logits")
        elif max_diff > tol:
            report.fail(f"{name}: max |Δlogit| {max_diff:.3g} exceeds {tol:g}")
    return report


def accuracy_gate(
    labels: Array,
    probs: dict[str, Array],
    thresholds: Array,
    reference: str = "fp32",
    max_macro_f1_drop: float = DEFAULT_MAX_MACRO_F1_DROP,
    min_macro_f1: float = 0.0,
) -> GateReport:
    """Micro/macro-F1 per variant at 0.5 and at the tuned thresholds; every variant must stay within
    ``max_macro_f1_drop`` of the reference variant, and the reference must reach ``min_macro_f1``."""
    report = GateReport("accuracy")
    for name, p in probs.items():
        report.results[name] = {
            "at_0.5": f1_scores(p, labels).as_dict(),
            "at_tuned": f1_scores(p, labels, thresholds).as_dict(),
        }
    ref = report.results[reference]["at_tuned"]["macro_f1"]
    report.results["_criteria"] = {
        "reference": reference,
        "max_macro_f1_drop": max_macro_f1_drop,
        "min_macro_f1": min_macro_f1,
    }
    if ref < min_macro_f1:
        report.fail(f"{reference}: macro-F1 {ref:.4f} below the minimum {min_macro_f1:.4f}")
    for name in probs:
        got = report.results[name]["at_tuned"]["macro_f1"]
        if ref - got > max_macro_f1_drop:
            report.fail(
                f"{name}: macro-F1 {got:.4f} is {ref - got:.4f} below {reference} ({ref:.4f}); "
                f"allowed drop {max_macro_f1_drop}"
            )
    return report


def calibration_gate(
    labels: Array,
    logits: Array,
    temperatures: Array,
    uncalibrated_thresholds: Array,
    calibrated_thresholds: Array,
    label_names: list[str],
    max_macro_f1_drop: float = DEFAULT_MAX_CALIBRATION_F1_DROP,
    bins: int = ECE_BINS,
) -> GateReport:
    """ECE before/after temperature scaling and F1 with thresholds tuned before/after, on test.

    Fails when the ECE gets worse or calibrated macro-F1 falls more than ``max_macro_f1_drop`` under
    the uncalibrated one.
    """
    report = GateReport("calibration")
    before = calibrated_probabilities(logits)
    after = calibrated_probabilities(logits, temperatures)
    rel_before, rel_after = reliability(before, labels, bins), reliability(after, labels, bins)
    ece_before, ece_after = rel_before.ece, rel_after.ece
    f1_before = f1_scores(before, labels, uncalibrated_thresholds)
    f1_after = f1_scores(after, labels, calibrated_thresholds)
    label_before, label_after = per_label_ece(before, labels, bins), per_label_ece(after, labels, bins)
    report.results = {
        "samples": int(labels.shape[0]),
        "bins": bins,
        "ece_before": round(ece_before, 6),
        "ece_after": round(ece_after, 6),
        "uncalibrated_tuned": f1_before.as_dict(),
        "calibrated_tuned": f1_after.as_dict(),
        "per_label": {
            name: {
                "temperature": round(float(temperatures[i]), 4),
                "ece_before": round(label_before[i], 6),
                "ece_after": round(label_after[i], 6),
                "threshold_before": round(float(uncalibrated_thresholds[i]), 4),
                "threshold_after": round(float(calibrated_thresholds[i]), 4),
                "f1_before": round(f1_before.per_label[i], 4),
                "f1_after": round(f1_after.per_label[i], 4),
                "positives": int((labels[:, i] > 0.5).sum()),
            }
            for i, name in enumerate(label_names)
        },
        "reliability_before": rel_before.as_dict(),
        "reliability_after": rel_after.as_dict(),
        "_criteria": {"max_macro_f1_drop": max_macro_f1_drop, "ece_after_at_most": "ece_before"},
    }
    if ece_after > ece_before:
        report.fail(f"calibration: ECE rose from {ece_before:.4f} to {ece_after:.4f} on test")
    drop = f1_before.macro - f1_after.macro
    if drop > max_macro_f1_drop:
        report.fail(
            f"calibration: macro-F1 {f1_after.macro:.4f} with re-tuned thresholds is {drop:.4f} below "
            f"{f1_before.macro:.4f} uncalibrated; allowed drop {max_macro_f1_drop}"
        )
    return report
