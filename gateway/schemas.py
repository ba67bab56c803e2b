"""Request and response models (with examples, so /docs is a usable manual)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LearnerContextIn(BaseModel):
    # No infinities/NaN, and upper bounds: found by fuzzing, 1e999 or a 310-digit count used to reach
    # the policy arithmetic and end in a 500.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    time_on_task_seconds: float | None = Field(
        default=None, ge=0, le=7 * 24 * 3600, description="time on the current task (at most a week)"
    )
    recent_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="share of recent wrong answers"
    )
    consecutive_errors: int | None = Field(default=None, ge=0, le=100_000)


class EmotionsRequest(BaseModel):
    """One text (`text`) or a batch (`texts`), optionally for a learner."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "I finally get it, thank you!"},
                {
                    "texts": ["This makes no sense.", "Oh wait, now I see it!"],
                    "learner_id": "learner-42",
                    "context": {"time_on_task_seconds": 310, "recent_error_rate": 0.4},
                },
            ]
        },
    )

    text: str | None = Field(default=None, description="a single text")
    texts: list[str] | None = Field(default=None, description="a batch of texts")
    learner_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")
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
    reasons: list[str]


class EmotionResult(BaseModel):
    text_index: int
    emotions: dict[str, float] = Field(description="probability per GoEmotions label (independent sigmoids)")
    labels: list[str] = Field(description="labels at or over their tuned thresholds (may be empty)")
    primary_emotion: str
    confidence: float
    cached: bool
    learning_state: LearningStateOut


class TrendOut(BaseModel):
    label: str
    slope: float | None
    volatility: float | None
    points: int


class ModelInfo(BaseModel):
    name: str
    version: str


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
    primary_emotion: str


class TrajectoryResponse(BaseModel):
    learner_id: str
    trend: TrendOut
    points: list[TrajectoryPointOut]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
