"""Fit the intervention risk from outcomes (``python -m export fit-policy``), and say whether the fit beats
the hand-set policy on a held-out later period.

Pairs are (features, outcome) joined from the audit trail (``audit_log.features`` ↔ ``audit_outcomes``), or
generated from a known ground-truth process (``--synthetic``: the check that the fit recovers it). The
target is "needed help": ``abandoned_session``, ``asked_for_help``, ``failed_next_exercise`` and
``intervention_needed`` against ``passed_next_exercise`` and ``intervention_not_needed`` (``other`` is left
out). The inputs are the policy's own risk inputs (learning emotions, negative valence, low readiness) and
the context's error rate, so a fitted model can replace its hand-set weights. The split is by time: the
first 70% fits, the last 30% judges — never shuffled, as a deployment would meet it. Calibrated regularised
logistic regression (scikit-learn) against the hand-set policy's risk score on the same held-out pairs: AUC,
Brier score and a reliability table; the fitted weights are written (``fitted_policy.json``) **only when
both AUC and Brier are better**. Loading a fitted policy in the gateway is not built yet (issue 17).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.arrays import Array

log = logging.getLogger(__name__)

NEEDED_HELP = ("abandoned_session", "asked_for_help", "failed_next_exercise", "intervention_needed")
WENT_WELL = ("passed_next_exercise", "intervention_not_needed")
FIT_SHARE = 0.7
RELIABILITY_BINS = 10
FITTED_FILE = "fitted_policy.json"


@dataclass(frozen=True)
class Pairs:
    inputs: list[str]  # column names of x
    x: Array  # [n, inputs], in time order
    y: Array  # [n] 1 = needed help
    handset_risk: Array  # [n] the hand-set policy's risk score for the same texts


def risk_inputs(features: dict[str, Any], midpoint: float = 0.5) -> dict[str, float]:
    """The policy's risk inputs from an audit row's features (as gateway.learning.state computes them)."""
    valence = float(features["valence"])
    context = features.get("context") or {}
    return {
        **{f"emotion:{k}": float(v) for k, v in (features.get("learning_emotions") or {}).items()},
        "negative_valence": min(1.0, max(0.0, (midpoint - valence) / midpoint)),
        "low_readiness": 1.0 - float(features["readiness_score"]),
        "recent_error_rate": float(context.get("recent_error_rate") or 0.0),
    }


def pairs_from_rows(rows: list[tuple[str, str, str]]) -> Pairs:
    """(ts, features JSON, outcome) rows, oldest first, as Pairs (``other`` and unknown outcomes dropped)."""
    kept = [(json.loads(f), o) for _, f, o in rows if f and o in (*NEEDED_HELP, *WENT_WELL)]
    inputs = sorted({k for f, _ in kept for k in risk_inputs(f)})
    x = np.array([[risk_inputs(f).get(k, 0.0) for k in inputs] for f, _ in kept], dtype=np.float64)
    y = np.array([o in NEEDED_HELP for _, o in kept], dtype=np.float64)
    risk = np.array([float(f.get("risk_score", 0.0)) for f, _ in kept], dtype=np.float64)
    return Pairs(inputs, x.reshape(len(kept), len(inputs)), y, risk)


def pairs_from_sqlite(path: Path) -> Pairs:
    """Every outcome joined to its audit row's features, by time."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT o.ts, a.features, o.outcome FROM audit_outcomes o JOIN audit_log a "
            "ON a.tenant = o.tenant AND a.request_id = o.request_id AND a.text_index = o.text_index "
            "WHERE a.features IS NOT NULL ORDER BY o.ts, o.id"
        ).fetchall()
    return pairs_from_rows(rows)


# ---- the synthetic check: a known process the fit must recover ----------------------------------------

