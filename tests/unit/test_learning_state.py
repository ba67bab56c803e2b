"""Learning-state post-processing: probability mass, VAD, readiness, intervention and their reasons."""

import math
import random

import pytest

from gateway.learning.policy import GOEMOTIONS_LABELS, INTERVENTION_LEVELS, Policy, load_policy
from gateway.learning.state import (
    LearnerContext,
    assess,
    context_strain,
    learning_emotion_scores,
    text_vad,
)

POLICY = load_policy()


def probs(**given: float) -> dict[str, float]:
    values = dict.fromkeys(GOEMOTIONS_LABELS, 0.0)
    unknown = set(given) - set(values)
    assert not unknown, unknown
    values.update(given)
    return values


def level_index(level: str) -> int:
    return INTERVENTION_LEVELS.index(level)


def variant(**learning_emotions: object) -> Policy:
    data = POLICY.model_dump()
    data["learning_emotions"].update(learning_emotions)
    return Policy.model_validate(data)


# --- learning emotions: probability mass, not argmax ---


def test_all_zero_probabilities_give_no_learning_emotion():
    scores = learning_emotion_scores(probs(), POLICY)
    assert set(scores) == set(POLICY.learning_emotions.map)
    assert all(score == pytest.approx(0.0, abs=1e-12) for score in scores.values())


def test_two_moderate_frustration_labels_give_more_than_one():
    one = learning_emotion_scores(probs(annoyance=0.5), POLICY)["frustration"]
    two = learning_emotion_scores(probs(annoyance=0.5, disappointment=0.5), POLICY)["frustration"]
    assert 0 < one < two <= 1
    w = POLICY.learning_emotions.map["frustration"]
    assert two == pytest.approx(1 - (1 - w["annoyance"] * 0.5) * (1 - w["disappointment"] * 0.5))


def test_a_non_top_label_still_contributes():
    # joy is the argmax label, yet annoyance's mass still shows up as frustration
    scores = learning_emotion_scores(probs(joy=0.9, annoyance=0.4), POLICY)
    assert scores["frustration"] == pytest.approx(
        POLICY.learning_emotions.map["frustration"]["annoyance"] * 0.4
    )
    assert scores["mastery_joy"] > scores["frustration"] > 0


def test_clipped_sum_method_is_capped_at_one():
    policy = variant(method="clipped_sum")
    scores = learning_emotion_scores(probs(annoyance=1.0, anger=1.0, disappointment=1.0), policy)
    assert scores["frustration"] == 1.0
    w = policy.learning_emotions.map["frustration"]
    partial = learning_emotion_scores(probs(annoyance=0.2, anger=0.1), policy)["frustration"]
    assert partial == pytest.approx(w["annoyance"] * 0.2 + w["anger"] * 0.1)


def test_scores_stay_in_range_for_random_inputs():
    rng = random.Random(7)
    for _ in range(200):
        p = {label: rng.random() for label in GOEMOTIONS_LABELS}
        state = assess(p, POLICY, LearnerContext(rng.random() * 7200, rng.random(), rng.randrange(20)))
        assert all(0 <= s <= 1 for s in state.learning_emotions.values())
        for value in (state.valence, state.arousal, state.dominance, state.readiness_score, state.risk_score):
            assert 0 <= value <= 1


# --- VAD ---


def test_joy_is_high_valence_and_grief_low_valence():
    joy_v, joy_a, _ = text_vad(probs(joy=0.95), POLICY)
    grief_v, _, _ = text_vad(probs(grief=0.95), POLICY)
    assert joy_v > 0.85 and joy_a > 0.7
    assert grief_v < 0.15
    assert joy_v - grief_v > 0.7


def test_vad_is_the_probability_weighted_mean_with_prior():
    scoring = POLICY.vad_scoring
    p = probs(joy=0.6, neutral=0.8)
    masses = {"joy": 0.6, "neutral": 0.8 * scoring.neutral_weight}
    expected = (
        sum(m * POLICY.vad[label].valence for label, m in masses.items())
        + scoring.prior_mass * scoring.prior.valence
    ) / (sum(masses.values()) + scoring.prior_mass)
    assert text_vad(p, POLICY)[0] == pytest.approx(expected)
    # no evidence at all: the prior
    assert text_vad(probs(), POLICY) == pytest.approx(
        (scoring.prior.valence, scoring.prior.arousal, scoring.prior.dominance)
    )


