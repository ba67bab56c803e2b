"""Temperature scaling for the independent per-label sigmoids: fit on dev logits, measure with ECE, draw it.

``calibrated_probabilities`` is the one logits -> probabilities function: Triton's postprocess model
repeats its numpy line (it cannot import this package) and a unit test keeps the two equal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.arrays import Array
from export.training.metrics import f1_scores, sigmoid, tune_thresholds

log = logging.getLogger(__name__)

PER_LABEL = "per-label"
GLOBAL = "global"
NONE = "none"
CALIBRATION_METHODS = (PER_LABEL, GLOBAL, NONE)
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Written to the manifest with this many decimals; the pipeline evaluates the rounded values it writes.
TEMPERATURE_DECIMALS = 4
ECE_BINS = 15
_GOLDEN_ITERATIONS = 60  # the log-T interval (~6) shrinks by 0.618 per step: ~1e-12 at the end


def calibrated_probabilities(logits: Array, temperatures: Array | float = 1.0) -> Array:
    """``sigmoid(logits / T)`` per label (float64): the probabilities the served model returns."""
    return sigmoid(logits.astype(np.float64) / np.asarray(temperatures, dtype=np.float64))


def carry_thresholds(thresholds: Array, temperatures: Array | float) -> Array:
    """The uncalibrated cuts on the calibrated scale, ``sigmoid(logit(t) / T)``: the same decisions
    (scaling is monotone per label), rounded as the manifest stores thresholds."""
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
    carried = sigmoid(np.log(t / (1 - t)) / np.asarray(temperatures, dtype=np.float64))
    return np.clip(np.round(carried, 4), 1e-4, 1 - 1e-4)


def retune_thresholds(probs: Array, labels: Array, carried: Array) -> Array:
    """Per label, whichever cut scores the higher dev F1: the grid optimum on the calibrated
    probabilities, or the carried-over uncalibrated optimum (ties keep the carried one). The grid alone
    can land on a worse cut than before calibration (it quantizes a rescaled axis); with the carried
    cut as a candidate, no label's dev F1 falls below the uncalibrated model's."""
    grid = tune_thresholds(probs, labels)
    better = np.array(f1_scores(probs, labels, grid).per_label) > np.array(
        f1_scores(probs, labels, carried).per_label
    )
    return np.where(better, grid, carried).astype(np.float32)


@dataclass(frozen=True)
class TemperatureFit:
    method: str
    temperatures: Array  # (L,), rounded to TEMPERATURE_DECIMALS
    global_temperature: float
    fallback_labels: list[int]  # labels without both classes in dev: they got the global temperature


def _mean_nll(logits: Array, gold: Array, log_t: Array) -> Array:
    """Per-column mean binary cross-entropy of ``sigmoid(logits / exp(log_t))``."""
    sign = np.where(gold, 1.0, -1.0)
    return np.asarray(np.logaddexp(0.0, -sign * logits / np.exp(log_t)).mean(axis=0))


def _golden_section(f: Callable[[Array], Array], lo: float, hi: float, columns: int) -> Array:
    """Per-column minimizer of ``f`` over [lo, hi]; ``f`` maps one point per column to one value each.

    Exact for unimodal functions, which the NLL in log T is: in 1/T it is a sum of softplus terms of a
    linear function (convex), and log T is monotone in 1/T.
    """
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = np.full(columns, lo), np.full(columns, hi)
    for _ in range(_GOLDEN_ITERATIONS):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        left = f(c) <= f(d)
        a, b = np.where(left, a, c), np.where(left, d, b)
    return np.asarray((a + b) / 2.0)


def _fit_columns(logits: Array, gold: Array) -> Array:
    lo, hi = (math.log(t) for t in TEMPERATURE_BOUNDS)
    log_t = _golden_section(lambda x: _mean_nll(logits, gold, x), lo, hi, logits.shape[1])
    return np.asarray(np.exp(log_t))


def fit_temperatures(logits: Array, labels: Array, method: str = PER_LABEL) -> TemperatureFit:
    """Temperatures minimizing the binary cross-entropy of ``labels`` (n, L) on ``logits`` (n, L).

    Per label by default; a label lacking positives or negatives in the data has no finite optimum
    (any T within bounds separates it as well as any other), so it takes the global temperature.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    if logits.shape != labels.shape or logits.ndim != 2:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} must be the same (n, L) shape")
    n_labels = logits.shape[1]
    if method == NONE:
        return TemperatureFit(NONE, np.ones(n_labels), 1.0, [])
    z = logits.astype(np.float64)
    gold = labels > 0.5
    global_t = float(_fit_columns(z.reshape(-1, 1), gold.reshape(-1, 1))[0])
    temperatures = np.full(n_labels, global_t)
    fallback: list[int] = []
    if method == PER_LABEL:
        positives = gold.sum(axis=0)
        fittable = (positives > 0) & (positives < gold.shape[0])
        fallback = [int(i) for i in np.flatnonzero(~fittable)]
        if fittable.any():
            temperatures[fittable] = _fit_columns(z[:, fittable], gold[:, fittable])
    if fallback:
        log.info("labels %s lack positives or negatives: global temperature %.3f", fallback, global_t)
    return TemperatureFit(
        method,
        np.round(temperatures, TEMPERATURE_DECIMALS),
        round(global_t, TEMPERATURE_DECIMALS),
        fallback,
    )


