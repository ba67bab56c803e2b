"""The learning-state policy: one TOML file (policy.toml) holds every weight, cut point, mapping, VAD value.

``load_policy`` reads it with ``tomllib`` and validates it strictly with pydantic: unknown keys, labels that
are not GoEmotions labels, out-of-range weights, non-increasing cut points and a wrong level order are all
``PolicyError``s naming the file and the field. The formulas the numbers feed are documented in the TOML.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The model's output order, from the shared contract (a unit test keeps it equal to
# data/goemotions/emotions.txt); imported from here by the rest of gateway.learning.
from contract.names import GOEMOTIONS_LABELS as GOEMOTIONS_LABELS
from contract.names import LEARNING_SIGNALS as LEARNING_SIGNALS

log = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.toml")

INTERVENTION_LEVELS: tuple[str, ...] = ("none", "preventive", "mild", "moderate", "significant", "critical")
TREND_LABELS: tuple[str, ...] = (
    "improving",
    "stable",
    "declining",
    "volatile",
    "recovering",
    "insufficient_data",
)
VAD_DIMENSIONS: tuple[str, ...] = ("valence", "arousal", "dominance")
# Derived signals a rule or weight may name besides the learning emotions.
READINESS_INPUTS: tuple[str, ...] = (*VAD_DIMENSIONS, "context_strain")
CONDITION_SIGNALS: tuple[str, ...] = (*VAD_DIMENSIONS, "readiness_score", "context_strain")
INTERVENTION_INPUTS: tuple[str, ...] = ("negative_valence", "low_readiness", "context_strain")
# A fitted risk model may weigh the learner's trend: one 0/1 input per trend label, against the reference
# trends stable and insufficient_data (and no trend at all), all 0.
TREND_INPUTS: tuple[str, ...] = tuple(
    f"trend_{t}" for t in TREND_LABELS if t not in ("stable", "insufficient_data")
)


def trend_inputs(trend: str | None) -> dict[str, float]:
    """The risk model's trend inputs for one analysis (``trend`` None without a learner history)."""
    return {name: float(name == f"trend_{trend}") for name in TREND_INPUTS}


_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Weight = Annotated[float, Field(ge=-1.0, le=1.0)]
LabelWeight = Annotated[float, Field(gt=0.0, le=1.0)]
Name = Annotated[str, Field(pattern=_NAME_PATTERN)]


class PolicyError(ValueError):
    """The policy file is missing, not valid TOML, or fails validation; the message names file and field."""


