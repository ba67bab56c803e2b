"""What the pipeline answers: one analysis per request, one analysed text per text."""

from __future__ import annotations

from dataclasses import dataclass

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
