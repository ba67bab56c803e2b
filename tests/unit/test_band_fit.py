"""Cut points fitted to the learner set's intervention bands (export/band_fit.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.names import WITH_LEARNING_SIGNALS
from export import band_fit
from gateway.learning.policy import load_policy
from gateway.learning.state import assess

LEVELS = ["none", "preventive", "mild", "moderate", "significant", "critical"]
BASE = [0.15, 0.3, 0.45, 0.6, 0.75]


def test_the_vectorised_levels_are_the_gateways_levels():
    policy = load_policy()
    rng = np.random.default_rng(3)
    probs = rng.beta(0.3, 2.0, size=(300, len(WITH_LEARNING_SIGNALS)))  # sparse, some high
    # the model's thresholds: what it detected is what the gateway passes (giving_up's cut for recall)
    cuts = np.full(len(WITH_LEARNING_SIGNALS), 0.5)
    cuts[WITH_LEARNING_SIGNALS.index("giving_up")] = 0.2
    risk, floor = band_fit.band_inputs(probs, policy, cuts)
    got = band_fit.level_indices(risk, floor, list(policy.intervention.cut_points))
    want = [
        LEVELS.index(
            assess(
                dict(zip(WITH_LEARNING_SIGNALS, map(float, row), strict=True)),
                policy,
                detected=[n for n, p, t in zip(WITH_LEARNING_SIGNALS, row, cuts, strict=True) if p >= t],
            ).intervention_level
        )
        for row in probs
    ]
    assert got.tolist() == want
    assert (floor > 0).any() and len(set(want)) >= 4  # floors and several levels were exercised
    # a giving_up between its cut and 0.5 is what the floor read: without the cuts those rows differ
    assert band_fit.band_inputs(probs, policy)[1].tolist() != floor.tolist()


def bands_from(risk: np.ndarray, none_below: float, high_from: float) -> list[str]:
    return ["none" if r < none_below else "high" if r >= high_from else "low" for r in risk]


def test_the_fit_recovers_the_cut_points_the_bands_were_made_with():
    risk = np.random.default_rng(5).uniform(0, 1, 400)
    gold = bands_from(risk, 0.32, 0.71)
    floor = np.zeros(400, dtype=int)
    cuts = band_fit.fit_cuts(risk, floor, gold, LEVELS, BASE)
    assert cuts[0] == pytest.approx(0.32, abs=0.011) and cuts[2] == pytest.approx(0.71, abs=0.011)
    assert cuts == sorted(cuts) and len(set(cuts)) == 5
    levels = band_fit.level_indices(risk, floor, cuts)
    assert band_fit.band_scores(levels, gold, LEVELS)["agreement"] > 0.97


def test_the_fit_never_reads_fewer_high_messages_as_high_than_the_base():
    # the one "high" message scores below three "low" ones: the best agreement alone would read it as low
    risk = np.array([0.05, 0.1, 0.2, 0.25, 0.5, 0.62, 0.63, 0.64, 0.66])
    gold = ["none", "none", "low", "low", "low", "high", "low", "low", "low"]
    floor = np.zeros(len(risk), dtype=int)
    base_recall = band_fit.band_scores(band_fit.level_indices(risk, floor, BASE), gold, LEVELS)["high_recall"]
    cuts = band_fit.fit_cuts(risk, floor, gold, LEVELS, BASE)
    fitted = band_fit.band_scores(band_fit.level_indices(risk, floor, cuts), gold, LEVELS)
    assert fitted["high_recall"] >= base_recall == 1.0
    assert cuts[2] <= 0.62  # the high message stays moderate or above


def test_the_fit_never_reads_more_high_messages_as_none_than_the_base():
    # a "high" message among "none" ones at the bottom: raising none|preventive past it would agree
    # better, but a tutor would rather see it as low than not at all
    risk = np.array([0.16, 0.17, 0.18, 0.19, 0.2, 0.35, 0.7])
    gold = ["none", "none", "high", "none", "none", "low", "high"]
    floor = np.zeros(len(risk), dtype=int)
    cuts = band_fit.fit_cuts(risk, floor, gold, LEVELS, BASE)
    fitted = band_fit.band_scores(band_fit.level_indices(risk, floor, cuts), gold, LEVELS)
    assert fitted["high_read_as_none"] == 0 and cuts[0] <= 0.18


def test_a_floor_keeps_its_level_whatever_the_cut_points():
    levels = band_fit.level_indices(np.array([0.01, 0.01]), np.array([0, 3]), [0.5, 0.6, 0.7, 0.8, 0.9])
    assert levels.tolist() == [0, 3]


def test_other_cut_points_are_kept_in_order():
    assert band_fit.with_cuts(BASE, 0.2, 0.5) == [0.2, 0.3, 0.5, 0.6, 0.75]
    spread = band_fit.with_cuts(BASE, 0.35, 0.8)
    assert spread[1] == pytest.approx(0.575) and spread[2:] == [
        0.8,
        pytest.approx(0.8667),
        pytest.approx(0.9333),
    ]


def result(better: bool) -> dict:
    return {
        "model": "student-test",
        "base_policy": load_policy().identity,
        "base_cut_points": BASE,
        "cut_points": [0.25, 0.3, 0.55, 0.6, 0.75],
        "better_on_dev": better,
    }


def test_the_fitted_version_is_written_when_better_on_dev_and_loads(tmp_path: Path):
    report = result(True)
    written = band_fit.write(report, tmp_path)
    policy_file = tmp_path / band_fit.BAND_FILE
    assert policy_file in written
    loaded = load_policy(policy_file)
    assert list(loaded.intervention.cut_points) == [0.25, 0.3, 0.55, 0.6, 0.75]
    assert loaded.intervention.floors == load_policy().intervention.floors  # only the cut points moved
    assert report["policy_version"] == loaded.identity != load_policy().identity


def test_nothing_is_written_and_a_stale_version_is_removed_when_not_better(tmp_path: Path):
    band_fit.write(result(True), tmp_path)
    report = result(False)
    assert band_fit.write(report, tmp_path) == [tmp_path / "band_fit.json"]
    assert not (tmp_path / band_fit.BAND_FILE).exists() and "policy_version" not in report
    assert "no policy written" in band_fit.markdown(
        {**report, **{s: {w: SCORES for w in ("base", "fitted")} for s in ("dev", "test")}}, "cmd"
    )


SCORES = {
    "messages": 2,
    "agreement": 0.5,
    "high_recall": 1.0,
    "high_read_as_none": 0,
    "giving_up_at_least_moderate": 1,
    "giving_up_messages": 1,
    "confusion": {f"{g}->{p}": 0 for g in ("none", "low", "high") for p in ("none", "low", "high")},
}
