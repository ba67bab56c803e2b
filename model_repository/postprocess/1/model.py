"""Triton python backend: logits -> per-label calibrated sigmoid probabilities -> labels at the tuned
thresholds, and the version of the model that produced them.

Multi-label: every label has its own sigmoid, temperature and threshold (never a softmax); the
probability is sigmoid(logit / temperature), the same as
export.training.calibration.calibrated_probabilities (a unit test keeps them equal). Labels, thresholds
and temperatures of the served variant (parameter ``variant``) come from the manifest next to this file
(written by `python -m export install`, read and validated with contract.manifest), so they always
belong to the weights the classifier verified against the same manifest.
LABELS holds a row's predicted labels; in a multi-row request, shorter rows are padded with empty
strings, and a row whose probabilities all stay under their thresholds has none. MODEL_VERSION is
``<manifest version>-<variant>`` for every row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from contract.manifest import MANIFEST_FILE, Manifest, ManifestError
from contract.names import LABELS, LOGITS, MODEL_VERSION, PROBABILITIES


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / MANIFEST_FILE
        try:  # also refuses thresholds outside (0, 1) and temperatures that are not finite and > 0
            manifest = Manifest.read(path)
        except ManifestError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        variant = params["variant"]
        if variant not in manifest.variants:
            raise pb_utils.TritonModelException(f"{path}: no variant {variant!r}")
        entry = manifest.variants[variant]
        num_labels = next(o["dims"][0] for o in config["output"] if o["name"] == PROBABILITIES)
        if len(manifest.labels) != int(num_labels):
            raise pb_utils.TritonModelException(
                f"{path} has {len(manifest.labels)} labels, config expects {num_labels}"
            )
        self.names = np.array([n.encode() for n in manifest.labels], dtype=object)
        self.thresholds = np.array(entry.thresholds, dtype=np.float32)
        self.temperatures = np.array(entry.temperatures, dtype=np.float64)
        self.version = manifest.served_version(variant).encode()

    def execute(self, requests):
        logits = [pb_utils.get_input_tensor_by_name(r, LOGITS).as_numpy() for r in requests]
        scaled = np.concatenate(logits).astype(np.float64) / self.temperatures
        probs = (1.0 / (1.0 + np.exp(-np.clip(scaled, -50, 50)))).astype(np.float32)
        # NaN compares false: a non-finite row gets no labels here and is refused by the gateway.
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
                pb_utils.Tensor(PROBABILITIES, probs[start : start + n]),
                pb_utils.Tensor(LABELS, labels),
                pb_utils.Tensor(MODEL_VERSION, np.full((n, 1), self.version, dtype=object)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
