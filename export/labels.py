"""The one labels file: the 28 GoEmotions labels, in model output order, with their tuned thresholds.

Written by export into the model repository; the label-mapping model and the gateway read it.
Only the standard library here, so readers need nothing heavy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABELS_FILE = "labels.json"


class LabelsFileError(ValueError):
    """The labels file is missing or inconsistent; the message names the problem."""


@dataclass(frozen=True)
class LabelSet:
    names: list[str]
    thresholds: list[float]
    model_version: str
    tuned_on: str = "dev"

    def __post_init__(self) -> None:
        if len(self.names) != len(self.thresholds):
            raise LabelsFileError(f"{len(self.names)} labels but {len(self.thresholds)} thresholds")
        if len(set(self.names)) != len(self.names):
            raise LabelsFileError("duplicate label names")
        bad = [
            t
            for t in self.thresholds
            if not (isinstance(t, (int, float)) and 0.0 < t < 1.0 and math.isfinite(t))
        ]
        if bad:
            raise LabelsFileError(f"thresholds must lie strictly between 0 and 1, got {bad}")

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "activation": "sigmoid",  # multi-label: each label independent, never softmax
            "tuned_on": self.tuned_on,
            "labels": [
                {"id": i, "name": n, "threshold": round(float(t), 4)}
                for i, (n, t) in enumerate(zip(self.names, self.thresholds, strict=True))
            ],
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def read_labels(path: Path) -> LabelSet:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelsFileError(f"{path}: missing; run `python -m export prepare` to write it") from None
    except json.JSONDecodeError as exc:
        raise LabelsFileError(f"{path}: not valid JSON ({exc})") from None
    try:
        entries = sorted(data["labels"], key=lambda e: e["id"])
        if [e["id"] for e in entries] != list(range(len(entries))):
            raise LabelsFileError(f"{path}: label ids must be 0..{len(entries) - 1} without gaps")
        return LabelSet(
            names=[str(e["name"]) for e in entries],
            thresholds=[float(e["threshold"]) for e in entries],
            model_version=str(data["model_version"]),
            tuned_on=str(data.get("tuned_on", "dev")),
        )
    except (KeyError, TypeError) as exc:
        raise LabelsFileError(f"{path}: missing or malformed field {exc}") from None
