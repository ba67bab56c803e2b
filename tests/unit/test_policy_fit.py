"""The policy fit from outcomes (export.policy_fit): it recovers a known process, judges on a later period
against the hand-set policy, chooses cut points for the level targets, and writes a new policy version —
one the gateway's loader accepts — only when the fitted risk is better there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export import policy_fit
from export.policy_fit import (
    FITTED_FILE,
    TRUE_WEIGHTS,
    Pairs,
    Record,
    choose_cut_points,
    fit,
    fit_policy,
    readiness_pairs,
    risk_pairs,
    synthetic_records,
    write,
)
from gateway.learning.policy import load_policy
from gateway.learning.state import assess


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic_records(10_000, seed=7)


@pytest.fixture(scope="module")
def result(records) -> dict:
    return fit_policy(records, synthetic=True)


def _order(weights: dict[str, float], names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: -weights[n])


def test_the_risk_fit_recovers_the_sign_and_order_of_the_true_weights(records):
    fitted = fit(risk_pairs(records, load_policy()), truth=TRUE_WEIGHTS)["weights"]
    for name, weight in TRUE_WEIGHTS.items():
        assert np.sign(fitted[name]) == np.sign(weight), name
    positive = _order(TRUE_WEIGHTS, [n for n, w in TRUE_WEIGHTS.items() if w > 0])
    assert _order(fitted, positive) == positive  # the same order as the truth


def test_the_readiness_fit_recovers_the_other_side_of_the_process(result):
    fitted = result["readiness"]["weights"]
    for name, weight in TRUE_WEIGHTS.items():
        assert np.sign(fitted[name]) == -np.sign(weight), name
    negative = _order(TRUE_WEIGHTS, [n for n, w in TRUE_WEIGHTS.items() if w > 0])
    assert _order({n: -w for n, w in fitted.items()}, negative) == negative


def test_both_fits_beat_the_hand_set_policy_on_the_later_period_and_reach_the_ceiling(result):
    for part in ("risk", "readiness"):
        scores = result[part]
        assert scores["fit_pairs"] == int(scores["pairs"] * 0.7)  # time order, never shuffled
        assert scores["better"], part
        assert scores["fitted"]["auc"] > scores["handset"]["auc"] + 0.04, part
        assert scores["fitted"]["brier"] < scores["handset"]["brier"], part
        assert scores["fitted"]["auc"] == pytest.approx(scores["true_process"]["auc"], abs=0.01), part
    assert result["better"]


def test_cut_points_meet_their_targets_on_the_fit_period():
    rng = np.random.default_rng(3)
    scores = rng.random(5000)
    y = (rng.random(5000) < scores).astype(float)  # calibrated: precision at cut c is (1 + c) / 2
    cuts, chosen = choose_cut_points(scores, y)
    assert cuts == sorted(cuts) and len(set(cuts)) == 5
    for cut, target in zip(cuts, chosen, strict=True):
        got = policy_fit.flagged_metrics(scores, y, cut)[target["metric"]]
        assert target["met_on_fit_period"] and got >= target["target"], target
    # the lowest cut that meets a precision target, the highest that meets a recall target
    critical, mild = cuts[4], cuts[1]
    assert policy_fit.flagged_metrics(scores, y, critical - 0.02)["precision"] < 0.85
    assert policy_fit.flagged_metrics(scores, y, mild + 0.02)["recall"] < 0.80
    # a target the data cannot reach is reported as missed (precision never reaches 0.85 here)
    flat_y = (rng.random(5000) < 0.3).astype(float)
    _, missed = choose_cut_points(scores, flat_y)
    assert [t["met_on_fit_period"] for t in missed][2:] == [False, False, False]


def test_the_new_policy_is_written_validated_and_serves_the_fitted_risk(result, tmp_path):
    written = write(dict(result), tmp_path)
    policy = load_policy(tmp_path / FITTED_FILE)
    report = json.loads((tmp_path / "policy_fit.json").read_text())
    assert (tmp_path / FITTED_FILE) in written and report["policy_version"] == policy.identity
    assert policy.identity != load_policy().identity
    assert policy.intervention.cut_points == result["cut_points"]
    assert policy.intervention.risk_model is not None and policy.readiness.model is not None
    assert policy.intervention.risk_model.weights["giving_up"] == pytest.approx(
        result["risk"]["weights"]["giving_up"], abs=1e-6
    )
    # the gateway's assess under the written policy gives the fitted probability
    probs = dict.fromkeys([*load_policy().vad, "giving_up", "boredom", "stuck"], 0.05)
    probs["giving_up"] = 0.9
    state = assess(probs, policy)
    readiness_in = policy_fit.readiness_row({**_features(state), "context": {}}, load_policy())
    assert state.readiness_score == pytest.approx(policy_fit.probability(result["readiness"])(readiness_in))
    risk_in = policy_fit.risk_row(_features(state), load_policy(), state.readiness_score)
    assert state.risk_score == pytest.approx(policy_fit.probability(result["risk"])(risk_in))


def _features(state) -> dict:
    return {
        "learning_emotions": state.learning_emotions,
        "valence": state.valence,
        "arousal": state.arousal,
        "dominance": state.dominance,
        "readiness_score": state.readiness_score,
    }


def test_nothing_is_written_when_the_hand_set_policy_is_not_beaten(records, tmp_path):
    (tmp_path / FITTED_FILE).write_text("stale")
    # outcomes the hand-set risk already predicts perfectly: the fit cannot do better
    policy = load_policy()
    perfect = [
        Record(
            r.ts,
            r.features,
            "asked_for_help" if r.features["risk_score"] > 0.3 else "intervention_not_needed",
        )
        for r in records[:3000]
    ]
    result = fit_policy(perfect)
    assert not result["better"]
    write(result, tmp_path)
    assert not (tmp_path / FITTED_FILE).exists()  # and a stale file from an earlier fit is gone
    assert json.loads((tmp_path / "policy_fit.json").read_text())["better"] is False
    assert policy.identity == result["base_policy"]


def test_too_few_or_one_sided_pairs_are_refused(records):
    pairs = risk_pairs(records[:100], load_policy())
    with pytest.raises(ValueError, match="too few"):
        fit(Pairs(pairs.inputs, pairs.x[:30], pairs.y[:30], pairs.handset[:30]))
    with pytest.raises(ValueError, match="one class"):
        fit(Pairs(pairs.inputs, pairs.x, np.zeros_like(pairs.y), pairs.handset))


def test_each_fit_reads_its_own_outcomes():
    features = {
        "learning_emotions": {"frustration": 0.2},
        "valence": 0.4,
        "arousal": 0.5,
        "dominance": 0.5,
        "readiness_score": 0.5,
        "risk_score": 0.3,
        "context": {"recent_error_rate": 0.5, "consecutive_errors": 5},
    }
    rows = [
        ("1", json.dumps(features), "asked_for_help"),
        ("2", json.dumps(features), "other"),
        ("3", json.dumps(features), "passed_next_exercise"),
        ("4", json.dumps(features), "failed_next_exercise"),
        ("5", None, "asked_for_help"),  # an audit row from before features were kept
    ]
    records = policy_fit.records_from_rows(rows)
    policy = load_policy()
    assert list(risk_pairs(records, policy).y) == [1.0, 0.0, 1.0]
    ready = readiness_pairs(records, policy)
    assert list(ready.y) == [1.0, 0.0]
    assert ready.inputs == sorted(["frustration", "valence", "arousal", "dominance", "context_strain"])
    # context strain as the gateway computes it: (0.5 * 0.5 + 0.3 * 1.0) / 0.8
    assert ready.x[0][ready.inputs.index("context_strain")] == pytest.approx(0.6875)
    assert ready.x[0][ready.inputs.index("valence")] == pytest.approx(-0.1)


def test_a_written_policy_the_gateway_would_refuse_is_not_left_behind(result, tmp_path, monkeypatch):
    from gateway.learning.policy import PolicyError

    original = policy_fit.policy_data

    def out_of_order(result: dict, base_path=None) -> dict:
        data = original(result, base_path)
        data["intervention"]["cut_points"] = [0.9, 0.1, 0.2, 0.3, 0.4]
        return data

    monkeypatch.setattr(policy_fit, "policy_data", out_of_order)
    with pytest.raises(PolicyError, match="strictly increasing"):
        write(dict(result), tmp_path)
    assert not (tmp_path / FITTED_FILE).exists()


def test_the_risk_fit_recovers_the_trend_and_the_written_policy_serves_it(result, tmp_path):
    weights = result["risk"]["weights"]
    assert weights["trend_declining"] > 0.5 and weights["trend_recovering"] < -0.3  # truth +1.2, -0.8
    assert abs(weights["trend_improving"]) < 0.3 and abs(weights["trend_volatile"]) < 0.3  # truth 0
    write(dict(result), tmp_path)
    policy = load_policy(tmp_path / FITTED_FILE)
    assert policy.intervention.trend_adjustment == {}  # the model weighs the trend; nothing on top
    probs = dict.fromkeys([*load_policy().vad, "giving_up", "boredom", "stuck"], 0.05)
    none, declining, recovering = (assess(probs, policy, trend=t) for t in (None, "declining", "recovering"))
    assert recovering.risk_score < none.risk_score < declining.risk_score
    risk_in = policy_fit.risk_row(
        {**_features(declining), "trend": "declining"}, load_policy(), declining.readiness_score
    )
    assert declining.risk_score == pytest.approx(policy_fit.probability(result["risk"])(risk_in))
