"""Triton python backend: logits -> per-label calibrated sigmoid probabilities -> labels at the tuned
thresholds.

Multi-label: every label has its own sigmoid, temperature and threshold (never a softmax); the
probability is sigmoid(logit / temperature), the same as export.calibration.calibrated_probabilities
(a unit test keeps them equal). Thresholds, temperatures (1.0 where absent) and label names come from
the one labels file written by export (`labels_file`, relative to this model's directory).
LABELS holds a row's predicted labels; in a multi-row request, shorter rows are padded with empty
strings, and a row whose probabilities all stay under their thresholds has none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        labels_file = (Path(args["model_repository"]) / params["labels_file"]).resolve()
        entries = sorted(json.loads(labels_file.read_text())["labels"], key=lambda e: e["id"])
        num_labels = next(o["dims"][0] for o in config["output"] if o["name"] == "PROBABILITIES")
        if len(entries) != int(num_labels):
            raise pb_utils.TritonModelException(
                f"{labels_file} has {len(entries)} labels, config expects {num_labels}"
            )
        self.names = np.array([e["name"].encode() for e in entries], dtype=object)
        self.thresholds = np.array([e["threshold"] for e in entries], dtype=np.float32)
        self.temperatures = np.array([e.get("temperature", 1.0) for e in entries], dtype=np.float64)
        if not (np.isfinite(self.temperatures).all() and (self.temperatures > 0).all()):
            raise pb_utils.TritonModelException(f"{labels_file}: temperatures must be finite and > 0")

    def execute(self, requests):
        logits = [pb_utils.get_input_tensor_by_name(r, "logits").as_numpy() for r in requests]
        scaled = np.concatenate(logits).astype(np.float64) / self.temperatures
        probs = (1.0 / (1.0 + np.exp(-np.clip(scaled, -50, 50)))).astype(np.float32)
        hits = probs >= self.thresholds
        responses, start = [], 0
        for block in logits:
            n = block.shape[0]
            rows = [self.names[h] for h in hits[start : start + n]]
            width = max(1, max(len(r) for r in rows))
            labels = np.full((n, width), b"", dtype=object)
            for i, r in enumerate(rows):
                labels[i, : len(r)] = r
            tensors = [
                pb_utils.Tensor("PROBABILITIES", probs[start : start + n]),
                pb_utils.Tensor("LABELS", labels),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
