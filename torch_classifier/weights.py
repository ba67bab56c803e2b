"""One file per torch variant: the classifier's tensors (safetensors, FP16 by default) with the architecture
as JSON in the file's metadata, so the file is the whole model and its sha256 (in the manifest) covers both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ARCHITECTURE_KEY = "goemotions_architecture"
MODEL_TYPES = ("bert", "roberta")
ACTIVATIONS = ("gelu", "gelu_new", "relu")


class WeightsError(ValueError):
    """The weights file cannot be served by this runtime; the message says why."""


@dataclass(frozen=True)
class Architecture:
    model_type: str  # bert (BERT, MiniLM) or roberta
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    num_labels: int
    pad_token_id: int

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise WeightsError(
                f"the torch runtime serves {', '.join(MODEL_TYPES)} models, not {self.model_type!r}; "
                "serve this model with the onnxruntime runtime"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise WeightsError(f"activation {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.hidden_size % self.num_heads:
            raise WeightsError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_heads} heads")

    @classmethod
    def from_hf_config(cls, config: Any) -> Architecture:
        """From a transformers ``PretrainedConfig`` (at export time, where transformers exists)."""
        return cls(
            model_type=str(config.model_type),
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            num_heads=int(config.num_attention_heads),
            intermediate_size=int(config.intermediate_size),
            hidden_act=str(config.hidden_act),
            layer_norm_eps=float(config.layer_norm_eps),
            num_labels=int(config.num_labels),
            pad_token_id=int(config.pad_token_id if config.pad_token_id is not None else 0),
        )


def save(path: Path, state_dict: dict[str, Any], architecture: Architecture, dtype: str = "float16") -> Path:
    """Write ``state_dict`` (a transformers sequence-classification model's) as ``dtype`` with its
    architecture; buffers that are not weights (position ids) are left out."""
    import torch
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    tensors = {
        name: tensor.detach().to(target).contiguous()
        for name, tensor in state_dict.items()
        if not name.endswith(("position_ids", "token_type_ids")) and tensor.is_floating_point()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={ARCHITECTURE_KEY: json.dumps(asdict(architecture))})
    return path


def load(path: Path, device: str = "cpu") -> tuple[Architecture, dict[str, Any]]:
    """The architecture and the tensors of a weights file (on ``device``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as f:
        metadata = f.metadata() or {}
        if ARCHITECTURE_KEY not in metadata:
            raise WeightsError(f"{path}: no {ARCHITECTURE_KEY} metadata; export it with `python -m export`")
        try:
            architecture = Architecture(**json.loads(metadata[ARCHITECTURE_KEY]))
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: bad architecture metadata ({exc})") from None
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    return architecture, tensors


def random_state_dict(
    architecture: Architecture, vocab_size: int, max_positions: int, type_vocab_size: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Seeded random weights of ``architecture``'s shapes and names (transformers' layout): enough to
    measure speed where the trained weights cannot travel (the GPU host's 64 MiB), never to answer."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    a = architecture
    p, h = a.model_type, a.hidden_size

    def w(*shape: int) -> Any:
        return torch.randn(*shape, generator=generator) * 0.02

    state = {
        f"{p}.embeddings.word_embeddings.weight": w(vocab_size, h),
        f"{p}.embeddings.position_embeddings.weight": w(max_positions, h),
        f"{p}.embeddings.token_type_embeddings.weight": w(type_vocab_size, h),
    }

    def linear(name: str, out: int, inp: int) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = w(out, inp), torch.zeros(out)

    def norm(name: str) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = torch.ones(h), torch.zeros(h)

    norm(f"{p}.embeddings.LayerNorm")
    for i in range(a.num_layers):
        layer = f"{p}.encoder.layer.{i}"
        for part in ("query", "key", "value"):
            linear(f"{layer}.attention.self.{part}", h, h)
        linear(f"{layer}.attention.output.dense", h, h)
        norm(f"{layer}.attention.output.LayerNorm")
        linear(f"{layer}.intermediate.dense", a.intermediate_size, h)
        linear(f"{layer}.output.dense", h, a.intermediate_size)
        norm(f"{layer}.output.LayerNorm")
    if a.model_type == "bert":
        linear(f"{p}.pooler.dense", h, h)
        linear("classifier", a.num_labels, h)
    else:
        linear("classifier.dense", h, h)
        linear("classifier.out_proj", a.num_labels, h)
    return state
