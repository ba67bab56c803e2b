"""Multi-label metrics and per-label threshold tuning (sigmoid per label, never softmax)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from export.arrays import Array

# Candidate thresholds for tuning; a coarse grid keeps tuning stable on rare labels.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def sigmoid(logits: Array) -> Array:
    # float64 and clip: exp overflow warnings on extreme logits would otherwise pollute logs.
    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -50, 50)))


@dataclass(frozen=True)
class F1Scores:
    micro: float
    macro: float
    per_label: list[float]

    def as_dict(self) -> dict[str, float]:
        return {"micro_f1": round(self.micro, 4), "macro_f1": round(self.macro, 4)}


def _f1(tp: Array, fp: Array, fn: Array) -> Array:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def f1_scores(probs: Array, labels: Array, thresholds: Array | float = 0.5) -> F1Scores:
    """Micro and macro F1 of ``probs >= thresholds`` against multi-hot ``labels`` (n, L)."""
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ in shape")
    pred = probs >= np.asarray(thresholds)
    gold = labels > 0.5
    tp = (pred & gold).sum(axis=0).astype(np.float64)
    fp = (pred & ~gold).sum(axis=0).astype(np.float64)
    fn = (~pred & gold).sum(axis=0).astype(np.float64)
    per_label = _f1(tp, fp, fn)
    micro = float(_f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0])
    return F1Scores(micro=micro, macro=float(per_label.mean()), per_label=per_label.tolist())


def tune_thresholds(probs: Array, labels: Array, grid: Array = THRESHOLD_GRID) -> Array:
    """Per-label threshold maximizing that label's F1 on the given (dev) split.

    Ties go to the threshold closest to 0.5, so a label with no signal keeps a neutral cut.
    """
    gold = labels > 0.5
    # (grid, n, L) would be large; loop over the grid instead: 91 passes over (n, L) booleans.
    best = np.full(labels.shape[1], 0.5)
    best_f1 = np.full(labels.shape[1], -1.0)
    for t in sorted(grid, key=lambda g: abs(g - 0.5)):
        pred = probs >= t
        tp = (pred & gold).sum(axis=0).astype(np.float64)
        fp = (pred & ~gold).sum(axis=0).astype(np.float64)
        fn = (~pred & gold).sum(axis=0).astype(np.float64)
        f1 = _f1(tp, fp, fn)
        better = f1 > best_f1
        best[better] = t
        best_f1[better] = f1[better]
    return best.astype(np.float32)


def precision_lower_bound(true_positives: int, predicted: int, confidence: float) -> float:
    """The one-sided ``confidence`` Wilson lower bound of a precision of ``true_positives`` in ``predicted``
    (the lower end of the two-sided interval at ``2 * confidence - 1``)."""
    interval = binomtest(true_positives, predicted).proportion_ci(2 * confidence - 1, method="wilson")
    return float(interval.low)


def _recall_first_cut(
    probs: Array, gold: Array, floor: float, confidence: float | None, grid: Array
) -> float | None:
    """The cut with the most true positives whose precision (or its lower bound at ``confidence``) is at
    least ``floor``; of equal counts, the higher cut. None where no cut reaches the floor."""
    best: tuple[int, float] | None = None  # (true positives, cut)
    for t in grid:
        pred = probs >= t
        tp, n = int((pred & gold).sum()), int(pred.sum())
        if not tp:
            continue
        precision = tp / n if confidence is None else precision_lower_bound(tp, n, confidence)
        if precision >= floor:
            best = max(best or (tp, float(t)), (tp, float(t)))
    return None if best is None else best[1]


def recall_first_thresholds(
    probs: Array,
    labels: Array,
    min_precision: Array,
    fallback: Array,
    grid: Array = THRESHOLD_GRID,
    confidence: float | None = None,
) -> Array:
    """Per label with a precision floor (a finite ``min_precision``): the cut with the highest recall
    whose precision on this (dev) split is at least the floor; of equal recalls, the higher cut. With a
    ``confidence``, the precision's one-sided Wilson lower bound at that confidence must reach the floor
    (the lowest cut whose point estimate crosses it is biased upward: it was chosen for crossing); where
    no cut reaches that, the point estimate decides. A label without a floor, or whose floor no cut
    reaches, keeps its ``fallback`` cut."""
    gold = labels > 0.5
    chosen = np.asarray(fallback, dtype=np.float32).copy()
    for j in np.flatnonzero(np.isfinite(min_precision)):
        rules = (confidence, None) if confidence is not None else (None,)
        for rule in rules:
            cut = _recall_first_cut(probs[:, j], gold[:, j], float(min_precision[j]), rule, grid)
            if cut is not None:
                chosen[j] = cut
                break
    return chosen


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 2024


def _resample_weights(n: int, resamples: int, seed: int) -> Array:
    """Row 0: every text once (the point estimate); then ``resamples`` draws of ``n`` texts with
    replacement, as counts per text (so tp/fp/fn per label are one matrix product). The same seed draws
    the same texts for every model: intervals of a difference are paired."""
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    return np.vstack([np.ones(n), draws]).astype(np.float64)


def _weighted_counts(weights: Array, pred: Array, gold: Array) -> tuple[Array, Array, Array]:
    """tp, fp, fn per (weight row, label) for 0/1 ``pred`` and ``gold``."""
    return weights @ (pred * gold), weights @ (pred * (1 - gold)), weights @ ((1 - pred) * gold)


def _interval(values: Array) -> list[float]:
    """The 95% percentile interval of resampled ``values``, rounded as the reports print it."""
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def bootstrap_f1(
    probs: Array,
    labels: Array,
    thresholds: Array | float = 0.5,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, object]:
    """Micro/macro-F1 with 95% percentile intervals from resampling texts with replacement."""
    pred = (probs >= np.asarray(thresholds)).astype(np.float64)
    gold = (labels > 0.5).astype(np.float64)
    point = f1_scores(probs, labels, thresholds)
    tp, fp, fn = _weighted_counts(_resample_weights(probs.shape[0], resamples, seed)[1:], pred, gold)
    macro = _f1(tp, fp, fn).mean(axis=1)
    micro = _f1(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
    return {
        "macro_f1": round(point.macro, 4),
        "macro_f1_ci95": _interval(macro),
        "micro_f1": round(point.micro, 4),
        "micro_f1_ci95": _interval(micro),
    }


def bootstrap_macro_difference(
    pred_a: Array,
    pred_b: Array,
    labels: Array,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, object]:
    """Macro-F1 of predictions ``a`` minus that of ``b`` on the same texts, with a paired 95% percentile
    interval: each resample draws the same texts for both, so what the two share cancels out."""
    gold = (labels > 0.5).astype(np.float64)
    weights = _resample_weights(gold.shape[0], resamples, seed)

    def macro(pred: Array) -> Array:
        return np.asarray(
            _f1(*_weighted_counts(weights, np.asarray(pred, dtype=np.float64), gold)).mean(axis=1)
        )

    diff = macro(pred_a) - macro(pred_b)
    return {"difference": round(float(diff[0]), 4), "difference_ci95": _interval(diff[1:])}


def bootstrap_per_label(
    probs: Array,
    labels: Array,
    thresholds: Array | float,
    names: list[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, dict[str, object]]:
    """Per label: support, precision, recall and F1 at ``thresholds``, each with a 95% percentile interval
    from resampling texts with replacement (a label never predicted has precision 0)."""
    pred = (probs >= np.asarray(thresholds)).astype(np.float64)
    gold = (labels > 0.5).astype(np.float64)
    tp, fp, fn = _weighted_counts(_resample_weights(probs.shape[0], resamples, seed), pred, gold)
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics = {
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
            "f1": _f1(tp, fp, fn),
        }
    out: dict[str, dict[str, object]] = {}
    for j, name in enumerate(names):
        row: dict[str, object] = {"support": int(gold[:, j].sum())}
        for key, values in metrics.items():
            row[key] = round(float(values[0, j]), 4)
            row[f"{key}_ci95"] = _interval(values[1:, j])
        out[name] = row
    return out
