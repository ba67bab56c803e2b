"""GoEmotions probabilities -> learning emotions, VAD, readiness state and intervention level.

Pure functions of the probabilities, the policy and optional learner context; every number comes from the
policy (formulas documented in policy.toml), and every decision carries human-readable reasons.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.learning.baseline import Baseline
from gateway.learning.policy import (
    GOEMOTIONS_LABELS,
    LEARNING_SIGNALS,
    TREND_LABELS,
    VAD_DIMENSIONS,
    Condition,
    Policy,
    Rule,
    trend_inputs,
)

# How many of the largest contributions a score's reason lists.
_TOP_CONTRIBUTIONS = 3
# A caller without the model's tuned thresholds (a fit on synthetic probabilities) counts an output label
# as detected from this probability on.
UNTUNED_CUT = 0.5


@dataclass(frozen=True)
class LearnerContext:
    """What the learning platform knows besides the text; every field is optional."""

    time_on_task_seconds: float | None = None
    recent_error_rate: float | None = None
    consecutive_errors: int | None = None

    def __post_init__(self) -> None:
        if self.time_on_task_seconds is not None:
            _check_number("time_on_task_seconds", self.time_on_task_seconds, low=0.0)
        if self.recent_error_rate is not None:
            _check_number("recent_error_rate", self.recent_error_rate, low=0.0, high=1.0)
        if self.consecutive_errors is not None and (
            isinstance(self.consecutive_errors, bool)
            or not isinstance(self.consecutive_errors, int)
            or self.consecutive_errors < 0
        ):
            raise ValueError(f"consecutive_errors must be an int >= 0, got {self.consecutive_errors!r}")


@dataclass(frozen=True)
class LearningState:
    learning_emotions: dict[str, float]  # each in [0, 1], in policy order
    valence: float
    arousal: float
    dominance: float
    readiness_state: str
    readiness_score: float  # in [0, 1], higher = more ready
    intervention_level: str
    reasons: list[str]  # why this readiness state and intervention level, naming the decisive inputs
    risk_score: float = 0.0  # the intervention risk the level was cut from, in [0, 1]
    primary_emotion: str = "none"  # top learning emotion at or above primary_min_score, else "none"
    # now minus the learner's own baseline (gateway.learning.baseline); None without one
    deviation: dict[str, object] | None = None

    def features(self, context: Mapping[str, object] | None, trend: str | None) -> dict[str, object]:
        """What the audit trail keeps of this state for fitting a policy from outcomes (the one format
        export.policy_fit reads back)."""
        return {
            "learning_emotions": self.learning_emotions,
            "valence": self.valence,
            "arousal": self.arousal,
            "dominance": self.dominance,
            "readiness_score": self.readiness_score,
            "risk_score": self.risk_score,
            "context": context,
            "deviation": self.deviation,
            "trend": trend,
        }


def _check_number(name: str, value: object, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or number < low or (high is not None and number > high) or math.isinf(number):
        bounds = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g} and finite"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return number


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def validate_probabilities(probabilities: Mapping[str, float]) -> dict[str, float]:
    """All 28 GoEmotions labels and either all learning signals or none, nothing else, each a finite
    number in [0, 1]."""
    missing = [label for label in GOEMOTIONS_LABELS if label not in probabilities]
    if missing:
        raise ValueError(f"probabilities: missing GoEmotions label(s) {missing}")
    unknown = sorted(set(probabilities) - set(GOEMOTIONS_LABELS) - set(LEARNING_SIGNALS))
    if unknown:
        raise ValueError(f"probabilities: unknown label(s) {unknown}")
    signals = [s for s in LEARNING_SIGNALS if s in probabilities]
    if signals and len(signals) != len(LEARNING_SIGNALS):
        raise ValueError(f"probabilities: learning signals {signals} without the rest of {LEARNING_SIGNALS}")
    return {
        label: _check_number(f"probabilities[{label!r}]", probabilities[label], low=0.0, high=1.0)
        for label in (*GOEMOTIONS_LABELS, *signals)
    }


def unavailable_signals(probabilities: Mapping[str, float], policy: Policy) -> list[str]:
    """The learning signals the policy maps but the model did not output (read as 0)."""
    used = {label for weights in policy.learning_emotions.map.values() for label in weights}
    return [s for s in LEARNING_SIGNALS if s in used and s not in probabilities]


def learning_emotion_scores(probabilities: Mapping[str, float], policy: Policy) -> dict[str, float]:
    """Each learning emotion from the probability mass of its labels (noisy-OR or clipped sum); a learning
    signal the model does not output contributes nothing (an emotion mapped to signals alone reads 0)."""
    probs = validate_probabilities(probabilities)
    method = policy.learning_emotions.method
    scores: dict[str, float] = {}
    for emotion, weights in policy.learning_emotions.map.items():
        if method == "noisy_or":
            none_fires = math.prod(1.0 - w * probs.get(label, 0.0) for label, w in weights.items())
            scores[emotion] = _clip(1.0 - none_fires)
        else:
            scores[emotion] = _clip(sum(w * probs.get(label, 0.0) for label, w in weights.items()))
    return scores


def text_vad(probabilities: Mapping[str, float], policy: Policy) -> tuple[float, float, float]:
    """Probability-weighted mean of the label VADs, neutral down-weighted, smoothed towards the prior (the
    GoEmotions labels only: the lexicon has no entry for a learning signal)."""
    probs = {k: v for k, v in validate_probabilities(probabilities).items() if k in policy.vad}
    scoring = policy.vad_scoring
    mass = {label: p * (scoring.neutral_weight if label == "neutral" else 1.0) for label, p in probs.items()}
    total = sum(mass.values()) + scoring.prior_mass
    result = []
    for dim in VAD_DIMENSIONS:
        weighted = sum(m * getattr(policy.vad[label], dim) for label, m in mass.items())
        result.append(_clip((weighted + scoring.prior_mass * getattr(scoring.prior, dim)) / total))
    return result[0], result[1], result[2]


def context_strain(context: LearnerContext | None, policy: Policy) -> float | None:
    """Weighted mean of the supplied context fields, each normalised to [0, 1]; None when none is supplied."""
    if context is None:
        return None
    cfg = policy.context
    parts: list[tuple[float, float]] = []  # (weight, strain)
    if context.recent_error_rate is not None:
        parts.append((cfg.error_rate_weight, context.recent_error_rate))
    if context.consecutive_errors is not None:
        parts.append(
            (
                cfg.consecutive_errors_weight,
                min(context.consecutive_errors / cfg.consecutive_errors_saturation, 1.0),
            )
        )
    if context.time_on_task_seconds is not None:
        parts.append(
            (
                cfg.time_on_task_weight,
                min(context.time_on_task_seconds / cfg.time_on_task_saturation_seconds, 1.0),
            )
        )
    total_weight = sum(w for w, _ in parts)
    if total_weight <= 0:
        return None
    return _clip(sum(w * s for w, s in parts) / total_weight)


def _holds(condition: Condition, signals: Mapping[str, float], found: Mapping[str, float]) -> bool:
    if condition.op == "detected":
        return condition.signal in found
    assert condition.value is not None  # the policy's validator: every comparison has one
    value = signals[condition.signal]
    if condition.op == ">=":
        return value >= condition.value
    if condition.op == ">":
        return value > condition.value
    if condition.op == "<=":
        return value <= condition.value
    return value < condition.value


def _describe(condition: Condition, signals: Mapping[str, float], found: Mapping[str, float]) -> str:
    if condition.op == "detected":  # described only when it held
        return f"{condition.signal} detected ({found[condition.signal]:.2f}, at or over its threshold)"
    return f"{condition.signal} {signals[condition.signal]:.2f} {condition.op} {condition.value:g}"


def _match(rule: Rule, signals: Mapping[str, float], found: Mapping[str, float]) -> list[str] | None:
    """The conditions that decided a match (all of all_of, the holding any_of ones), or None if no match."""
    if not all(_holds(c, signals, found) for c in rule.all_of):
        return None
    held = [c for c in rule.any_of if _holds(c, signals, found)]
    if rule.any_of and not held:
        return None
    return [_describe(c, signals, found) for c in (*rule.all_of, *held)]


def detected_outputs(
    probabilities: Mapping[str, float], detected: Collection[str] | None
) -> dict[str, float]:
    """The output labels the model detected, with their probabilities: ``detected`` as the model server
    thresholded them, or (None: no tuned thresholds at hand) those at or over ``UNTUNED_CUT``."""
    if detected is None:
        return {label: float(p) for label, p in probabilities.items() if p >= UNTUNED_CUT}
    unknown = sorted(set(detected) - set(probabilities))
    if unknown:
        raise ValueError(f"detected: label(s) {unknown} without a probability")
    return {label: float(probabilities[label]) for label in detected}


def _top(contributions: Mapping[str, float]) -> str:
    ranked = sorted(
        ((name, c) for name, c in contributions.items() if abs(c) >= 0.005), key=lambda nc: -abs(nc[1])
    )
    return ", ".join(f"{name} {c:+.2f}" for name, c in ranked[:_TOP_CONTRIBUTIONS]) or "no contributing input"


def assess(
    probabilities: Mapping[str, float],
    policy: Policy,
    context: LearnerContext | None = None,
    trend: str | None = None,
    baseline: Baseline | None = None,
    detected: Collection[str] | None = None,
) -> LearningState:
    """The learning-state view of one text's label probabilities: the 28 GoEmotions labels, plus the learning
    signals when the model has them (see policy.toml for every formula). ``detected``: the output labels at
    or over the model's tuned thresholds (what a ``detected`` condition reads; see ``detected_outputs``)."""
    if trend is not None and trend not in TREND_LABELS:
        raise ValueError(f"trend must be one of {list(TREND_LABELS)} or None, got {trend!r}")
    emotions = learning_emotion_scores(probabilities, policy)  # validates the probabilities
    found = detected_outputs(probabilities, detected)
    valence, arousal, dominance = text_vad(probabilities, policy)
    strain = context_strain(context, policy)
    midpoint = policy.vad_scoring.scale_midpoint
    reasons: list[str] = []
    missing = unavailable_signals(probabilities, policy)
    if missing:
        reasons.append(
            f"learning signals {', '.join(missing)} unavailable (the model has no such outputs): read as 0"
        )
    if strain is not None:
        reasons.append(f"context_strain {strain:.2f} from {_context_summary(context)}")

    # Readiness: base + weighted emotions, centred VAD and context strain (or the fitted model of them).
    inputs = readiness_inputs(emotions, (valence, arousal, dominance), strain, midpoint)
    model = policy.readiness.model
    if model is None:
        contributions = {name: w * inputs[name] for name, w in policy.readiness.weights.items()}
        readiness = _clip(policy.readiness.base + sum(contributions.values()))
        reasons.append(
            f"readiness_score {readiness:.2f} = base {policy.readiness.base:g} "
            f"+ top inputs: {_top(contributions)}"
        )
    else:
        contributions = {name: w * inputs[name] for name, w in model.weights.items()}
        readiness = _clip(model.probability(inputs))
        reasons.append(
            f"readiness_score {readiness:.2f} from the fitted model; top logit inputs: {_top(contributions)}"
        )

    signals: dict[str, float] = {
        **emotions,
        "valence": valence,
        "arousal": arousal,
        "dominance": dominance,
        "readiness_score": readiness,
        "context_strain": strain or 0.0,
    }
    state_name = policy.readiness.states[-1].name
    for state in policy.readiness.states:
        decisive = _match(state, signals, found)
        if decisive is None:
            continue
        state_name = state.name
        why = "; ".join(decisive) if decisive else "default, no earlier rule matched"
        reasons.append(f"readiness_state {state.name}: {why}")
        break

    # Intervention: weighted risk, cut into levels, then floors may raise the level.
    risk_in = risk_inputs(emotions, valence, readiness, strain, midpoint)
    if baseline is not None and policy.baseline.risk_from == "deviation":
        # only what exceeds this learner's own usual counts (floors below still read absolute values)
        usual = risk_inputs(
            baseline.learning_emotions, baseline.valence, baseline.readiness_score, None, midpoint
        )
        del usual["context_strain"]
        risk_in = {k: max(0.0, v - usual[k]) if k in usual else v for k, v in risk_in.items()}
        reasons.append(f"risk inputs over the learner's baseline of {baseline.points} messages")
    intervention = policy.intervention
    trend_part = intervention.trend_adjustment.get(trend, 0.0) if trend is not None else None
    if intervention.risk_model is None:
        risk_parts = {name: w * risk_in[name] for name, w in intervention.weights.items()}
        if trend is not None:
            risk_parts[f"trend {trend}"] = trend_part or 0.0
        risk = _clip(sum(risk_parts.values()))
    else:
        # a calibrated probability of needing help, the trend among its inputs when it was fitted with
        # one; a hand-set trend adjustment (if the policy keeps one) adds on
        model_in = {**risk_in, **trend_inputs(trend)}
        risk_parts = {name: w * model_in[name] for name, w in intervention.risk_model.weights.items()}
        risk = _clip(intervention.risk_model.probability(model_in) + (trend_part or 0.0))
        if trend_part:
            risk_parts[f"trend {trend}"] = trend_part
    level = intervention.level_for(risk)
    index = intervention.levels.index(level)
    low = intervention.cut_points[index - 1] if index > 0 else 0.0
    high = intervention.cut_points[index] if index < len(intervention.cut_points) else None
    band = f"[{low:g}, {high:g})" if high is not None else f">= {low:g}"
    fitted = " from the fitted model" if intervention.risk_model is not None else ""
    reasons.append(f"intervention {level}: risk {risk:.2f}{fitted} in {band}; top inputs: {_top(risk_parts)}")
    for floor in intervention.floors:
        decisive = _match(floor, signals, found)
        if decisive is not None and intervention.levels.index(floor.level) > intervention.levels.index(level):
            level = floor.level
            reasons.append(f"intervention raised to {level} by floor: {'; '.join(decisive)}")

    primary = max(emotions, key=lambda name: emotions[name])
    if emotions[primary] < policy.learning_emotions.primary_min_score:
        primary = "none"
    return LearningState(
        learning_emotions=emotions,
        valence=valence,
        arousal=arousal,
        dominance=dominance,
        readiness_state=state_name,
        readiness_score=readiness,
        intervention_level=level,
        reasons=reasons,
        risk_score=risk,
        primary_emotion=primary,
        deviation=baseline.deviation(readiness, valence, arousal, emotions) if baseline else None,
    )


