"""Request and response models (with examples, so /docs is a usable manual)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Header
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)

from gateway.core.idempotency import HEADER as IDEMPOTENCY_HEADER
from gateway.core.idempotency import KEY_PATTERN as IDEMPOTENCY_KEY_PATTERN
from gateway.core.outcomes import RESULT_ID_PATTERN, OutcomeName
from gateway.errors import ErrorCode

# The one learner-id rule, for every route that takes one (the analyse body, the stream frame, the
# trajectory, history and erase paths). Ids are the platform's own, unique within its tenant only.
LearnerId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class LearnerContextIn(BaseModel):
    # No infinities/NaN, and upper bounds: found by fuzzing, 1e999 or a 310-digit count used to reach
    # the policy arithmetic and end in a 500.
    # Strict: numbers only, as the schema says (the contract test found "1" and true accepted as numbers).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    time_on_task_seconds: float | None = Field(
        default=None, ge=0, le=7 * 24 * 3600, description="time on the current task (at most a week)"
    )
    recent_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="share of recent wrong answers"
    )
    consecutive_errors: int | None = Field(default=None, ge=0, le=100_000)


# "Exactly one of text and texts", as JSON Schema: the model's validator below says the same in Python.
# (An explicit null counts as absent, as the validator has it.)
_ONE_OF_TEXT_OR_TEXTS: list[JsonValue] = [
    {
        "title": "one text",
        "required": ["text"],
        "properties": {"text": {"type": "string"}, "texts": {"type": "null"}},
    },
    {
        "title": "a batch",
        "required": ["texts"],
        "properties": {"texts": {"type": "array", "minItems": 1}, "text": {"type": "null"}},
    },
]


class EmotionsRequest(BaseModel):
    """Exactly one of `text` (one text) or `texts` (a batch of at least one), optionally for a learner."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": _ONE_OF_TEXT_OR_TEXTS,
            "examples": [
                {"text": "I finally get it, thank you!"},
                {
                    "texts": ["This makes no sense.", "Oh wait, now I see it!"],
                    "learner_id": "learner-42",
                    "context": {"time_on_task_seconds": 310, "recent_error_rate": 0.4},
                },
            ],
        },
    )

    text: str | None = Field(default=None, description="a single text")
    texts: list[str] | None = Field(default=None, description="a batch of texts")
    learner_id: LearnerId | None = Field(
        default=None, description="the platform's learner id (1-128 of A-Z a-z 0-9 _ . : @ -)"
    )
    context: LearnerContextIn | None = None

    @model_validator(mode="after")
    def _one_of(self) -> EmotionsRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        if self.texts is not None and not self.texts:
            raise ValueError("'texts' must contain at least one text")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class LearningStateOut(BaseModel):
    learning_emotions: dict[str, float]
    valence: float
    arousal: float
    dominance: float
    readiness: dict[str, Any] = Field(description="{'state': ..., 'score': 0..1}")
    intervention_level: str
    risk_score: float = Field(
        default=0.0,
        description="the intervention risk the level was cut from, 0..1: a hand-set weighted sum, or with a "
        "fitted policy the calibrated probability that the learner needs help",
    )
    reasons: list[str]
    policy_version: str = Field(
        default="", description="the learning-state policy that decided (`v<version>-<12 hex of its values>`)"
    )
    deviation: dict[str, Any] | None = Field(
        default=None,
        description="this text minus the learner's own baseline (an exponentially weighted mean of their "
        "recent messages: readiness_score, valence, arousal, learning_emotions; `points` it was formed "
        "from); null without a learner_id or before the baseline has formed",
    )


