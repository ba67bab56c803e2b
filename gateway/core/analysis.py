"""What the pipeline answers: one analysis per request, one analysed text per text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.backends.triton import Prediction
from gateway.learning.state import LearningState
from gateway.learning.trajectory import Trend


@dataclass
class AnalysedText:
    prediction: Prediction
    cached: bool
    primary_emotion: str  # the most probable of prediction.labels; neutral when there are none
    confidence: float  # primary_emotion's probability
    state: LearningState


@dataclass
class Analysis:
    results: list[AnalysedText]  # one per text, in order
    inference_seconds: float
    all_cached: bool
    model_version: str  # the version every result came from (one per analysis)
    trend: Trend | None = None  # None without a learner, or while the learner store is unavailable
    # names the analysis: result i is "<request_id>-<i>" (POST /v1/outcomes links to it); its audit rows
    # carry the same request_id
    request_id: str = ""
    policy_version: str = ""  # the learning-state policy that decided (Policy.identity)
    context: dict[str, Any] | None = None  # the request's learner context, as sent

    def result_id(self, index: int) -> str:
        return f"{self.request_id}-{index}"
