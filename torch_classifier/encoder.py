"""A BERT-family sequence classifier in plain torch, numerically the transformers model in eval mode.

BERT / MiniLM: embeddings (word + position + token type) -> LayerNorm -> N post-LN transformer layers ->
pooler (tanh over [CLS]) -> linear. RoBERTa: positions count from ``pad_token_id + 1`` over non-padding
tokens, and its head is dense -> tanh -> out_proj over ``<s>``. Attention is torch's
``scaled_dot_product_attention`` with the padding masked, so a row's logits do not depend on how far
other rows of its batch are padded (to float precision; FP16 on a GPU within the parity tolerance).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from torch_classifier.weights import Architecture, WeightsError, load


def _activation(name: str) -> Any:
    if name == "gelu":
        return F.gelu
    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class SequenceClassifier(torch.nn.Module):
    def __init__(self, architecture: Architecture, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.arch = architecture
        self.prefix = architecture.model_type  # "bert." or "roberta." in transformers' names
        missing = [name for name in self._required() if name not in tensors]
        if missing:
            raise WeightsError(f"weights lack {len(missing)} tensor(s), e.g. {missing[:3]}")
        # Plain tensors, no nn.Parameter: inference only, and .to(dtype/device) moves them all.
        self.weights = torch.nn.ParameterDict(
            {
                name.replace(".", "__"): torch.nn.Parameter(t, requires_grad=False)
                for name, t in tensors.items()
            }
        )
        self.act = _activation(architecture.hidden_act)

    def _w(self, name: str) -> torch.Tensor:
        tensor: torch.Tensor = self.weights[name.replace(".", "__")]
        return tensor

    def _required(self) -> list[str]:
        p = self.prefix
        names = [f"{p}.embeddings.word_embeddings.weight", f"{p}.embeddings.position_embeddings.weight"]
        for i in range(self.arch.num_layers):
            layer = f"{p}.encoder.layer.{i}"
            names += [f"{layer}.attention.self.query.weight", f"{layer}.output.LayerNorm.weight"]
        if self.arch.model_type == "bert":
            names += [f"{p}.pooler.dense.weight", "classifier.weight"]
        else:
            names += ["classifier.dense.weight", "classifier.out_proj.weight"]
        return names

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._w(f"{name}.weight"), self._w(f"{name}.bias"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(
            x, (x.shape[-1],), self._w(f"{name}.weight"), self._w(f"{name}.bias"), self.arch.layer_norm_eps
        )

    def _embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        p = f"{self.prefix}.embeddings"
        if self.arch.model_type == "roberta":
            pad = self.arch.pad_token_id
            not_pad = input_ids.ne(pad).long()
            positions = torch.cumsum(not_pad, dim=1) * not_pad + pad
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = F.embedding(input_ids, self._w(f"{p}.word_embeddings.weight"))
        x = x + F.embedding(positions, self._w(f"{p}.position_embeddings.weight"))
        types = f"{p}.token_type_embeddings.weight"
        if types.replace(".", "__") in self.weights:
            ids = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + F.embedding(ids, self._w(types))
        return self._norm(x, f"{p}.LayerNorm")

    def _layer(self, x: torch.Tensor, keep: torch.Tensor, i: int) -> torch.Tensor:
        name = f"{self.prefix}.encoder.layer.{i}"
        batch, length, hidden = x.shape
        heads = self.arch.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, hidden // heads).transpose(1, 2)

        q = split(self._linear(x, f"{name}.attention.self.query"))
        k = split(self._linear(x, f"{name}.attention.self.key"))
        v = split(self._linear(x, f"{name}.attention.self.value"))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, scale=1.0 / math.sqrt(hidden // heads)
        )
        context = context.transpose(1, 2).reshape(batch, length, hidden)
        x = self._norm(
            x + self._linear(context, f"{name}.attention.output.dense"), f"{name}.attention.output.LayerNorm"
        )
        inner = self.act(self._linear(x, f"{name}.intermediate.dense"))
        return self._norm(x + self._linear(inner, f"{name}.output.dense"), f"{name}.output.LayerNorm")

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self._embed(input_ids, attention_mask, token_type_ids)
        # [batch, 1, 1, keys], added to the scores: 0 where a key may be attended to, the dtype's minimum on
        # padding (as transformers does; a boolean mask would give NaN on an all-padding warmup row)
        keep = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for i in range(self.arch.num_layers):
            x = self._layer(x, keep, i)
        first = x[:, 0]
        if self.arch.model_type == "bert":
            pooled = torch.tanh(self._linear(first, f"{self.prefix}.pooler.dense"))
            return self._linear(pooled, "classifier")
        return self._linear(torch.tanh(self._linear(first, "classifier.dense")), "classifier.out_proj")


def load_classifier(path: Path, device: str = "cpu", dtype: torch.dtype | None = None) -> SequenceClassifier:
    """The classifier in ``path`` on ``device``: FP16 on CUDA, FP32 on a CPU unless ``dtype`` says."""
    architecture, tensors = load(path)
    chosen = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
    model = SequenceClassifier(architecture, tensors)
    return model.to(device=device, dtype=chosen).eval()