# Ground truth: what actually drives "needed help" in the synthetic world (the hand-set policy weighs
# these differently: it over-weights frustration and under-weights errors and giving up).
TRUE_WEIGHTS = {
    "emotion:giving_up": 3.0,
    "recent_error_rate": 2.5,
    "emotion:discouragement": 1.5,
    "emotion:frustration": 0.5,
    "emotion:confusion": -0.5,  # productive struggle: confused learners who go on do better
}
TRUE_INTERCEPT = -2.5


def synthetic_pairs(n: int, seed: int) -> tuple[Pairs, dict[str, float]]:
    """``n`` pairs from TRUE_WEIGHTS, and the hand-set policy's risk for each (gateway.learning's own)."""
    from contract.names import GOEMOTIONS_LABELS, LEARNING_SIGNALS
    from gateway.learning.policy import load_policy
    from gateway.learning.state import LearnerContext, assess

    rng = np.random.default_rng(seed)
    policy = load_policy()
    rows = []
    for t in range(n):
        probs = {label: float(rng.beta(0.6, 6.0)) for label in (*GOEMOTIONS_LABELS, *LEARNING_SIGNALS)}
        errors = float(rng.beta(1.5, 3.0))
        state = assess(probs, policy, LearnerContext(recent_error_rate=errors))
        features = {
            "learning_emotions": state.learning_emotions,
            "valence": state.valence,
            "readiness_score": state.readiness_score,
            "risk_score": state.risk_score,
            "context": {"recent_error_rate": errors},
        }
        inputs = risk_inputs(features)
        logit = TRUE_INTERCEPT + sum(w * inputs.get(k, 0.0) for k, w in TRUE_WEIGHTS.items())
        needed = rng.random() < 1.0 / (1.0 + math.exp(-logit))
        rows.append(
            (f"{t:09d}", json.dumps(features), "asked_for_help" if needed else "passed_next_exercise")
        )
    return pairs_from_rows(rows), dict(TRUE_WEIGHTS)


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


