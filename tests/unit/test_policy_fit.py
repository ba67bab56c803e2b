"""The policy fit from outcomes (export.policy_fit): it recovers a known process, judges on a later period,
and writes fitted weights only when they beat the hand-set policy there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export import policy_fit
from export.policy_fit import FITTED_FILE, Pairs, fit, synthetic_pairs, write


@pytest.fixture(scope="module")
def synthetic() -> tuple[Pairs, dict[str, float], dict]:
    pairs, truth = synthetic_pairs(10_000, seed=7)
    return pairs, truth, fit(pairs, truth=truth)


def test_the_fit_recovers_the_sign_and_order_of_the_true_weights(synthetic):
    _, truth, result = synthetic
    fitted = result["weights"]
    for name, weight in truth.items():
        assert np.sign(fitted[name]) == np.sign(weight), name
    positive = sorted((n for n, w in truth.items() if w > 0), key=lambda n: -truth[n])
    assert sorted(positive, key=lambda n: -fitted[n]) == positive  # the same order as the truth


def test_the_fit_beats_the_hand_set_policy_on_the_later_period_and_reaches_the_ceiling(synthetic):
    _, _, result = synthetic
    assert result["held_out_pairs"] == 3000 and result["fit_pairs"] == 7000  # time order, never shuffled
    assert result["better"]
    assert result["fitted"]["auc"] > result["handset"]["auc"] + 0.04
    assert result["fitted"]["brier"] < result["handset"]["brier"]
    assert result["fitted"]["auc"] == pytest.approx(result["true_process"]["auc"], abs=0.005)


def test_the_fitted_weights_are_written_only_when_better(synthetic, tmp_path):
    pairs, _, result = synthetic
    written = write(result, tmp_path)
    saved = json.loads((tmp_path / FITTED_FILE).read_text())
    assert (tmp_path / FITTED_FILE) in written
    assert saved == {"form": "logistic", "weights": result["weights"], "intercept": result["intercept"]}
    assert set(saved["weights"]) == set(pairs.inputs)
    # a hand-set policy that already predicts every outcome cannot be beaten: nothing is written, and a
    # stale file from an earlier fit is removed
    perfect = Pairs(pairs.inputs, pairs.x, pairs.y, pairs.y.copy())
    assert not fit(perfect)["better"]
    write(fit(perfect), tmp_path)
    assert not (tmp_path / FITTED_FILE).exists()
    assert json.loads((tmp_path / "policy_fit.json").read_text())["better"] is False


def test_too_few_or_one_sided_pairs_are_refused():
    pairs, _ = synthetic_pairs(60, seed=1)
    with pytest.raises(ValueError, match="too few"):
        fit(Pairs(pairs.inputs, pairs.x[:30], pairs.y[:30], pairs.handset_risk[:30]))
    with pytest.raises(ValueError, match="one class"):
        fit(Pairs(pairs.inputs, pairs.x, np.zeros_like(pairs.y), pairs.handset_risk))


def test_other_and_unknown_outcomes_are_left_out():
    features = json.dumps({"learning_emotions": {"frustration": 0.2}, "valence": 0.4, "readiness_score": 0.5})
    rows = [
        ("1", features, "asked_for_help"),
        ("2", features, "other"),
        ("3", features, "passed_next_exercise"),
    ]
    pairs = policy_fit.pairs_from_rows(rows)
    assert list(pairs.y) == [1.0, 0.0]
    assert pairs.inputs == ["emotion:frustration", "low_readiness", "negative_valence", "recent_error_rate"]