# --- readiness and intervention ---


@pytest.mark.parametrize(
    ("given", "expected_state"),
    [
        ({"joy": 0.9}, "ready_to_learn"),
        ({"curiosity": 0.8}, "ready_to_learn"),
        ({"confusion": 0.8}, "engaged_struggle"),
        ({"grief": 0.9}, "needs_support"),
        ({"sadness": 0.9}, "disengaged"),
        ({"nervousness": 0.9}, "overwhelmed"),
        ({"annoyance": 0.8, "disappointment": 0.6}, "overwhelmed"),
    ],
)
def test_each_readiness_state_is_reachable(given, expected_state):
    assert assess(probs(**given), POLICY).readiness_state == expected_state


def test_errors_move_a_neutral_learner_out_of_ready():
    calm = assess(probs(neutral=0.9), POLICY)
    struggling = assess(probs(neutral=0.9), POLICY, LearnerContext(3000, 0.8, 5))
    assert calm.readiness_state == "ready_to_learn"
    assert struggling.readiness_state == "disengaged"
    assert struggling.readiness_score < calm.readiness_score
    assert level_index(struggling.intervention_level) > level_index(calm.intervention_level)


def test_more_frustration_anxiety_and_errors_never_lower_the_intervention():
    steps = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    grid = {}
    for f in steps:
        for a in steps:
            for e in steps:
                context = LearnerContext(recent_error_rate=e, consecutive_errors=round(e * 6))
                grid[f, a, e] = assess(
                    probs(annoyance=f, disappointment=f / 2, nervousness=a), POLICY, context
                )
    compared = 0
    for (f, a, e), state in grid.items():
        for bigger in ((f + 0.2, a, e), (f, a + 0.2, e), (f, a, e + 0.2)):
            key = tuple(round(x, 1) for x in bigger)
            if key in grid:
                worse = grid[key]
                assert level_index(worse.intervention_level) >= level_index(state.intervention_level)
                assert worse.risk_score >= state.risk_score - 1e-12
                assert worse.readiness_score <= state.readiness_score + 1e-12
                compared += 1
    assert compared == 3 * 5 * 6 * 6  # every neighbour pair along each axis was checked
    calmest, worst = grid[0.0, 0.0, 0.0], grid[1.0, 1.0, 1.0]
    assert calmest.intervention_level in {"none", "preventive"}
    assert worst.intervention_level == "critical"


def test_positive_emotions_raise_readiness():
    base = assess(probs(neutral=0.5), POLICY).readiness_score
    for label in ("curiosity", "pride", "realization", "optimism"):
        assert assess(probs(neutral=0.5, **{label: 0.8}), POLICY).readiness_score > base


def test_risk_and_readiness_are_the_documented_weighted_sums():
    context = LearnerContext(time_on_task_seconds=1200, recent_error_rate=0.5, consecutive_errors=2)
    state = assess(probs(annoyance=0.5, confusion=0.4, sadness=0.2, curiosity=0.3), POLICY, context)
    strain = context_strain(context, POLICY)
    assert strain is not None
    mid = POLICY.vad_scoring.scale_midpoint
    readiness_inputs = {
        **state.learning_emotions,
        "valence": state.valence - mid,
        "arousal": state.arousal - mid,
        "dominance": state.dominance - mid,
        "context_strain": strain,
    }
    expected_readiness = POLICY.readiness.base + sum(
        w * readiness_inputs[k] for k, w in POLICY.readiness.weights.items()
    )
    assert 0 < expected_readiness < 1  # unclipped, so the sum itself is checked
    assert state.readiness_score == pytest.approx(expected_readiness)
    risk_inputs = {
        **state.learning_emotions,
        "negative_valence": max(0.0, (mid - state.valence) / mid),
        "low_readiness": 1 - state.readiness_score,
        "context_strain": strain,
    }
    expected_risk = sum(w * risk_inputs[k] for k, w in POLICY.intervention.weights.items())
    assert 0 < expected_risk < 1
    assert state.risk_score == pytest.approx(expected_risk)
    assert state.intervention_level == POLICY.intervention.level_for(expected_risk)