class EmotionResult(BaseModel):
    text_index: int
    result_id: str = Field(
        description="names this result (`<request id>-<text index>`): report what happened next with "
        "POST /v1/outcomes; the audit row of this text carries the same request id"
    )
    emotions: dict[str, float] = Field(description="probability per GoEmotions label (independent sigmoids)")
    labels: list[str] = Field(
        description="GoEmotions labels at or over their tuned per-label thresholds, as the model server "
        "applied them (may be empty)"
    )
    learning_signals: dict[str, float] | None = Field(
        default=None,
        description="probability per learning signal (giving_up, boredom, stuck), outputs the offline "
        "student learned from learner messages; null when the served model has no such outputs (a hub "
        "GoEmotions checkpoint)",
    )
    signal_labels: list[str] = Field(
        default_factory=list,
        description="learning signals at or over their tuned thresholds, as the model server applied them",
    )
    primary_emotion: str = Field(
        description="the most probable label among `labels`; `neutral` when `labels` is empty (so it is "
        "never a label under its threshold)"
    )
    confidence: float = Field(description="the probability of `primary_emotion`")
    cached: bool = Field(description="answered from the gateway's result cache (same model version)")
    learning_state: LearningStateOut


class TrendOut(BaseModel):
    label: str
    slope: float | None
    volatility: float | None
    points: int


class ModelInfo(BaseModel):
    name: str
    version: str = Field(
        description="the version of the model that produced every result of this answer, as the model "
        "server reported it with the answer (one version per response, also after a model swap)"
    )


class EmotionsResponse(BaseModel):
    model: ModelInfo
    results: list[EmotionResult]
    learner_id: str | None = None
    trend: TrendOut | None = None


class TrajectoryPointOut(BaseModel):
    timestamp: float
    readiness_score: float
    valence: float
    intervention_level: str
    primary_emotion: str = Field(description="as in the result: the most probable label over its threshold")
    model_version: str | None = Field(
        default=None, description="the model version that answered (null for points recorded before it was)"
    )
    arousal: float | None = Field(default=None, description="null for points recorded before it was kept")
    learning_emotions: dict[str, float] | None = Field(
        default=None, description="null for points recorded before they were kept"
    )


class TrajectoryResponse(BaseModel):
    learner_id: str
    trend: TrendOut
    points: list[TrajectoryPointOut]


# ---- Idempotency-Key (POST /v1/emotions, POST /v1/outcomes) ----------------------------------------

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="1 to 255 visible ASCII characters (e.g. a UUID), new for each logical request and "
        "the same on its retries: a retry within GATEWAY_IDEMPOTENCY_TTL_S gets the first answer "
        "(`Idempotent-Replayed: true`) instead of a second analysis; 409 while the first still runs, "
        "422 (`idempotency_key_reused`) with another body",
    ),
]


# ---- GET /v1/learners/{learner_id}/history (the audit trail) ------------------------------------------

# The path form of the learner id: the same rule.
LearnerIdPath = LearnerId


class AuditEntryOut(BaseModel):
    """One analysed text as the audit trail recorded it."""

    id: int
    timestamp: datetime = Field(description="when the answer was sent (UTC)")
    request_id: str = Field(description="shared by the texts of one request")
    text_index: int = Field(description="the text's position in its request")
    channel: str = Field(description="http (POST /v1/emotions) or ws (the stream)")
    model_version: str = Field(description="the version of the model that produced this text's answer")
    labels: list[str]
    primary_emotion: str = Field(description="the most probable of `labels`; `neutral` when it is empty")
    confidence: float = Field(description="the probability of `primary_emotion`")
    readiness_state: str
    readiness_score: float
    valence: float
    intervention_level: str
    reasons: list[str]
    latency_ms: float = Field(description="time the gateway took to answer the request")
    cached: bool
    text_hash: str | None = Field(description="HMAC-SHA256 (hex) of the normalized text, under the audit key")
    text: str | None = Field(description="the normalized text; null unless GATEWAY_AUDIT_STORE_TEXT is on")


class HistoryResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "learner_id": "learner-42",
                    "entries": [
                        {
                            "id": 1041,
                            "timestamp": "2025-03-04T10:15:02.118273Z",
                            "request_id": "4b8e6f0c2a9d4e51b7c3f1a2d9e8c7b6",
                            "text_index": 0,
                            "channel": "http",
                            "model_version": "student-3f2a9c1b7d10-int8",
                            "labels": ["confusion"],
                            "primary_emotion": "confusion",
                            "confidence": 0.81,
                            "readiness_state": "engaged_struggle",
                            "readiness_score": 0.46,
                            "valence": 0.38,
                            "intervention_level": "mild",
                            "reasons": ["confusion 0.81 >= 0.5"],
                            "latency_ms": 12.4,
                            "cached": False,
                            "text_hash": "3f1d0b9c6e2a8f47d5b1c09e7a6f3d28b4e1c7a95f0d2b6e8c3a1f4d7b9e0c5a",
                            "text": None,
                        }
                    ],
                    "next_before": None,
                    "next_before_id": None,
                }
            ]
        }
    )

    learner_id: str
    entries: list[AuditEntryOut] = Field(description="newest first")
    next_before: datetime | None = Field(
        description="for the next page pass before=<this>&before_id=<next_before_id>; null on the last page"
    )
    next_before_id: int | None


class OutcomeIn(BaseModel):
    """What happened after an analysed text."""

    model_config = ConfigDict(extra="forbid")

    result_id: Annotated[str, StringConstraints(pattern=RESULT_ID_PATTERN)] = Field(
        description="the `result_id` of the result it follows (`<request id>-<text index>`)"
    )
    learner_id: LearnerId = Field(
        description="the learner the result was analysed for (the caller's tenant's)"
    )
    outcome: OutcomeName = Field(
        description="abandoned_session, asked_for_help, failed_next_exercise, passed_next_exercise, "
        "intervention_needed / intervention_not_needed (a tutor's rating), or other (say what in `label`)"
    )
    label: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="the platform's own word for it; required with `other`"
    )

    @model_validator(mode="after")
    def _other_needs_a_label(self) -> OutcomeIn:
        if self.outcome == "other" and not self.label:
            raise ValueError("outcome 'other' needs a label saying what happened")
        return self


class OutcomeOut(BaseModel):
    id: int = Field(description="the stored outcome's id")
    result_id: str
    outcome: str


class ErasureCounts(BaseModel):
    trajectory_points: int = Field(description="points removed from the learner store")
    audit_rows: int = Field(description="rows removed from the audit trail (0 when it is off)")
    idempotent_responses: int = Field(
        default=0, description="answers kept for Idempotency-Key retries that held this learner's results"
    )


class ErasureResponse(BaseModel):
    """What ``DELETE /v1/learners/{learner_id}`` removed (zeros when there was nothing: it is idempotent)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "learner_id": "learner-42",
                    "removed": {"trajectory_points": 12, "audit_rows": 57, "idempotent_responses": 1},
                }
            ]
        }
    )

    learner_id: str
    removed: ErasureCounts


class ErrorBody(BaseModel):
    code: ErrorCode = Field(description="what went wrong, one of a fixed set (gateway/errors.py)")
    message: str = Field(description="what to fix, or when to retry")


class ErrorResponse(BaseModel):
    """Every error's body, on every route."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "invalid_request", "message": "text is empty; send some text"}}]
        }
    )

    error: ErrorBody


# ---- GET /healthz, GET /readyz --------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadinessResponse(BaseModel):
    """``/readyz`` and ``/readyz/triton``: 200 when ready; 503 with the same body (``ready`` false and a
    ``reason``) when not. ``triton`` is Triton's state either way."""

    model: str = Field(description="the Triton model the gateway serves")
    version: str | None = Field(description="the served model version (null before Triton's first answer)")
    circuit: Literal["closed", "half-open", "open"] | None = Field(
        default=None, description="the Triton circuit breaker's state"
    )
    ready: bool
    triton: Literal["ready", "unavailable"] = Field(
        description="whether Triton answers the probe inference with the expected model now"
    )
    reason: str | None = Field(default=None, description="why Triton is unavailable or this is not ready")