@dataclass(frozen=True)
class Mapping:
    """What the postprocess model applies to one variant's logits: temperatures, then thresholds."""

    fit: TemperatureFit
    thresholds: Array  # (L,) on the calibrated scale
    uncalibrated_thresholds: Array  # (L,) tuned on the raw sigmoid: the "before" of the calibration gate

    @property
    def temperatures(self) -> Array:
        return self.fit.temperatures


def fit_mapping(logits: Array, labels: Array, method: str = PER_LABEL) -> Mapping:
    """Temperatures fitted on ``logits``, then per-label thresholds tuned on the calibrated probabilities
    (each label keeps the better of the grid optimum and its carried-over uncalibrated cut)."""
    fit = fit_temperatures(logits, labels, method)
    uncalibrated = tune_thresholds(calibrated_probabilities(logits), labels)
    thresholds = retune_thresholds(
        calibrated_probabilities(logits, fit.temperatures),
        labels,
        carry_thresholds(uncalibrated, fit.temperatures),
    )
    return Mapping(fit, thresholds, uncalibrated)


@dataclass(frozen=True)
class Reliability:
    """Equal-width bins over predicted probability: how often the label was there in each."""

    edges: Array  # (bins + 1,)
    counts: Array  # (bins,) (text, label) pairs per bin
    confidence: Array  # (bins,) mean predicted probability; NaN where empty
    frequency: Array  # (bins,) observed positive rate; NaN where empty
    ece: float

    def as_dict(self) -> dict[str, object]:
        def clean(a: Array) -> list[float | None]:
            return [None if math.isnan(x) else round(float(x), 6) for x in a]

        return {
            "ece": round(self.ece, 6),
            "bin_edges": [round(float(e), 6) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "confidence": clean(self.confidence),
            "frequency": clean(self.frequency),
        }


def reliability(probs: Array, labels: Array, bins: int = ECE_BINS) -> Reliability:
    """Reliability bins and ECE over every (text, label) pair of ``probs`` and multi-hot ``labels``.

    Multi-label: each pair is one binary prediction whose confidence is its probability; bins are
    [k/bins, (k+1)/bins), the last one closed. ECE = sum over bins of (pairs / all) * |confidence - rate|.
    """
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ in shape")
    p = probs.astype(np.float64).ravel()
    y = (labels > 0.5).astype(np.float64).ravel()
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts > 0, sum_p / counts, np.nan)
        frequency = np.where(counts > 0, sum_y / counts, np.nan)
    ece = float(np.abs(sum_p - sum_y).sum() / max(p.size, 1))
    return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, confidence, frequency, ece)


def expected_calibration_error(probs: Array, labels: Array, bins: int = ECE_BINS) -> float:
    return reliability(probs, labels, bins).ece


def per_label_ece(probs: Array, labels: Array, bins: int = ECE_BINS) -> list[float]:
    return [expected_calibration_error(probs[:, i], labels[:, i], bins) for i in range(probs.shape[1])]


def reliability_diagram(before: Reliability, after: Reliability, path: Path, title: str = "") -> Path:
    """Before | after: observed positive rate against mean confidence per bin, the diagonal, and the
    pairs per bin (log scale: most pairs sit near 0) underneath."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, 2, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, squeeze=False
    )
    for col, (name, rel) in enumerate((("before (T = 1)", before), ("after temperature scaling", after))):
        top, bottom = axes[0][col], axes[1][col]
        centers = (rel.edges[:-1] + rel.edges[1:]) / 2
        width = float(rel.edges[1] - rel.edges[0])
        filled = rel.counts > 0
        top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
        top.bar(
            centers[filled],
            rel.frequency[filled],
            width=width * 0.9,
            color="tab:blue",
            alpha=0.35,
            label="observed rate (bin centre)",
        )
        top.plot(
            rel.confidence[filled],
            rel.frequency[filled],
            "o-",
            color="tab:blue",
            label="observed rate at mean confidence",
        )
        top.set_title(f"{name}: ECE {rel.ece:.4f}")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("observed frequency")
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centers[filled], rel.counts[filled], width=width * 0.9, color="tab:grey")
        bottom.set_yscale("log")
        bottom.set_ylabel("pairs")
        bottom.set_xlabel("predicted probability (confidence)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