def fit(pairs: Pairs, c: float = 1.0, truth: dict[str, float] | None = None) -> dict[str, Any]:
    """Fit on the earlier FIT_SHARE, judge on the rest against the hand-set risk (and, for synthetic pairs,
    against the true process itself: the ceiling any fit can reach on that noise)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score

    n = len(pairs.y)
    cut = int(n * FIT_SHARE)
    if cut < 20 or n - cut < 20 or len(set(pairs.y[:cut])) < 2 or len(set(pairs.y[cut:])) < 2:
        raise ValueError(f"{n} usable outcome pairs: too few (or one class only) to fit and judge")
    model = LogisticRegression(C=c, max_iter=1000).fit(pairs.x[:cut], pairs.y[:cut])
    held_x, held_y = pairs.x[cut:], pairs.y[cut:]
    fitted = model.predict_proba(held_x)[:, 1]
    handset = np.clip(pairs.handset_risk[cut:], 0.0, 1.0)
    scores = {
        "fitted": (float(roc_auc_score(held_y, fitted)), float(brier_score_loss(held_y, fitted))),
        "handset": (float(roc_auc_score(held_y, handset)), float(brier_score_loss(held_y, handset))),
    }
    result: dict[str, Any] = {
        "pairs": n,
        "fit_pairs": cut,
        "held_out_pairs": n - cut,
        "held_out_positive_rate": round(float(held_y.mean()), 4),
        "fitted": {
            "auc": round(float(roc_auc_score(held_y, fitted)), 4),
            "brier": round(float(brier_score_loss(held_y, fitted)), 4),
            "reliability": reliability_table(fitted, held_y),
        },
        "handset": {
            "auc": round(float(roc_auc_score(held_y, handset)), 4),
            "brier": round(float(brier_score_loss(held_y, handset)), 4),
            "reliability": reliability_table(handset, held_y),
        },
        "weights": dict(zip(pairs.inputs, (round(float(w), 4) for w in model.coef_[0]), strict=True)),
        "intercept": round(float(model.intercept_[0]), 4),
        "regularisation_c": c,
    }
    if truth is not None:
        columns = {name: i for i, name in enumerate(pairs.inputs)}
        logit = TRUE_INTERCEPT + sum(w * held_x[:, columns[k]] for k, w in truth.items() if k in columns)
        oracle = 1.0 / (1.0 + np.exp(-logit))
        result["true_process"] = {
            "auc": round(float(roc_auc_score(held_y, oracle)), 4),
            "brier": round(float(brier_score_loss(held_y, oracle)), 4),
        }
    # better on both, on the held-out period (compared unrounded)
    result["better"] = (
        scores["fitted"][0] > scores["handset"][0] and scores["fitted"][1] < scores["handset"][1]
    )
    return result


def write(result: dict[str, Any], out: Path) -> list[Path]:
    """The report always; the fitted weights only when they beat the hand-set policy on the held-out part."""
    out.mkdir(parents=True, exist_ok=True)
    report = out / "policy_fit.json"
    report.write_text(json.dumps(result, indent=2) + "\n")
    written = [report]
    fitted = out / FITTED_FILE
    fitted.unlink(missing_ok=True)
    if result["better"]:
        fitted.write_text(
            json.dumps(
                {"form": "logistic", "weights": result["weights"], "intercept": result["intercept"]}, indent=2
            )
            + "\n"
        )
        written.append(fitted)
    else:
        log.warning("the fit does not beat the hand-set policy on the held-out period: no policy written")
    return written


def markdown(result: dict[str, Any], command: str, truth: dict[str, float] | None) -> str:
    f, h = result["fitted"], result["handset"]
    lines = [
        "# The intervention risk fitted from outcomes",
        "",
        f"Command: `{command}`. {result['pairs']} (features, outcome) pairs, time-ordered: the first "
        f"{result['fit_pairs']} fit, the last {result['held_out_pairs']} judge (needed-help rate there "
        f"{result['held_out_positive_rate']:.3f}). Regularised logistic regression "
        f"(C = {result['regularisation_c']}).",
        "",
        "| held-out period | AUC | Brier score |",
        "|---|---:|---:|",
        f"| fitted | **{f['auc']:.4f}** | **{f['brier']:.4f}** |",
        f"| hand-set policy (its risk score) | {h['auc']:.4f} | {h['brier']:.4f} |",
        *(
            [f"| the true process (the ceiling on this noise) | {t['auc']:.4f} | {t['brier']:.4f} |"]
            if (t := result.get("true_process"))
            else []
        ),
        "",
        f"Fitted better on both: **{'yes' if result['better'] else 'no'}** "
        f"({'weights written to ' + FITTED_FILE if result['better'] else 'nothing written'}).",
        "",
        "| input | fitted weight |" + (" true weight |" if truth else ""),
        "|---|---:|" + ("---:|" if truth else ""),
    ]
    for name, weight in sorted(result["weights"].items(), key=lambda kv: -abs(kv[1])):
        true = f" {truth.get(name, 0.0):+.2f} |" if truth else ""
        lines.append(f"| {name} | {weight:+.3f} |{true}")
    lines += ["", "Reliability on the held-out period (predicted vs observed needed-help rate per bin):", ""]
    lines += ["| bin | n | fitted: predicted / observed |", "|---|---:|---|"]
    lines += [
        f"| {b['from']:.1f}-{b['to']:.1f} | {b['n']} | {b['predicted']:.3f} / {b['observed']:.3f} |"
        for b in f["reliability"]
    ]
    lines += ["", "![reliability on the held-out period](policy_fit.png)", ""]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> Path:
    """Reliability on the held-out period: predicted vs observed needed-help rate, fitted and hand-set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfectly calibrated")
    for key, name in (("fitted", "fitted"), ("handset", "hand-set policy")):
        bins = result[key]["reliability"]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                label=f"{name}: AUC {result[key]['auc']:.3f}, Brier {result[key]['brier']:.3f}")  # fmt: skip
    ax.set_xlabel("predicted needed-help probability (risk)")
    ax.set_ylabel("observed needed-help rate")
    ax.set_title(f"held-out period, {result['held_out_pairs']} pairs", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
