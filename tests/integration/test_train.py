"""The student trainer on a tiny model and tiny data: output format, report, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import export.training.train as train_mod
from export.training.train import CHECKPOINT_DIR, REPORT_FILE, TrainConfig, is_trained, train

CFG = TrainConfig(epochs=1.5, batch_size=8, checkpoint_every_steps=5, limit_eval=60)


def test_writes_a_standard_hf_model_dir(tmp_path, tiny_model, tiny_data, label_names):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "student"
    report = train(out, CFG, data_dir=tiny_data, base=tiny_model)
    assert is_trained(out)
    assert report["steps"] == report["total_steps"] == 23  # ceil(15 batches * 1.5)
    assert not (out / CHECKPOINT_DIR).exists()  # cleaned up after a finished run
    assert set(report["dev_at_tuned"]) == {"micro_f1", "macro_f1"}
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert [config["id2label"][str(i)] for i in range(28)] == label_names
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model(**tok(["so happy!"], return_tensors="pt")).logits.shape == (1, 28)
    # a second call is a no-op that returns the saved report
    assert train(out, CFG, data_dir=tiny_data, base=tiny_model) == json.loads((out / REPORT_FILE).read_text())


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_model, tiny_data, monkeypatch):
    straight = tmp_path / "straight"
    train(straight, CFG, data_dir=tiny_data, base=tiny_model)

    resumed = tmp_path / "resumed"
    real_save = train_mod._save_checkpoint

    def save_then_crash(path, model, optimizer, scheduler, step):
        real_save(path, model, optimizer, scheduler, step)
        if step == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(resumed, CFG, data_dir=tiny_data, base=tiny_model)
    assert (resumed / CHECKPOINT_DIR / "state.pt").is_file() and not is_trained(resumed)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    report = train(resumed, CFG, data_dir=tiny_data, base=tiny_model)
    assert report["steps"] == 23
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def test_time_budget_stops_and_saves(tmp_path, tiny_model, tiny_data):
    cfg = TrainConfig(epochs=1, batch_size=8, time_budget_minutes=0.0, limit_eval=30)
    report = train(tmp_path / "s", cfg, data_dir=tiny_data, base=tiny_model)
    assert report["stopped_early"] is True and report["steps"] == 1
    assert is_trained(tmp_path / "s")


def test_head_gets_its_own_learning_rate(tiny_model, label_names):
    model = train_mod._build_model(Path(tiny_model), label_names)
    groups = train_mod._param_groups(model, TrainConfig(head_lr=3e-3, encoder_lr=1e-4))
    head_ids = {id(p) for p in groups[0]["params"]}
    assert groups[0]["lr"] == 3e-3 and groups[1]["lr"] == groups[2]["lr"] == 1e-4
    assert id(model.classifier.weight) in head_ids and id(model.bert.pooler.dense.weight) in head_ids
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert all(p.ndim < 2 for p in groups[2]["params"])  # no weight decay on biases / LayerNorm
