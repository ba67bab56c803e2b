"""Fit the learning-state policy from outcomes (``python -m export fit-policy``), judge it against the
hand-set policy on a later period, and write a new policy version only when it is better.

Records are (features, outcome) pairs joined from the audit trail (``audit_log.features`` ↔
``audit_outcomes``, SQLite or PostgreSQL), or generated from a known ground-truth process (``--synthetic``:
the check that the fit recovers it). Two calibrated, regularised logistic regressions (scikit-learn):

- **readiness** = the probability of passing the next exercise (``passed_next_exercise`` against
  ``failed_next_exercise``), from what readiness reads in the gateway (learning emotions, centred VAD,
  context strain), against the hand-set readiness score;
- **risk** = the probability that the learner needs help (``abandoned_session``, ``asked_for_help``,
  ``failed_next_exercise``, ``intervention_needed`` against ``passed_next_exercise``,
  ``intervention_not_needed``; ``other`` is left out), from the intervention's inputs (learning emotions,
  negative valence, low readiness — from the readiness the new policy will serve — context strain), against
  the hand-set risk score.

The inputs are computed by the gateway's own functions (``gateway.learning.state``), so the fitted weights
plug into the policy file unchanged. The split is by time: the first 70% fits, the last 30% judges (never
shuffled, as a deployment meets it): AUC, Brier score, reliability. Cut points for the five intervention
levels are chosen on the fit period to meet stated precision/recall targets (``LEVEL_TARGETS``) and
reported on the held-out period next to the hand-set cut points. The new policy (the base policy plus
``[intervention.risk_model]``, the new cut points and, when it also wins, ``[readiness.model]``) is written
**only when the fitted risk beats the hand-set risk on both AUC and Brier**; it validates with the gateway's
own loader before it is kept, and its version is what ``PUT /v1/policy`` takes.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sqlite3
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.arrays import Array

log = logging.getLogger(__name__)

NEEDED_HELP = ("abandoned_session", "asked_for_help", "failed_next_exercise", "intervention_needed")
WENT_WELL = ("passed_next_exercise", "intervention_not_needed")
PASSED, FAILED = "passed_next_exercise", "failed_next_exercise"
FIT_SHARE = 0.7
RELIABILITY_BINS = 10
FITTED_FILE = "fitted_policy.toml"
# What each intervention level (at or above it) should achieve on needed-help outcomes: the early levels
# catch most who need help (recall), the late ones are rarely wrong (precision). A target the data cannot
# reach is reported as missed, its cut placed where precision is highest.
LEVEL_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("preventive", "recall", 0.95),
    ("mild", "recall", 0.80),
    ("moderate", "precision", 0.50),
    ("significant", "precision", 0.70),
    ("critical", "precision", 0.85),
)
# a precision cut must flag at least this many fit-period pairs (else precision is noise)
MIN_FLAGGED = 20


@dataclass(frozen=True)
class Record:
    ts: str
    features: dict[str, Any]
    outcome: str


@dataclass(frozen=True)
class Pairs:
    inputs: list[str]  # column names of x: the policy's own input names
    x: Array  # [n, inputs], in time order
    y: Array  # [n] 1 = needed help (risk) / passed (readiness)
    handset: Array  # [n] the hand-set policy's score for the same texts


def records_from_rows(rows: Sequence[tuple[Any, str | None, str]]) -> list[Record]:
    """(ts, features JSON, outcome) rows, oldest first; rows without features are left out."""
    return [Record(str(ts), json.loads(f), o) for ts, f, o in rows if f]


def records_from_sqlite(path: Path) -> list[Record]:
    """Every outcome joined to its audit row's features, by time."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(_JOIN).fetchall()
    return records_from_rows(rows)


