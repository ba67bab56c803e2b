"""The serving spec: one object every Triton config is generated from, and the export manifest.

``spec.json`` (committed with the generated configs) holds the model's interface (inputs, max length,
labels) and the serving settings; batching and instance defaults were measured on a 2-core CPU
(../shared/notes/embedded-triton.md). What a model *is* (files, thresholds, version) lives in its
manifest (contract/manifest.py), written by export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from contract.names import DEFAULT_MAX_LENGTH, ENSEMBLE

SPEC_FILE = "spec.json"


@dataclass(frozen=True)
class TensorRTProfile:
    """Optimization profile for the TensorRT plan: shapes (batch, sequence) min..opt..max."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    min_seq: int = 1
    opt_seq: int = 32
    max_seq: int = 128

    def __post_init__(self) -> None:
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {self}")
        if not (1 <= self.min_seq <= self.opt_seq <= self.max_seq):
            raise ValueError(f"need 1 <= min_seq <= opt_seq <= max_seq, got {self}")

    def shapes(self, input_names: list[str]) -> dict[str, str]:
        """trtexec-style ``name:BxS`` lists for --minShapes/--optShapes/--maxShapes."""
        out = {}
        for kind, (b, s) in {
            "min": (self.min_batch, self.min_seq),
            "opt": (self.opt_batch, self.opt_seq),
            "max": (self.max_batch, self.max_seq),
        }.items():
            out[kind] = ",".join(f"{name}:{b}x{s}" for name in input_names)
        return out


@dataclass(frozen=True)
class ServingSpec:
    input_names: list[str]
    labels: list[str]
    max_length: int = DEFAULT_MAX_LENGTH
    ensemble_name: str = ENSEMBLE
    max_batch_size: int = 32
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    # 0 measured best on 2 cores: batches form anyway while instances are busy.
    max_queue_delay_us: int = 0
    max_queue_size: int = 256
    cpu_variant: str = "int8"
    cpu_instances: int = 2
    cpu_threads_per_instance: int = 1
    gpu_variant: str = "fp16"
    gpu_instances: int = 1
    gpu_max_queue_delay_us: int = 100
    # The onnxruntime/TensorRT backends batch only equal shapes: rounding lengths up to a multiple
    # lets requests from different tokenizer executions share a batch. The embedded classifier
    # re-pads ragged requests itself, so it needs no rounding.
    gpu_pad_to_multiple_of: int = 16
    # The embedded server on a GPU (--model-config-name=embedded-gpu): the classifier runs the torch
    # runtime (torch_classifier, FP16) in the python backend on KIND_GPU; the tokenizer and postprocess
    # stay python models on the CPU, with more instances to feed it. Batch sizes and the queue delay are
    # starting points until measured on a GPU host (docs/gpu.md says which were).
    embedded_gpu_variant: str = "torch_fp16"
    embedded_gpu_max_batch_size: int = 256
    embedded_gpu_preferred_batch_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    embedded_gpu_max_queue_delay_us: int = 500
    embedded_gpu_max_queue_size: int = 4096  # room for hundreds of concurrent clients
    embedded_gpu_classifier_instances: int = 1
    embedded_gpu_tokenizer_instances: int = 4
    embedded_gpu_postprocess_instances: int = 2
    # "cuda" on a GPU host; a test serves the same configuration with "cpu" (and instance kind "cpu").
    embedded_gpu_torch_device: str = "cuda"
    embedded_gpu_instance_kind: str = "gpu"
    response_cache_bytes: int = 64 * 1024 * 1024
    tensorrt: TensorRTProfile = field(default_factory=TensorRTProfile)

    def __post_init__(self) -> None:
        if self.max_length > self.tensorrt.max_seq:
            raise ValueError(
                f"max_length {self.max_length} exceeds the TensorRT profile's max_seq {self.tensorrt.max_seq}"
            )
        if self.tensorrt.max_batch < self.max_batch_size:
            raise ValueError("the TensorRT profile's max_batch must cover max_batch_size")
        if self.embedded_gpu_max_batch_size < self.max_batch_size:
            raise ValueError("embedded_gpu_max_batch_size must cover the ensemble's max_batch_size")
        if self.embedded_gpu_instance_kind not in ("gpu", "cpu"):
            raise ValueError(
                f"embedded_gpu_instance_kind must be gpu or cpu, not {self.embedded_gpu_instance_kind!r}"
            )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> ServingSpec:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["tensorrt"] = TensorRTProfile(**data.get("tensorrt", {}))
        return cls(**data)

    def for_model(self, input_names: list[str], max_length: int, labels: list[str]) -> ServingSpec:
        """These serving settings applied to another model's interface."""
        profile = replace(
            self.tensorrt,
            max_seq=max(self.tensorrt.max_seq, max_length),
            opt_seq=min(self.tensorrt.opt_seq, max(self.tensorrt.max_seq, max_length)),
        )
        return replace(
            self, input_names=list(input_names), max_length=max_length, labels=list(labels), tensorrt=profile
        )
