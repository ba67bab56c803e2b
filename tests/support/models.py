"""Tiny models the tests build themselves: random-init weights, the real MiniLM tokenizer."""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(target: Path, label_names: list[str], seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the real all-MiniLM-L6-v2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from export.training.train import base_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(label_names),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    model = BertForSequenceClassification(config)
    # Larger head weights so logits spread and thresholds/F1 are not degenerate.
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