def records_from_postgres(dsn: str) -> list[Record]:
    """The same join on the PostgreSQL audit trail (features is JSONB there: read as its JSON text)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(_JOIN.replace("a.features,", "a.features::text,")).fetchall()
    return records_from_rows(rows)


_JOIN = (
    "SELECT o.ts, a.features, o.outcome FROM audit_outcomes o JOIN audit_log a "
    "ON a.tenant = o.tenant AND a.request_id = o.request_id AND a.text_index = o.text_index "
    "WHERE a.features IS NOT NULL ORDER BY o.ts, o.id"
)


# ---- inputs, as the gateway computes them -----------------------------------------------------------


def _strain(features: dict[str, Any], policy: Any) -> float | None:
    from gateway.learning.state import LearnerContext, context_strain

    context = {k: v for k, v in (features.get("context") or {}).items() if k in _CONTEXT_FIELDS}
    return context_strain(LearnerContext(**context), policy) if context else None


_CONTEXT_FIELDS = ("time_on_task_seconds", "recent_error_rate", "consecutive_errors")


def readiness_row(features: dict[str, Any], policy: Any) -> dict[str, float]:
    from gateway.learning.state import readiness_inputs

    vad = (float(features["valence"]), float(features["arousal"]), float(features["dominance"]))
    emotions = {k: float(v) for k, v in (features.get("learning_emotions") or {}).items()}
    return readiness_inputs(emotions, vad, _strain(features, policy), policy.vad_scoring.scale_midpoint)


def risk_row(features: dict[str, Any], policy: Any, readiness: float) -> dict[str, float]:
    """The gateway's risk inputs, its trend inputs included (all 0 when the row recorded no trend: no
    learner, or written before migration 0003), exactly as ``assess`` builds them for the risk model."""
    from gateway.learning.policy import trend_inputs
    from gateway.learning.state import risk_inputs

    emotions = {k: float(v) for k, v in (features.get("learning_emotions") or {}).items()}
    midpoint = policy.vad_scoring.scale_midpoint
    row = risk_inputs(emotions, float(features["valence"]), readiness, _strain(features, policy), midpoint)
    trend = features.get("trend")
    return {**row, **trend_inputs(None if trend is None else str(trend))}


def _pairs(rows: list[dict[str, float]], y: list[float], handset: list[float]) -> Pairs:
    inputs = sorted({k for r in rows for k in r})
    x = np.array([[r.get(k, 0.0) for k in inputs] for r in rows], dtype=np.float64)
    return Pairs(inputs, x.reshape(len(rows), len(inputs)), np.array(y), np.array(handset, dtype=np.float64))


def readiness_pairs(records: list[Record], policy: Any) -> Pairs:
    """Exercise outcomes: passed (1) or failed (0), with the hand-set readiness score."""
    kept = [r for r in records if r.outcome in (PASSED, FAILED)]
    return _pairs(
        [readiness_row(r.features, policy) for r in kept],
        [float(r.outcome == PASSED) for r in kept],
        [float(r.features["readiness_score"]) for r in kept],
    )


def risk_pairs(
    records: list[Record], policy: Any, readiness: Callable[[dict[str, float]], float] | None = None
) -> Pairs:
    """Needed help (1) or went well (0), with the hand-set risk score; ``low_readiness`` from ``readiness``
    (a fitted model of readiness_row) when given, else from the stored hand-set readiness score."""
    kept = [r for r in records if r.outcome in (*NEEDED_HELP, *WENT_WELL)]

    def ready(features: dict[str, Any]) -> float:
        if readiness is None:
            return float(features["readiness_score"])
        return readiness(readiness_row(features, policy))

    return _pairs(
        [risk_row(r.features, policy, ready(r.features)) for r in kept],
        [float(r.outcome in NEEDED_HELP) for r in kept],
        [float(r.features.get("risk_score", 0.0)) for r in kept],
    )


# ---- the synthetic check: a known process the fit must recover ----------------------------------------

# Ground truth: what actually drives "needed help" in the synthetic world (the hand-set policy weighs
# these differently: it over-weights frustration and under-weights errors and giving up). Passing the next
# exercise is the other side of the same process (P(pass) = 1 - P(needed help)).
TRUE_WEIGHTS = {
    "giving_up": 3.0,
    "context_strain": 2.5,  # the synthetic context has only an error rate: strain = the error rate
    "discouragement": 1.5,
    "frustration": 0.5,
    "confusion": -0.5,  # productive struggle: confused learners who go on do better
}
TRUE_INTERCEPT = -2.5
# The learner's trend matters too (risk only: readiness is about the next exercise, from this message):
# a declining learner needs help more often, a recovering one less, beyond what this message shows.
TRUE_TREND_WEIGHTS = {"trend_declining": 1.2, "trend_recovering": -0.8}
TREND_SHARES = {
    "insufficient_data": 0.2,
    "stable": 0.3,
    "improving": 0.15,
    "declining": 0.15,
    "volatile": 0.1,
    "recovering": 0.1,
}


def synthetic_records(n: int, seed: int) -> list[Record]:
    """``n`` texts with random label probabilities and error rates, assessed by the shipped policy; each gets
    one outcome from TRUE_WEIGHTS: half a help outcome, half an exercise outcome."""
    from contract.names import GOEMOTIONS_LABELS, LEARNING_SIGNALS
    from gateway.learning.policy import load_policy
    from gateway.learning.state import LearnerContext, assess

    rng = np.random.default_rng(seed)
    policy = load_policy()
    trends, shares = list(TREND_SHARES), list(TREND_SHARES.values())
    records = []
    for t in range(n):
        probs = {label: float(rng.beta(0.6, 6.0)) for label in (*GOEMOTIONS_LABELS, *LEARNING_SIGNALS)}
        errors = float(rng.beta(1.5, 3.0))
        trend = str(rng.choice(trends, p=shares))
        state = assess(probs, policy, LearnerContext(recent_error_rate=errors), trend)
        features = state.features({"recent_error_rate": errors}, trend)
        inputs = {**state.learning_emotions, "context_strain": errors, f"trend_{trend}": 1.0}
        truth = {**TRUE_WEIGHTS, **TRUE_TREND_WEIGHTS}
        logit = TRUE_INTERCEPT + sum(w * inputs.get(k, 0.0) for k, w in truth.items())
        needed = rng.random() < 1.0 / (1.0 + math.exp(-logit))
        if rng.random() < 0.5:
            outcome = "asked_for_help" if needed else "intervention_not_needed"
        else:
            outcome = FAILED if needed else PASSED
        records.append(Record(f"{t:09d}", features, outcome))
    return records


# ---- fit and judge ----------------------------------------------------------------------------------


def reliability_table(p: Array, y: Array, bins: int = RELIABILITY_BINS) -> list[dict[str, float]]:
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in itertools.pairwise(edges):
        inside = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if inside.any():
            out.append(
                {
                    "from": round(float(lo), 2),
                    "to": round(float(hi), 2),
                    "n": int(inside.sum()),
                    "predicted": round(float(p[inside].mean()), 4),
                    "observed": round(float(y[inside].mean()), 4),
                }
            )
    return out


def _split(n: int) -> int:
    return int(n * FIT_SHARE)


def fit(
    pairs: Pairs, c: float = 1.0, truth: dict[str, float] | None = None, sign: float = 1.0
) -> dict[str, Any]:
    """Fit on the earlier FIT_SHARE, judge on the rest against the hand-set score (and, for synthetic pairs,
    against the true process: the ceiling any fit can reach on that noise; ``sign`` -1 when the target is
    the other side of it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score

    n = len(pairs.y)
    cut = _split(n)
    if cut < 20 or n - cut < 20:
        raise ValueError(f"{n} usable outcome pairs: too few to fit and judge")
    if len(set(pairs.y[:cut])) < 2 or len(set(pairs.y[cut:])) < 2:
        raise ValueError(f"{n} usable outcome pairs: one class only in the fit or the held-out period")
    model = LogisticRegression(C=c, max_iter=1000).fit(pairs.x[:cut], pairs.y[:cut])
    held_x, held_y = pairs.x[cut:], pairs.y[cut:]
    fitted = model.predict_proba(held_x)[:, 1]
    handset = np.clip(pairs.handset[cut:], 0.0, 1.0)
    raw = {
        "fitted": (float(roc_auc_score(held_y, fitted)), float(brier_score_loss(held_y, fitted))),
        "handset": (float(roc_auc_score(held_y, handset)), float(brier_score_loss(held_y, handset))),
    }
    result: dict[str, Any] = {
        "pairs": n,
        "fit_pairs": cut,
        "held_out_pairs": n - cut,
        "held_out_positive_rate": round(float(held_y.mean()), 4),
        "fitted": {
            "auc": round(raw["fitted"][0], 4),
            "brier": round(raw["fitted"][1], 4),
            "reliability": reliability_table(fitted, held_y),
        },
        "handset": {
            "auc": round(raw["handset"][0], 4),
            "brier": round(raw["handset"][1], 4),
            "reliability": reliability_table(handset, held_y),
        },
        "weights": dict(zip(pairs.inputs, (float(w) for w in model.coef_[0]), strict=True)),
        "intercept": float(model.intercept_[0]),
        "regularisation_c": c,
    }
    if truth is not None:
        columns = {name: i for i, name in enumerate(pairs.inputs)}
        logit = TRUE_INTERCEPT + sum(w * held_x[:, columns[k]] for k, w in truth.items() if k in columns)
        oracle = 1.0 / (1.0 + np.exp(-sign * logit))
        result["true_process"] = {
            "auc": round(float(roc_auc_score(held_y, oracle)), 4),
            "brier": round(float(brier_score_loss(held_y, oracle)), 4),
        }
    # better on both, on the held-out period (compared unrounded)
    result["better"] = raw["fitted"][0] > raw["handset"][0] and raw["fitted"][1] < raw["handset"][1]
    return result


def probability(result: dict[str, Any]) -> Callable[[Mapping[str, float]], float]:
    """The fitted model as a function of a row of named inputs: the gateway's own LogisticModel."""
    from gateway.learning.policy import LogisticModel

    model = LogisticModel(form="logistic", intercept=result["intercept"], weights=result["weights"])
    return model.probability


def flagged_metrics(scores: Array, y: Array, cut: float) -> dict[str, float]:
    """Precision and recall of "score >= cut" for needed help."""
    flagged = scores >= cut
    hits = float((flagged & (y == 1)).sum())
    return {
        "flagged": int(flagged.sum()),
        "precision": round(hits / flagged.sum(), 4) if flagged.any() else float("nan"),
        "recall": round(hits / (y == 1).sum(), 4) if (y == 1).any() else float("nan"),
    }


def choose_cut_points(
    scores: Array, y: Array, targets: Sequence[tuple[str, str, float]] = LEVEL_TARGETS
) -> tuple[list[float], list[dict[str, Any]]]:
    """One cut per level, the lowest (precision) or highest (recall) score that meets its target on
    (scores, y); a missed target says so. Cuts strictly increase (a later level never flags more)."""
    candidates = np.unique(np.round(scores, 4))
    cuts: list[float] = []
    chosen: list[dict[str, Any]] = []
    floor = MIN_FLAGGED
    for level, metric, target in targets:
        stats = [(float(c), flagged_metrics(scores, y, float(c))) for c in candidates]
        if metric == "recall":
            ok = [c for c, s in stats if s["recall"] >= target]
            cut, met = (max(ok), True) if ok else (float(candidates[0]), False)
        else:
            supported = [(c, s) for c, s in stats if s["flagged"] >= floor]
            ok = [c for c, s in supported if s["precision"] >= target]
            if ok:
                cut, met = min(ok), True
            else:  # not reachable: where precision is highest with enough support
                cut, met = max(supported, key=lambda cs: cs[1]["precision"])[0], False
        if cuts and cut <= cuts[-1]:
            cut = cuts[-1] + 0.001
        cut = min(cut, 0.995 + 0.001 * len(cuts))
        cuts.append(round(cut, 4))
        chosen.append({"level": level, "metric": metric, "target": target, "met_on_fit_period": met})
    return cuts, chosen


def level_table(
    scores: Array, y: Array, cuts: Sequence[float], levels: Sequence[str]
) -> list[dict[str, Any]]:
    return [
        {"level": lv, "cut": c, **flagged_metrics(scores, y, c)} for lv, c in zip(levels, cuts, strict=True)
    ]


def fit_policy(
    records: list[Record], base_path: Path | None = None, c: float = 1.0, synthetic: bool = False
) -> dict[str, Any]:
    """Readiness, then risk (its low_readiness from the readiness the new policy will serve), then cut
    points; every score against the hand-set policy on the same held-out period."""
    from gateway.learning.policy import load_policy

    policy = load_policy(base_path)
    truth = TRUE_WEIGHTS if synthetic else None
    risk_truth = {**TRUE_WEIGHTS, **TRUE_TREND_WEIGHTS} if synthetic else None
    out: dict[str, Any] = {"base_policy": policy.identity, "records": len(records)}
    readiness_model: Callable[[dict[str, float]], float] | None = None
    try:
        ready = fit(readiness_pairs(records, policy), c, truth, sign=-1.0)
    except ValueError as exc:
        ready = {"skipped": str(exc), "better": False}
    out["readiness"] = ready
    if ready["better"]:
        readiness_model = probability(ready)
    pairs = risk_pairs(records, policy, readiness_model)
    risk = fit(pairs, c, risk_truth)
    out["risk"] = risk
    cut = _split(len(pairs.y))
    fit_scores = np.array([probability(risk)(dict(zip(pairs.inputs, row, strict=True))) for row in pairs.x])
    cuts, chosen = choose_cut_points(fit_scores[:cut], pairs.y[:cut])
    levels = list(policy.intervention.levels[1:])
    out["cut_points"] = cuts
    out["level_targets"] = chosen
    out["levels_held_out"] = {
        "fitted": level_table(fit_scores[cut:], pairs.y[cut:], cuts, levels),
        "handset": level_table(
            np.clip(pairs.handset[cut:], 0, 1), pairs.y[cut:], policy.intervention.cut_points, levels
        ),
    }
    out["better"] = risk["better"]
    return out


def policy_data(result: dict[str, Any], base_path: Path | None = None) -> dict[str, Any]:
    """The new policy: the base file's values plus the fitted models and cut points."""
    from gateway.learning.policy import DEFAULT_POLICY_PATH

    data = tomllib.loads((base_path or DEFAULT_POLICY_PATH).read_text())
    risk = result["risk"]
    data["intervention"]["cut_points"] = result["cut_points"]
    # the trend is among the fitted model's inputs (when the outcomes' rows recorded one): no hand-set
    # adjustment on top of a calibrated probability
    data["intervention"]["trend_adjustment"] = {}
    data["intervention"]["risk_model"] = _model(risk, result["records"])
    if result["readiness"].get("better"):
        data["readiness"]["model"] = _model(result["readiness"], result["records"])
    return data


def _model(fitted: dict[str, Any], records: int) -> dict[str, Any]:
    return {
        "form": "logistic",
        "intercept": round(fitted["intercept"], 6),
        "weights": {k: round(w, 6) for k, w in fitted["weights"].items()},
        "fitted": {
            "records": records,
            "pairs": fitted["pairs"],
            "held_out_pairs": fitted["held_out_pairs"],
            "held_out_auc": fitted["fitted"]["auc"],
            "held_out_brier": fitted["fitted"]["brier"],
            "hand_set_auc": fitted["handset"]["auc"],
            "hand_set_brier": fitted["handset"]["brier"],
        },
    }


def write_policy(path: Path, header: str, data: dict[str, Any] | None) -> str | None:
    """Replace the policy file at ``path``: the stale one is removed; with ``data``, the new one is written
    (``header`` comments, then TOML) and validated by the gateway's loader, and its version returned. A
    policy the gateway would refuse is removed, then the error raised."""
    import tomli_w

    from gateway.learning.policy import PolicyError, load_policy

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if data is None:
        return None
    path.write_text(header + tomli_w.dumps(data))
    try:
        return load_policy(path).identity
    except PolicyError:
        path.unlink()  # never leave a policy the gateway would refuse
        raise


def write(result: dict[str, Any], out: Path, base_path: Path | None = None) -> list[Path]:
    """The report always; the new policy only when its risk beats the hand-set one on the held-out part
    (validated by the gateway's loader; its version goes into the report)."""
    header = (
        "# Written by `python -m export fit-policy` from outcome feedback (see policy_fit.md): the base\n"
        f"# policy {result['base_policy']} plus a fitted risk model, cut points chosen for the level\n"
        "# targets and, when it won too, a fitted readiness model. Deploy: copy it into\n"
        "# GATEWAY_POLICY_DIR, then PUT /v1/policy with its version.\n"
    )
    result.pop("policy_version", None)
    data = policy_data(result, base_path) if result["better"] else None
    version = write_policy(out / FITTED_FILE, header, data)
    if version is None:
        log.warning("the fit does not beat the hand-set policy on the held-out period: no policy written")
    else:
        result["policy_version"] = version
    report = out / "policy_fit.json"
    report.write_text(json.dumps(result, indent=2) + "\n")
    return [report] if version is None else [report, out / FITTED_FILE]


def _scores(name: str, part: dict[str, Any]) -> list[str]:
    if "skipped" in part:
        return [f"{name}: not fitted ({part['skipped']}).", ""]
    f, h = part["fitted"], part["handset"]
    lines = [
        f"{part['pairs']} pairs: the first {part['fit_pairs']} fit, the last {part['held_out_pairs']} judge "
        f"(positive rate there {part['held_out_positive_rate']:.3f}).",
        "",
        "| held-out period | AUC | Brier score |",
        "|---|---:|---:|",
        f"| fitted | **{f['auc']:.4f}** | **{f['brier']:.4f}** |",
        f"| hand-set policy | {h['auc']:.4f} | {h['brier']:.4f} |",
    ]
    if t := part.get("true_process"):
        lines.append(f"| the true process (the ceiling on this noise) | {t['auc']:.4f} | {t['brier']:.4f} |")
    lines += ["", f"Fitted better on both: **{'yes' if part['better'] else 'no'}**.", ""]
    return lines


def _weights(part: dict[str, Any], truth: dict[str, float] | None, sign: float) -> list[str]:
    if "weights" not in part:
        return []
    lines = [
        "| input | fitted weight |" + (" true weight |" if truth else ""),
        "|---|---:|" + ("---:|" if truth else ""),
    ]
    for name, weight in sorted(part["weights"].items(), key=lambda kv: -abs(kv[1])):
        true = f" {sign * truth.get(name, 0.0):+.2f} |" if truth else ""
        lines.append(f"| {name} | {weight:+.3f} |{true}")
    return [*lines, ""]


def markdown(result: dict[str, Any], command: str, truth: dict[str, float] | None) -> str:
    written = result.get("policy_version")
    verdict = (
        f"`{written}` ({FITTED_FILE})" if written else "no (the fitted risk did not beat the hand-set one)"
    )
    c = result["risk"]["regularisation_c"]
    lines = [
        "# The learning-state policy fitted from outcomes",
        "",
        f"Command: `{command}`. {result['records']} (features, outcome) records, time-ordered; base policy "
        f"`{result['base_policy']}`. Regularised logistic regression (C = {c}).",
        "",
        f"**New policy written: {verdict}.**",
        "",
        "## Risk: the learner needs help",
        "",
        *_scores("risk", result["risk"]),
        *_weights(result["risk"], {**truth, **TRUE_TREND_WEIGHTS} if truth else None, 1.0),
        "## Readiness: the learner passes the next exercise",
        "",
        *_scores("readiness", result["readiness"]),
        *_weights(result["readiness"], truth, -1.0),
        "## Intervention levels on the held-out period",
        "",
        "Each level flags the texts at or above its cut. Fitted cuts are chosen on the fit period for the "
        "target; the hand-set cuts are the base policy's (floors not applied here).",
        "",
        "| level | target | fitted cut | precision | recall | flagged "
        "| hand-set cut | precision | recall | flagged |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    held = result["levels_held_out"]
    for target, f, h in zip(result["level_targets"], held["fitted"], held["handset"], strict=True):
        missed = "" if target["met_on_fit_period"] else " (missed on the fit period)"
        lines.append(
            f"| {f['level']} | {target['metric']} ≥ {target['target']:.2f}{missed} | {f['cut']:.3f} | "
            f"{f['precision']:.3f} | {f['recall']:.3f} | {f['flagged']} | {h['cut']:.2f} | "
            f"{h['precision']:.3f} | {h['recall']:.3f} | {h['flagged']} |"
        )
    lines += ["", "![reliability on the held-out period](policy_fit.png)", ""]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> Path:
    """Reliability on the held-out period, risk and readiness: predicted vs observed, fitted and hand-set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [
        (k, t)
        for k, t in (("risk", "risk: needs help"), ("readiness", "readiness: passes next"))
        if "fitted" in result[k]
    ]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], parts, strict=True):
        part = result[key]
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfectly calibrated")
        for which, name in (("fitted", "fitted"), ("handset", "hand-set policy")):
            bins = part[which]["reliability"]
            scores = part[which]
            label = f"{name}: AUC {scores['auc']:.3f}, Brier {scores['brier']:.3f}"
            ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label=label)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed rate")
        ax.set_title(f"{title} (held out, {part['held_out_pairs']} pairs)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
