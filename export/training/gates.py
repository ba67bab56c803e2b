"""Parity and accuracy gates: each writes a report and fails the export when a variant is off."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.arrays import Array
from export.training.calibration import (
    ECE_BINS,
    calibrated_probabilities,
    fit_mapping,
    per_label_ece,
    reliability,
)
from export.training.metrics import f1_scores

# max |Δlogit| against the torch model on the parity sample. INT8 is loose on purpose: on the student,
# static INT8 moved logits by up to 1.38 and dynamic INT8 (run per row) by up to 1.07 (2026-12-01, dev
# sample); what matters for INT8 is the accuracy gate.
# torch_fp16 is checked as exported here: FP16 weights, FP32 arithmetic (a GPU adds FP16 arithmetic,
# docs/gpu.md).
DEFAULT_PARITY_TOLERANCE = {
    "raw": 1e-3,
    "fp32": 1e-3,
    "fp16": 5e-2,
    "torch_fp16": 5e-2,
    # Catches a broken quantization (garbage logits); accuracy is the accuracy gates' job. Healthy static
    # INT8 students measured 0.96-1.50, the largest on a saturated logit (giving_up at p < 0.01 on a Reddit
    # comment) of the export with the smallest probability change (docs/model-and-export.md#gates).
    "int8": 2.0,
    "int8_dynamic": 2.0,
}
DEFAULT_MAX_MACRO_F1_DROP = 0.01
# The learning signals are judged on the learner dev split: ~240 messages, ~120 positives over three
# signals, where one message moves a signal's F1 by 0.01-0.02, so 0.01 macro-F1 is one or two messages
# and each variant's own threshold fit amplifies it (the 5,426-text GoEmotions dev resolves 0.01).
DEFAULT_MAX_SIGNAL_F1_DROP = 0.02
# Temperature scaling is monotone per label, so with thresholds re-tuned on the calibrated dev
# probabilities the labels could be exactly the same as before; any macro-F1 difference comes only
# from where the fixed 0.05..0.95 threshold grid falls on each label's new probability scale.
DEFAULT_MAX_CALIBRATION_F1_DROP = 0.005
# Out-of-fold, a model that is calibrated already can come out a hair worse from fitting noise alone.
DEFAULT_MAX_ECE_RISE = 0.001


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
    thresholds: dict[str, Array],
    reference: str = "fp32",
    max_macro_f1_drop: float = DEFAULT_MAX_MACRO_F1_DROP,
    min_macro_f1: float = 0.0,
    name: str = "accuracy",
    split: str = "dev",
) -> GateReport:
    """Micro/macro-F1 per variant at 0.5 and at its own tuned thresholds; every variant must stay within
    ``max_macro_f1_drop`` of the reference variant, and the reference must reach ``min_macro_f1``."""
    report = GateReport(name)
    for name, p in probs.items():
        report.results[name] = {
            "at_0.5": f1_scores(p, labels).as_dict(),
            "at_tuned": f1_scores(p, labels, thresholds[name]).as_dict(),
        }
    ref = report.results[reference]["at_tuned"]["macro_f1"]
    report.results["_criteria"] = {
        "split": split,
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


CROSS_FIT_FOLDS = 2
CROSS_FIT_SEED = 11


def cross_fitted(logits: Array, labels: Array, method: str) -> tuple[Array, Array, Array, Array]:
    """Out-of-fold predictions on dev: each fold is scored with temperatures and thresholds fitted on
    the other, so the calibration gate never judges a fit on the texts it was fitted on.

    Returns (uncalibrated probs, calibrated probs, labels predicted before, labels predicted after).
    """
    n = logits.shape[0]
    folds = np.random.default_rng(CROSS_FIT_SEED).permutation(n) % CROSS_FIT_FOLDS
    before = calibrated_probabilities(logits)
    after = np.zeros_like(before)
    pred_before = np.zeros(before.shape, dtype=bool)
    pred_after = np.zeros(before.shape, dtype=bool)
    for k in range(CROSS_FIT_FOLDS):
        held, fit_on = folds == k, folds != k
        mapping = fit_mapping(logits[fit_on], labels[fit_on], method)
        after[held] = calibrated_probabilities(logits[held], mapping.temperatures)
        pred_before[held] = before[held] >= mapping.uncalibrated_thresholds
        pred_after[held] = after[held] >= mapping.thresholds
    return before, after, pred_before, pred_after


def calibration_gate(
    logits: dict[str, Array],
    labels: Array,
    method: str,
    label_names: list[str],
    max_macro_f1_drop: float = DEFAULT_MAX_CALIBRATION_F1_DROP,
    bins: int = ECE_BINS,
    max_ece_rise: float = DEFAULT_MAX_ECE_RISE,
) -> GateReport:
    """Per variant, on dev with 2-fold cross-fitting: ECE before/after temperature scaling, and macro-F1
    with thresholds tuned before/after. Fails when a variant's ECE rises by more than ``max_ece_rise``
    or its calibrated macro-F1 falls more than ``max_macro_f1_drop`` under the uncalibrated one."""
    report = GateReport("calibration")
    report.results = {
        "method": method,
        "split": f"dev, {CROSS_FIT_FOLDS}-fold cross-fitted",
        "bins": bins,
        "_criteria": {"max_macro_f1_drop": max_macro_f1_drop, "max_ece_rise": max_ece_rise},
        "per_variant": {},
    }
    for variant, z in logits.items():
        before, after, pred_before, pred_after = cross_fitted(z, labels, method)
        ece_before, ece_after = reliability(before, labels, bins).ece, reliability(after, labels, bins).ece
        f1_before = f1_scores(pred_before.astype(np.float64), labels)
        f1_after = f1_scores(pred_after.astype(np.float64), labels)
        label_before, label_after = per_label_ece(before, labels, bins), per_label_ece(after, labels, bins)
        report.results["per_variant"][variant] = {
            "samples": int(labels.shape[0]),
            "ece_before": round(ece_before, 6),
            "ece_after": round(ece_after, 6),
            "uncalibrated_tuned": f1_before.as_dict(),
            "calibrated_tuned": f1_after.as_dict(),
            "per_label": {
                name: {
                    "ece_before": round(label_before[i], 6),
                    "ece_after": round(label_after[i], 6),
                    "f1_before": round(f1_before.per_label[i], 4),
                    "f1_after": round(f1_after.per_label[i], 4),
                    "positives": int((labels[:, i] > 0.5).sum()),
                }
                for i, name in enumerate(label_names)
            },
        }
        if ece_after - ece_before > max_ece_rise:
            report.fail(
                f"{variant}: calibration raised the ECE from {ece_before:.4f} to {ece_after:.4f} on dev"
            )
        drop = f1_before.macro - f1_after.macro
        if drop > max_macro_f1_drop:
            report.fail(
                f"{variant}: macro-F1 {f1_after.macro:.4f} with re-tuned thresholds is {drop:.4f} below "
                f"{f1_before.macro:.4f} uncalibrated; allowed drop {max_macro_f1_drop}"
            )
    return report