# ---- WS /v1/emotions/stream frames (JSON text frames) ----------------------------------------------

MessageId = str | int | None


class StreamMessage(BaseModel):
    """One learner message on the stream: the single-text form of EmotionsRequest (same rules)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"id": "m-1", "text": "I still don't get fractions.", "learner_id": "learner-42"},
            ]
        },
    )

    type: Literal["message"] = "message"
    id: MessageId = Field(default=None, description="the client's message id, echoed in its answer")
    text: str = Field(description="the learner's message")
    learner_id: LearnerId | None = None  # the HTTP request's rule
    context: LearnerContextIn | None = None
    idempotency_key: Annotated[str, StringConstraints(pattern=IDEMPOTENCY_KEY_PATTERN)] | None = Field(
        default=None,
        description="as the HTTP `Idempotency-Key` header: a message sent again with the same key (e.g. "
        "after a reconnect) gets the first result, `replayed: true`, instead of a second analysis",
    )

    @field_validator("id", mode="before")
    @classmethod
    def check_id(cls, value: object) -> MessageId:
        """The id as given, or ValueError saying why it cannot be echoed back."""
        # bool is an int to Python: refuse it here rather than echo `true` back as the id
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str) and len(value) <= 128:
            try:
                value.encode("utf-8")  # JSON can carry a lone surrogate ("\ud800"), which cannot be echoed
            except UnicodeEncodeError:
                raise ValueError("id contains an invalid unicode character (an unpaired surrogate)") from None
            return value
        raise ValueError("id must be a string of at most 128 characters or an integer")


class StreamResultFrame(BaseModel):
    type: Literal["result"] = "result"
    id: MessageId
    model: ModelInfo
    result: EmotionResult
    learner_id: str | None = None
    trend: TrendOut | None = None
    replayed: bool = Field(
        default=False, description="the first result of a message sent again with its idempotency_key"
    )


class StreamTrajectoryFrame(BaseModel):
    """Sent after a result whose learner trend label differs from the last one this connection saw."""

    type: Literal["trajectory"] = "trajectory"
    id: MessageId = Field(description="the message that moved the trend")
    learner_id: str
    previous: str | None = Field(description="the label this connection saw before (null: first seen)")
    trend: TrendOut


class StreamErrorFrame(BaseModel):
    type: Literal["error"] = "error"
    id: MessageId
    status: int = Field(description="the HTTP status the same error gets on POST /v1/emotions")
    code: ErrorCode
    message: str
    retry_after: int | None = Field(
        default=None, description="seconds: when to send it again (409, 429, 503, 504)"
    )


class PolicyVersionOut(BaseModel):
    version: str = Field(description="`v<format>-<12 hex of its values>`: one version, one set of numbers")
    source: str = Field(description="the file it was read from")
    risk: Literal["hand_set", "fitted"] = Field(
        description="`fitted`: the intervention risk is a logistic model fitted from outcomes"
    )
    readiness: Literal["hand_set", "fitted"] = Field(description="the same for the readiness score")
    fitted: dict[str, str | int | float] = Field(
        default_factory=dict, description="for a fitted risk: what it was fitted on and how it scored"
    )


class PolicyOut(BaseModel):
    active: str = Field(
        description="the version the caller's tenant's analyses use now (and report as policy_version)"
    )
    default: str = Field(description="the deployment's version: what a tenant without its own choice uses")
    chosen_by_tenant: bool = Field(description="the caller's tenant chose its own version (DELETE undoes it)")
    switchable: bool = Field(description="false without GATEWAY_POLICY_DIR: only the start-up policy exists")
    versions: list[PolicyVersionOut]
    rejected: dict[str, str] = Field(
        default_factory=dict, description="policy files in the folder that were left out, and why"
    )


class PolicySwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[str, StringConstraints(pattern=r"^v[0-9]+-[0-9a-f]{12}$")] = Field(
        description="a version listed by GET /v1/policy"
    )
