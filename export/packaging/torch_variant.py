"""The torch variant, for the embedded server on a GPU: the model's weights in FP16 in one safetensors file
with its architecture (torch_classifier.weights), served by the torch_classifier runtime (FP16 on CUDA,
FP32 arithmetic on a CPU). Only BERT-family models (BERT, MiniLM, RoBERTa) have one; for others the
export goes on without it and the GPU path is the container's onnxruntime/TensorRT backends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import DEFAULT_MAX_LENGTH
from export.arrays import Array
from export.packaging.runtime import BATCH, Classifier
from export.packaging.variants import BuiltVariant
from torch_classifier.weights import Architecture, WeightsError, save

log = logging.getLogger(__name__)

TORCH_FP16 = "torch_fp16"
TORCH_FILE = "model.fp16.safetensors"
# What the manifest records as answer-changing settings of this variant.
TORCH_SETTINGS = {"runtime": "torch", "weights": "float16", "compute": "float16 on CUDA, float32 on CPU"}


def build_torch_fp16(model_ref: str, out_dir: Path) -> BuiltVariant | None:
    """Write ``TORCH_FILE`` from ``model_ref``; None (logged) when the runtime cannot serve the model."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_ref)
    try:
        architecture = Architecture.from_hf_config(model.config)
    except WeightsError as exc:
        log.warning("no %s variant: %s", TORCH_FP16, exc)
        return None
    path = save(out_dir / TORCH_FILE, model.state_dict(), architecture)
    log.info("wrote %s (%s, FP16 weights for the torch runtime)", path, architecture.model_type)
    return BuiltVariant(path, "fp16", BATCH, dict(TORCH_SETTINGS))


def torch_runtime_classifier(
    path: Path,
    tokenizer: Any,
    input_names: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    device: str = "cpu",
) -> Classifier:
    """The variant as the embedded server runs it (torch_classifier), batched like every other path."""
    import torch

    from torch_classifier.encoder import load_classifier

    model = load_classifier(path, device)

    def forward(feed: dict[str, Array]) -> Array:
        out = model(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()})
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    return Classifier(tokenizer, input_names, max_length, forward)