def test_trend_shifts_risk_by_the_policy_adjustment():
    p = probs(annoyance=0.6)
    plain = assess(p, POLICY).risk_score
    declining = assess(p, POLICY, trend="declining").risk_score
    improving = assess(p, POLICY, trend="improving").risk_score
    adjust = POLICY.intervention.trend_adjustment
    assert declining == pytest.approx(plain + adjust["declining"])
    assert improving == pytest.approx(plain + adjust["improving"])
    assert improving < plain < declining


def test_floor_raises_the_level_and_says_why():
    state = assess(probs(nervousness=0.9), POLICY)
    floor = POLICY.intervention.floors[0]
    assert POLICY.intervention.level_for(state.risk_score) != floor.level  # the risk alone is lower
    assert state.intervention_level == floor.level
    assert any(
        r.startswith(f"intervention raised to {floor.level} by floor: anxiety 0.90 >= 0.85")
        for r in state.reasons
    )


# --- reasons ---


def test_reasons_name_the_decisive_inputs():
    state = assess(probs(annoyance=0.8, disappointment=0.6), POLICY, trend="declining")
    frustration = state.learning_emotions["frustration"]
    text = "\n".join(state.reasons)
    assert f"readiness_state overwhelmed: readiness_score {state.readiness_score:.2f} < 0.25" in text
    assert f"frustration {frustration:.2f} >= 0.75" in text
    assert f"readiness_score {state.readiness_score:.2f} = base 0.5 + top inputs: frustration -" in text
    intervention = next(r for r in state.reasons if r.startswith("intervention "))
    assert intervention.startswith(
        f"intervention {state.intervention_level}: risk {state.risk_score:.2f} in ["
    )
    assert "frustration +" in intervention and "trend declining +0.10" in intervention
    assert "context_strain" not in text  # no context supplied, none claimed


def test_default_state_reason():
    state = assess(probs(joy=0.9), POLICY)
    assert "readiness_state ready_to_learn: default, no earlier rule matched" in state.reasons
    assert state.primary_emotion == "mastery_joy"
    assert assess(probs(), POLICY).primary_emotion == "none"


def test_context_is_optional_and_partial():
    p = probs(confusion=0.5)
    assert assess(p, POLICY) == assess(p, POLICY, None) == assess(p, POLICY, LearnerContext())
    assert context_strain(None, POLICY) is None
    assert context_strain(LearnerContext(), POLICY) is None
    # one field alone is its own normalised strain (the weighted mean over supplied fields)
    assert context_strain(LearnerContext(recent_error_rate=0.4), POLICY) == pytest.approx(0.4)
    saturation = POLICY.context.consecutive_errors_saturation
    assert context_strain(LearnerContext(consecutive_errors=saturation * 3), POLICY) == pytest.approx(1.0)
    with_errors = assess(p, POLICY, LearnerContext(recent_error_rate=0.9))
    assert with_errors.readiness_score < assess(p, POLICY).readiness_score
    assert "context_strain 0.90 from recent_error_rate 0.9" in with_errors.reasons


# --- invalid input ---


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"joy": 1.5}, r"probabilities\['joy'\] must be in \[0, 1\]"),
        ({"joy": -0.01}, r"probabilities\['joy'\] must be in \[0, 1\]"),
        ({"joy": math.nan}, r"probabilities\['joy'\] must be in \[0, 1\]"),
        ({"joy": "0.5"}, r"probabilities\['joy'\] must be a number"),
        ({"joy": True}, r"probabilities\['joy'\] must be a number"),
        ({"tedium": 0.2}, r"unknown label\(s\) \['tedium'\]"),
        ({"boredom": 0.2}, r"learning signals \['boredom'\] without the rest"),
    ],
)
def test_invalid_probabilities_raise(change, message):
    p: dict[str, object] = {**probs(), **change}
    with pytest.raises(ValueError, match=message):
        assess(p, POLICY)  # type: ignore[arg-type]


def test_missing_label_raises():
    p = probs()
    del p["neutral"]
    with pytest.raises(ValueError, match=r"missing GoEmotions label\(s\) \['neutral'\]"):
        assess(p, POLICY)