class _Strict(BaseModel):
    # strict: no "0.5" strings or booleans passing as numbers; forbid: a typo'd key is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class LearningEmotions(_Strict):
    method: Literal["noisy_or", "clipped_sum"]
    primary_min_score: Unit
    map: dict[Name, dict[str, LabelWeight]]

    @field_validator("map")
    @classmethod
    def _known_labels(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        if not value:
            raise ValueError("at least one learning emotion is required")
        reserved = set(CONDITION_SIGNALS) | set(INTERVENTION_INPUTS)
        for emotion, labels in value.items():
            if emotion in reserved:
                raise ValueError(f"learning emotion {emotion!r} clashes with a derived signal name")
            if not labels:
                raise ValueError(f"{emotion}: maps no GoEmotions labels or learning signals")
            unknown = sorted(set(labels) - set(GOEMOTIONS_LABELS) - set(LEARNING_SIGNALS))
            if unknown:
                raise ValueError(f"{emotion}: unknown GoEmotions label(s) or learning signal(s) {unknown}")
        return value


class VAD(_Strict):
    valence: Unit
    arousal: Unit
    dominance: Unit


class VadScoring(_Strict):
    neutral_weight: Unit
    # > 0 so that an all-zero input still has a defined VAD (the prior).
    prior_mass: Annotated[float, Field(gt=0.0, le=10.0)]
    prior: VAD
    scale_midpoint: Annotated[float, Field(gt=0.0, lt=1.0)]


class ContextPolicy(_Strict):
    error_rate_weight: Unit
    consecutive_errors_weight: Unit
    consecutive_errors_saturation: Annotated[int, Field(ge=1)]
    time_on_task_weight: Unit
    time_on_task_saturation_seconds: Annotated[float, Field(gt=0.0)]

    @model_validator(mode="after")
    def _some_weight(self) -> ContextPolicy:
        if self.error_rate_weight + self.consecutive_errors_weight + self.time_on_task_weight <= 0:
            raise ValueError("context: at least one weight must be > 0")
        return self


class Condition(_Strict):
    """``signal op value``; or ``op = "detected"`` (no value): the model put that output label (a learning
    signal or GoEmotions label) at or over its own tuned threshold, as the response's labels show it."""

    signal: Name
    op: Literal[">=", ">", "<=", "<", "detected"]
    value: float | None = None

    @model_validator(mode="after")
    def _value_with_a_comparison(self) -> Condition:
        if self.op == "detected":
            if self.value is not None:
                raise ValueError(f"{self.signal} detected: takes no value")
            if self.signal not in (*GOEMOTIONS_LABELS, *LEARNING_SIGNALS):
                raise ValueError(f"{self.signal} detected: only a model output label can be detected")
        elif self.value is None:
            raise ValueError(f"{self.signal} {self.op}: needs a value")
        return self


class Rule(_Strict):
    all_of: list[Condition] = Field(default_factory=list)
    any_of: list[Condition] = Field(default_factory=list)

    @property
    def conditions(self) -> list[Condition]:
        return [*self.all_of, *self.any_of]


class ReadinessState(Rule):
    name: Name
    description: Annotated[str, Field(min_length=1)]


class LogisticModel(_Strict):
    """A score fitted from outcomes (``python -m export fit-policy``): ``sigmoid(intercept + sum_k w_k x_k)``,
    a calibrated probability, replacing the hand-set weighted sum it sits beside. ``fitted`` says from what
    (pairs, held-out period, scores), so a policy file carries its own evidence."""

    form: Literal["logistic"]
    intercept: Annotated[float, Field(ge=-50.0, le=50.0)]
    weights: dict[str, Annotated[float, Field(ge=-50.0, le=50.0)]]
    fitted: dict[str, str | int | float] = Field(default_factory=dict)

    def probability(self, inputs: Mapping[str, float]) -> float:
        logit = self.intercept + sum(w * inputs[name] for name, w in self.weights.items())
        if logit >= 0:  # the stable form on each side: exp never overflows
            return 1.0 / (1.0 + math.exp(-logit))
        return math.exp(logit) / (1.0 + math.exp(logit))


class Readiness(_Strict):
    base: Unit
    weights: dict[str, Weight]
    states: Annotated[list[ReadinessState], Field(min_length=2)]
    # when set, readiness_score is this model's probability of passing the next exercise (base and weights
    # stay in the file, unused, so the hand-set reading remains visible next to the fitted one)
    model: LogisticModel | None = None

    @field_validator("states")
    @classmethod
    def _rule_shape(cls, states: list[ReadinessState]) -> list[ReadinessState]:
        # A state may have several rules (several ways into it); the default has exactly one.
        if states[-1].name in {s.name for s in states[:-1]}:
            raise ValueError(f"the default state {states[-1].name!r} may not have other rules")
        if states[-1].conditions:
            raise ValueError(
                f"the last state ({states[-1].name!r}) is the default and must have no conditions"
            )
        for state in states[:-1]:
            if not state.conditions:
                raise ValueError(f"state {state.name!r} has no conditions (only the last state may)")
        return states


class Floor(Rule):
    level: str

    @model_validator(mode="after")
    def _has_conditions(self) -> Floor:
        if not self.conditions:
            raise ValueError(f"floor to {self.level!r} has no conditions")
        return self


class Intervention(_Strict):
    levels: list[str]
    cut_points: list[Unit]
    weights: dict[str, Weight]
    trend_adjustment: dict[str, Weight]
    floors: list[Floor] = Field(default_factory=list)
    # when set, risk is this model's probability that the learner needs help (weights stay, unused)
    risk_model: LogisticModel | None = None

    @field_validator("levels")
    @classmethod
    def _level_order(cls, levels: list[str]) -> list[str]:
        if tuple(levels) != INTERVENTION_LEVELS:
            raise ValueError(
                f"levels must be exactly {list(INTERVENTION_LEVELS)} in this order, got {levels}"
            )
        return levels

    @field_validator("cut_points")
    @classmethod
    def _increasing(cls, cuts: list[float]) -> list[float]:
        if len(cuts) != len(INTERVENTION_LEVELS) - 1:
            raise ValueError(
                f"need {len(INTERVENTION_LEVELS) - 1} cut points (one per level boundary), got {len(cuts)}"
            )
        if any(b <= a for a, b in itertools.pairwise(cuts)):
            raise ValueError(f"cut points must be strictly increasing, got {cuts}")
        return cuts

    @field_validator("trend_adjustment")
    @classmethod
    def _known_trends(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(TREND_LABELS))
        if unknown:
            raise ValueError(f"unknown trend label(s) {unknown}; known: {list(TREND_LABELS)}")
        return value

    @model_validator(mode="after")
    def _floor_levels(self) -> Intervention:
        for floor in self.floors:
            if floor.level not in self.levels:
                raise ValueError(f"floors: unknown level {floor.level!r}")
        return self

    def level_for(self, risk: float) -> str:
        """levels[number of cut points <= risk]."""
        return self.levels[sum(1 for cut in self.cut_points if risk >= cut)]


class TrajectoryPolicy(_Strict):
    window: Annotated[int, Field(ge=2)]
    min_points: Annotated[int, Field(ge=2)]
    slope_threshold: Annotated[float, Field(gt=0.0, le=1.0)]
    volatility_threshold: Annotated[float, Field(gt=0.0, le=1.0)]
    recovering_below: Unit
    recovering_rise_points: Annotated[int, Field(ge=1)]
    recovering_min_rise: Annotated[float, Field(gt=0.0, le=1.0)]
    ttl_seconds: Annotated[int, Field(ge=1)]
    max_history: Annotated[int, Field(ge=2)]

    @model_validator(mode="after")
    def _consistent(self) -> TrajectoryPolicy:
        if self.min_points > self.window:
            raise ValueError(f"trajectory: min_points ({self.min_points}) > window ({self.window})")
        if self.max_history < self.window:
            raise ValueError(f"trajectory: max_history ({self.max_history}) < window ({self.window})")
        if self.recovering_rise_points + 2 > self.window:
            raise ValueError(
                "trajectory: recovering_rise_points + 2 must fit in the window (a dip, a low, a rise)"
            )
        return self


class BaselinePolicy(_Strict):
    half_life_points: Annotated[float, Field(gt=0.0, le=1000.0)]
    min_points: Annotated[int, Field(ge=1)]
    risk_from: Literal["absolute", "deviation"]

    @property
    def alpha(self) -> float:
        """The weight of the newest point in the exponentially weighted mean."""
        return float(1.0 - 0.5 ** (1.0 / self.half_life_points))


class Policy(_Strict):
    version: Literal[1]
    learning_emotions: LearningEmotions
    vad: dict[str, VAD]
    vad_scoring: VadScoring
    context: ContextPolicy
    readiness: Readiness
    intervention: Intervention
    trajectory: TrajectoryPolicy
    baseline: BaselinePolicy

    @field_validator("vad")
    @classmethod
    def _all_labels(cls, value: dict[str, VAD]) -> dict[str, VAD]:
        missing = [label for label in GOEMOTIONS_LABELS if label not in value]
        unknown = sorted(set(value) - set(GOEMOTIONS_LABELS))
        if missing:
            raise ValueError(f"missing GoEmotions label(s) {missing}")
        if unknown:
            raise ValueError(f"unknown GoEmotions label(s) {unknown}")
        return value

    @model_validator(mode="after")
    def _signal_names(self) -> Policy:
        emotions = set(self.learning_emotions.map)
        _check_names("readiness.weights", self.readiness.weights, emotions | set(READINESS_INPUTS))
        _check_names("intervention.weights", self.intervention.weights, emotions | set(INTERVENTION_INPUTS))
        if self.readiness.model is not None:
            _check_names(
                "readiness.model.weights", self.readiness.model.weights, emotions | set(READINESS_INPUTS)
            )
        if self.intervention.risk_model is not None:
            _check_names(
                "intervention.risk_model.weights",
                self.intervention.risk_model.weights,
                emotions | set(INTERVENTION_INPUTS) | set(TREND_INPUTS),
            )
        signals = emotions | set(CONDITION_SIGNALS)
        for where, rule in [
            *((f"readiness.states[{state.name}]", state) for state in self.readiness.states),
            *((f"intervention.floors[{floor.level}]", floor) for floor in self.intervention.floors),
        ]:
            _check_names(where, [c.signal for c in rule.conditions if c.op != "detected"], signals)
        return self

    @model_validator(mode="after")
    def _baseline_fits_the_history(self) -> Policy:
        if self.baseline.min_points > self.trajectory.max_history:
            raise ValueError(
                f"baseline.min_points ({self.baseline.min_points}) > trajectory.max_history "
                f"({self.trajectory.max_history}): the baseline could never form"
            )
        return self

    @functools.cached_property
    def identity(self) -> str:
        """``v<version>-<12 hex>``: a digest of every value in the policy (two files that decide alike
        share it; any change to a weight, cut point or mapping gives another). Computed once per policy
        object: every analysis reports it."""
        # absent optional sections (None) are left out: a schema that grows one keeps old versions' names
        payload = json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))
        return f"v{self.version}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    @property
    def learning_emotion_names(self) -> tuple[str, ...]:
        return tuple(self.learning_emotions.map)


def _check_names(where: str, names: Iterable[str], known: set[str]) -> None:
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"{where}: unknown signal(s) {unknown}; known: {sorted(known)}")


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "policy"


def load_policy(path: Path | None = None) -> Policy:
    """Read and validate a policy file (default: ``policy.toml`` next to this module)."""
    path = DEFAULT_POLICY_PATH if path is None else Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: invalid TOML: {exc}") from None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()
        )
        raise PolicyError(f"{path}: invalid policy: {problems}") from None
    log.debug("loaded learning policy from %s", path)
    return policy