def readiness_inputs(
    emotions: Mapping[str, float], vad: tuple[float, float, float], strain: float | None, midpoint: float
) -> dict[str, float]:
    """What readiness reads: the learning emotions, VAD centred on the scale midpoint, context strain."""
    valence, arousal, dominance = vad
    return {
        **emotions,
        "valence": valence - midpoint,
        "arousal": arousal - midpoint,
        "dominance": dominance - midpoint,
        "context_strain": strain or 0.0,
    }


def risk_inputs(
    emotions: Mapping[str, float], valence: float, readiness: float, strain: float | None, midpoint: float
) -> dict[str, float]:
    """What the intervention risk reads: the learning emotions, negative valence, low readiness, context
    strain (each in [0, 1]); the outcome fit (export.policy_fit) reads the same."""
    return {
        **emotions,
        "negative_valence": _clip((midpoint - valence) / midpoint),
        "low_readiness": 1.0 - readiness,
        "context_strain": strain or 0.0,
    }


def _context_summary(context: LearnerContext | None) -> str:
    if context is None:
        return "no context"
    fields = {
        "recent_error_rate": context.recent_error_rate,
        "consecutive_errors": context.consecutive_errors,
        "time_on_task_seconds": context.time_on_task_seconds,
    }
    return ", ".join(f"{name} {value:g}" for name, value in fields.items() if value is not None)
