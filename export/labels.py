"""The one labels file: the 28 GoEmotions labels, in model output order, with their tuned thresholds
and calibration temperatures (probability = sigmoid(logit / temperature); 1.0 when a file has none).

Written by export into the model repository; the label-mapping model and the gateway read it.
Only the standard library here, so readers need nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    # Empty: no calibration, every temperature 1.0 (files written before calibration read this way).
    temperatures: list[float] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # how the temperatures were fitted, ECE before/after

    def __post_init__(self) -> None:
        if not self.temperatures:
            object.__setattr__(self, "temperatures", [1.0] * len(self.names))
        if len(self.names) != len(self.thresholds):
            raise LabelsFileError(f"{len(self.names)} labels but {len(self.thresholds)} thresholds")
        if len(self.names) != len(self.temperatures):
            raise LabelsFileError(f"{len(self.names)} labels but {len(self.temperatures)} temperatures")
        if len(set(self.names)) != len(self.names):
            raise LabelsFileError("duplicate label names")
        bad = [
            t
            for t in self.thresholds
            if not (isinstance(t, (int, float)) and 0.0 < t < 1.0 and math.isfinite(t))
        ]
        if bad:
            raise LabelsFileError(f"thresholds must lie strictly between 0 and 1, got {bad}")
        bad = [
            t
            for t in self.temperatures
            if isinstance(t, bool) or not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0)
        ]
        if bad:
            raise LabelsFileError(f"temperatures must be finite and greater than 0, got {bad}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model_version": self.model_version,
            "activation": "sigmoid",  # multi-label: each label independent, never softmax
            "tuned_on": self.tuned_on,
        }
        if self.calibration is not None:
            data["calibration"] = self.calibration
        data["labels"] = [
            {"id": i, "name": n, "threshold": round(float(t), 4)}
            for i, (n, t) in enumerate(zip(self.names, self.thresholds, strict=True))
        ]
        # Uncalibrated sets without a calibration block keep the pre-calibration format (1.0 is the default).
        if self.calibration is not None or any(t != 1.0 for t in self.temperatures):
            for entry, temp in zip(data["labels"], self.temperatures, strict=True):
                entry["temperature"] = round(float(temp), 4)
        return data

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
            temperatures=[float(e.get("temperature", 1.0)) for e in entries],
            calibration=_calibration_block(data.get("calibration"), path),
        )
    except (KeyError, TypeError) as exc:
        raise LabelsFileError(f"{path}: missing or malformed field {exc}") from None
    except LabelsFileError:
        raise
    except ValueError as exc:  # float("abc")
        raise LabelsFileError(f"{path}: {exc}") from None


def _calibration_block(value: Any, path: Path) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise LabelsFileError(f"{path}: 'calibration' must be an object, got {type(value).__name__}")
    return value


def model_version(
    name: str, model_digest: str, thresholds: Sequence[float], temperatures: Sequence[float]
) -> str:
    """``name-<12 hex>`` from the model file's digest and the label mapping as the labels file writes it.

    Caches key on this version, so new weights, thresholds or temperatures must each give a new one.
    """
    mapping = [
        [round(float(t), 4), round(float(temp), 4)] for t, temp in zip(thresholds, temperatures, strict=True)
    ]
    payload = json.dumps({"model": model_digest, "mapping": mapping}, sort_keys=True)
    return f"{name[-40:]}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