def test_unknown_trend_raises():
    with pytest.raises(ValueError, match="trend must be one of"):
        assess(probs(), POLICY, trend="sideways")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recent_error_rate": 1.2}, "recent_error_rate must be in"),
        ({"time_on_task_seconds": -1.0}, "time_on_task_seconds must be in"),
        ({"time_on_task_seconds": math.inf}, "time_on_task_seconds must be in"),
        ({"consecutive_errors": -1}, "consecutive_errors must be an int >= 0"),
        ({"consecutive_errors": 2.5}, "consecutive_errors must be an int >= 0"),
    ],
)
def test_invalid_context_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearnerContext(**kwargs)


# --- learning signals: model outputs GoEmotions has no label for ---


def with_signals(giving_up: float = 0.0, boredom: float = 0.0, stuck: float = 0.0, **given: float):
    return {**probs(**given), "giving_up": giving_up, "boredom": boredom, "stuck": stuck}


def test_a_learner_who_wants_to_give_up_reaches_at_least_moderate():
    # "I want to give up.": GoEmotions reads desire; the learning signal says what it means
    read_as_desire = assess(probs(desire=0.6), POLICY)
    assert read_as_desire.intervention_level == "none"
    state = assess(with_signals(giving_up=0.9, desire=0.6), POLICY)
    assert level_index(state.intervention_level) >= level_index("moderate")
    assert state.readiness_state == "needs_support"
    assert state.learning_emotions["giving_up"] == pytest.approx(0.9)
    assert any("giving_up detected (0.90, at or over its threshold)" in r for r in state.reasons)


def test_signal_rules_read_what_the_model_detected_not_a_fixed_probability():
    # giving_up's threshold is fitted for recall (export.pipeline.SIGNAL_MIN_PRECISION): a 0.40 the answer
    # labels giving_up is a learner giving up, and the floor acts on it
    labelled = assess(with_signals(giving_up=0.4, desire=0.6), POLICY, detected=["desire", "giving_up"])
    assert level_index(labelled.intervention_level) >= level_index("moderate")
    assert labelled.readiness_state == "needs_support"
    assert any("floor: giving_up detected (0.40" in r for r in labelled.reasons)
    # the same probability, not labelled (a stricter threshold): the floor stays off
    unlabelled = assess(with_signals(giving_up=0.4, desire=0.6), POLICY, detected=["desire"])
    assert level_index(unlabelled.intervention_level) < level_index("moderate")
    # no detections given (a fit on synthetic probabilities): 0.5 stands in for the threshold
    assert assess(with_signals(giving_up=0.4, desire=0.6), POLICY).intervention_level == (
        unlabelled.intervention_level
    )
    assert assess(with_signals(giving_up=0.5), POLICY).readiness_state == "needs_support"
    bored = assess(with_signals(boredom=0.3, annoyance=0.3), POLICY, detected=["boredom"])
    assert bored.readiness_state == "disengaged"
    with pytest.raises(ValueError, match=r"detected: label\(s\) \['stuck'\] without a probability"):
        assess(probs(confusion=0.5), POLICY, detected=["stuck"])


def test_boredom_is_disengagement_and_stuck_asks_for_support():
    bored = assess(with_signals(boredom=0.8, annoyance=0.3), POLICY)
    assert bored.readiness_state == "disengaged" and bored.primary_emotion == "boredom"
    stuck = assess(with_signals(stuck=0.8, confusion=0.3), POLICY)
    assert stuck.readiness_state == "needs_support"
    # without the signals the same texts read as productive struggle / ready
    assert assess(probs(annoyance=0.3), POLICY).readiness_state != "disengaged"
    assert assess(probs(confusion=0.3), POLICY).readiness_state == "engaged_struggle"


def test_a_model_without_signals_reads_them_as_zero_and_says_so():
    without = assess(probs(confusion=0.5), POLICY)
    zeros = assess(with_signals(confusion=0.5), POLICY)
    assert without.learning_emotions == zeros.learning_emotions
    assert without.risk_score == pytest.approx(zeros.risk_score)
    assert without.learning_emotions["giving_up"] == 0.0
    assert any("giving_up, boredom, stuck unavailable" in r for r in without.reasons)
    assert not any("unavailable" in r for r in zeros.reasons)


def test_signals_do_not_move_the_lexicon_vad():
    assert text_vad(with_signals(giving_up=1.0, joy=0.5), POLICY) == text_vad(probs(joy=0.5), POLICY)
