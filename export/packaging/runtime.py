"""Text -> logits with the reference torch model or an ONNX variant, batched the same way.

Used by the gates, threshold tuning and the benchmark, so every path sees identical tokenization
and identical batches. A variant whose rows depend on their batch neighbours (dynamic INT8 computes
its activation scale over the whole input tensor) runs with execution ``per_row``: every text alone
at its own length, unpadded, as the Triton classifier runs it. Texts are normalised with
contract.text.normalize first, as the Triton tokenizer model does: the gates judge what is served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import DEFAULT_MAX_LENGTH, LOGITS
from contract.text import normalize
from export.arrays import Array

log = logging.getLogger(__name__)

BATCH, PER_ROW = "batch", "per_row"
EXECUTION_MODES = (BATCH, PER_ROW)


def load_tokenizer(model_ref: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_ref), use_fast=True)


def length_sorted_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class Classifier:
    """Tokenize with the model's own fast tokenizer and run ``forward`` on padded numpy batches
    (execution ``batch``) or on one unpadded text at a time (execution ``per_row``)."""

    def __init__(
        self,
        tokenizer: Any,
        input_names: list[str],
        max_length: int,
        forward: Callable[[dict[str, Array]], Array],
        execution: str = BATCH,
    ) -> None:
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        self.tokenizer = tokenizer
        self.input_names = input_names
        self.max_length = max_length
        self.execution = execution
        self._forward = forward

    def encode(self, texts: list[str]) -> dict[str, Array]:
        enc = self.tokenizer(
            [normalize(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {name: enc[name].astype(np.int64) for name in self.input_names}

    def logits(self, texts: list[str]) -> Array:
        """One forward over ``texts`` as a single batch, or one forward per text when per_row."""
        if self.execution == PER_ROW and len(texts) > 1:
            return np.concatenate([self._forward(self.encode([t])) for t in texts], axis=0)
        return self._forward(self.encode(texts))

    def predict(self, texts: list[str], batch_size: int = 32) -> Array:
        """Logits in input order; batches are formed from length-sorted texts to limit padding."""
        lengths = [
            len(ids)
            for ids in self.tokenizer(
                [normalize(t) for t in texts], truncation=True, max_length=self.max_length
            )["input_ids"]
        ]
        out: Array | None = None
        for idx in length_sorted_batches(lengths, batch_size):
            batch = self.logits([texts[i] for i in idx])
            if out is None:
                out = np.zeros((len(texts), batch.shape[1]), dtype=np.float32)
            out[idx] = batch
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def onnx_classifier(
    path: Path,
    tokenizer: Any,
    max_length: int = DEFAULT_MAX_LENGTH,
    threads: int = 0,
    execution: str = BATCH,
) -> Classifier:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]

    def forward(feed: dict[str, Array]) -> Array:
        return np.asarray(session.run([LOGITS], feed)[0], dtype=np.float32)

    return Classifier(tokenizer, input_names, max_length, forward, execution)


def torch_classifier(
    model_ref: str | Path,
    tokenizer: Any,
    input_names: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    threads: int = 0,
) -> Classifier:
    import torch
    from transformers import AutoModelForSequenceClassification

    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_ref))
    model.eval()

    def forward(feed: dict[str, Array]) -> Array:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
        return np.asarray(out.float().numpy(), dtype=np.float32)

    return Classifier(tokenizer, input_names, max_length, forward)
