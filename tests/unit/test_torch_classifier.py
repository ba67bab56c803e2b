"""The torch runtime (torch_classifier) against transformers on tiny random models: same logits, rows
independent of their batch, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torch_classifier.encoder import load_classifier
from torch_classifier.weights import Architecture, WeightsError, load, save

TEXTS = ["I finally get it!", "why does this keep failing when I run it", "ok", "no"]


def hf_model(kind: str, num_labels: int = 31) -> object:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(3)
    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "num_labels": num_labels,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if kind == "bert":
        model = BertForSequenceClassification(
            BertConfig(vocab_size=120, max_position_embeddings=64, **common)
        )
    else:
        config = RobertaConfig(
            vocab_size=120, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1, **common
        )
        model = RobertaForSequenceClassification(config)
    with torch.no_grad():  # spread the head so differences would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def batch(kind: str) -> dict[str, torch.Tensor]:
    """Rows of different lengths, right-padded (pad id 0 for BERT, 1 for RoBERTa)."""
    pad = 0 if kind == "bert" else 1
    rows = [[2, 17, 33, 8, 95, 3], [2, 44, 3], [2, 7, 7, 7, 7, 7, 7, 7, 3], [2, 3]]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_same_logits_as_transformers(tmp_path: Path, kind: str):
    model = hf_model(kind)
    path = save(
        tmp_path / "w.safetensors", model.state_dict(), Architecture.from_hf_config(model.config), "float32"
    )
    ours = load_classifier(path)
    inputs = batch(kind)
    with torch.no_grad():
        want = model(**inputs).logits
    got = ours(**inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_a_row_does_not_depend_on_its_batch(tmp_path: Path, kind: str):
    model = hf_model(kind)
    ours = load_classifier(
        save(tmp_path / "w.safetensors", model.state_dict(), Architecture.from_hf_config(model.config))
    )
    inputs = batch(kind)
    together = ours(**inputs)
    for i in range(inputs["input_ids"].shape[0]):
        n = int(inputs["attention_mask"][i].sum())
        alone = ours(**{k: v[i : i + 1, :n] for k, v in inputs.items()})
        torch.testing.assert_close(alone[0], together[i], rtol=0, atol=1e-5)


def test_fp16_file_is_half_the_size_and_close(tmp_path: Path):
    model = hf_model("bert")
    arch = Architecture.from_hf_config(model.config)
    fp32 = save(tmp_path / "a.safetensors", model.state_dict(), arch, "float32")
    fp16 = save(tmp_path / "b.safetensors", model.state_dict(), arch)
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    _, tensors = load(fp16)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    inputs = batch("bert")
    a, b = (
        load_classifier(fp32)(**inputs),
        load_classifier(fp16)(**inputs),
    )  # FP16 weights, FP32 compute on CPU
    assert float((a - b).abs().max()) < 1e-2
    assert load_classifier(fp16)(**inputs).dtype == torch.float32


def test_an_all_padding_row_stays_finite(tmp_path: Path):
    # Triton's warmup sends rows of zeros: the runtime must answer them, not NaN
    model = hf_model("bert")
    ours = load_classifier(
        save(tmp_path / "w.safetensors", model.state_dict(), Architecture.from_hf_config(model.config))
    )
    zeros = torch.zeros((2, 16), dtype=torch.long)
    assert np.isfinite(ours(zeros, zeros, zeros).numpy()).all()


def test_refusals_name_the_problem(tmp_path: Path):
    model = hf_model("bert")
    arch = Architecture.from_hf_config(model.config)
    with pytest.raises(WeightsError, match="serves bert, roberta models, not 'distilbert'"):
        Architecture(**{**arch.__dict__, "model_type": "distilbert"})
    state = {k: v for k, v in model.state_dict().items() if "pooler" not in k}
    with pytest.raises(WeightsError, match="weights lack"):
        load_classifier(save(tmp_path / "w.safetensors", state, arch))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="no goemotions_architecture metadata"):
        load(tmp_path / "plain.safetensors")


# --- the classifier python model with runtime torch (what configs/embedded-gpu.pbtxt serves) ---


def served_classifier(monkeypatch, tmp_path: Path, device: str):
    from contract.manifest import FileEntry, Manifest, VariantEntry
    from tests.support.python_backend import initialize, install_stub, load_model_module

    model = hf_model("bert")
    version_dir = tmp_path / "classifier" / "1"
    path = save(
        version_dir / "model.fp16.safetensors", model.state_dict(), Architecture.from_hf_config(model.config)
    )
    entry = FileEntry.of(path)
    variant = VariantEntry(
        entry.file, entry.sha256, entry.size_bytes, "fp16", "batch", [0.5] * 31, [1.0] * 31
    )
    labels = [f"l{i}" for i in range(31)]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    Manifest("tiny", "here", labels, names, 128, {}, entry, {"torch_fp16": variant}).write(
        version_dir / "manifest.json"
    )
    install_stub(monkeypatch)
    config = {
        "parameters": {
            "runtime": {"string_value": "torch"},
            "variant": {"string_value": "torch_fp16"},
            "torch_device": {"string_value": device},
        },
        "input": [{"name": n} for n in names],
    }
    return initialize(load_model_module("classifier"), version_dir, config), path


def test_the_served_torch_classifier_answers_ragged_requests_as_the_runtime_does(monkeypatch, tmp_path):
    from tests.support.python_backend import StubTensor

    served, path = served_classifier(monkeypatch, tmp_path, "cpu")
    inputs = batch("bert")
    # two requests with their own lengths (allow_ragged_batch): the model re-pads them into one batch
    requests = []
    for rows in (slice(0, 1), slice(1, 4)):
        width = int(inputs["attention_mask"][rows].sum(dim=1).max())
        requests.append({k: StubTensor(k, v[rows, :width].numpy()) for k, v in inputs.items()})
    responses = served.execute(requests)
    got = np.concatenate([r.outputs["logits"] for r in responses])
    want = load_classifier(path)(**inputs).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [r.outputs["logits"].shape[0] for r in responses] == [1, 3]


def test_the_served_torch_classifier_refuses_cuda_without_a_gpu(monkeypatch, tmp_path):
    from tests.support.python_backend import ModelLoadError

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(ModelLoadError, match="torch sees no CUDA device"):
        served_classifier(monkeypatch, tmp_path, "cuda")


def test_random_weights_have_the_trained_models_names_and_shapes(tmp_path: Path):
    from torch_classifier.weights import random_state_dict

    model = hf_model("bert")
    arch = Architecture.from_hf_config(model.config)
    trained = {
        k: v for k, v in model.state_dict().items() if not k.endswith(("position_ids", "token_type_ids"))
    }
    random = random_state_dict(arch, vocab_size=120, max_positions=64, type_vocab_size=2)
    assert {k: tuple(v.shape) for k, v in random.items()} == {k: tuple(v.shape) for k, v in trained.items()}
    out = load_classifier(save(tmp_path / "r.safetensors", random, arch))(**batch("bert"))
    assert out.shape == (4, 31) and torch.isfinite(out).all()
