"""The student trainer on a tiny model and tiny data: output format, report, and exact resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import export.training.train as train_mod
from contract.names import GOEMOTIONS_LABELS, LEARNING_SIGNALS
from export.training.learner_data import learner_targets, load_learner_messages
from export.training.train import (
    CHECKPOINT_DIR,
    REPORT_FILE,
    TrainConfig,
    is_trained,
    masked_bce,
    train,
    training_rows,
)

CFG = TrainConfig(epochs=1.5, batch_size=8, checkpoint_every_steps=5, limit_eval=60, learning_signals=False)
# With the fake clock below (about 3 s a step), a 1-minute budget holds about half of CFG's 23 steps.
SLOW = dataclasses.replace(CFG, time_budget_minutes=1.0, warmup_ratio=0.1)


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


def _crash_then_resume(
    out: Path, cfg: TrainConfig, tiny_data, tiny_model, monkeypatch, at_step: int = 10
) -> dict:
    """Train ``out`` until the checkpoint at ``at_step``, stop it there as a crash would, then train it
    again."""
    real_save = train_mod._save_checkpoint

    def save_then_crash(path, model, optimizer, scheduler, step, *rest):
        real_save(path, model, optimizer, scheduler, step, *rest)
        if step == at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(out, cfg, data_dir=tiny_data, base=tiny_model)
    assert (out / CHECKPOINT_DIR / "state.pt").is_file() and not is_trained(out)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    return train(out, cfg, data_dir=tiny_data, base=tiny_model)


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_model, tiny_data, monkeypatch):
    train(tmp_path / "straight", CFG, data_dir=tiny_data, base=tiny_model)
    report = _crash_then_resume(tmp_path / "resumed", CFG, tiny_data, tiny_model, monkeypatch)
    assert report["steps"] == 23
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, tiny_model, tiny_data) -> Path:
    """CFG trained once in float32: the run both bfloat16 tests compare with."""
    out = tmp_path_factory.mktemp("fp32") / "student"
    train(out, dataclasses.replace(CFG, bf16=False), data_dir=tiny_data, base=tiny_model)
    return out


def test_bf16_runs_forward_and_backward_in_bfloat16_and_saves_float32(
    tmp_path, tiny_model, tiny_data, monkeypatch, fp32_run
):
    # forced on, so the test does not depend on the CPU (bfloat16 is emulated where it is not native)
    monkeypatch.setattr(train_mod, "bf16_supported", lambda: True)
    report = train(
        tmp_path / "bf16", dataclasses.replace(CFG, bf16=True), data_dir=tiny_data, base=tiny_model
    )
    assert report["bf16"] is True
    fp32, bf16 = (
        load_file(fp32_run / "model.safetensors"),
        load_file(tmp_path / "bf16" / "model.safetensors"),
    )
    assert {t.dtype for t in bf16.values()} == {torch.float32}
    # the fp32 run is exactly reproducible (resume test), so a difference is bfloat16's rounding
    moved = max(float((bf16[k] - fp32[k]).abs().max()) for k in fp32)
    assert moved > 1e-4


def test_bf16_on_a_cpu_without_it_trains_float32(
    tmp_path, tiny_model, tiny_data, monkeypatch, caplog, fp32_run
):
    monkeypatch.setattr(train_mod, "bf16_supported", lambda: False)
    report = train(
        tmp_path / "asked", dataclasses.replace(CFG, bf16=True), data_dir=tiny_data, base=tiny_model
    )
    assert report["bf16"] is False
    assert "no native bfloat16" in caplog.text
    _assert_same_weights(fp32_run, tmp_path / "asked")


def test_time_budget_stops_and_saves(tmp_path, tiny_model, tiny_data):
    cfg = TrainConfig(epochs=1, batch_size=8, time_budget_minutes=0.0, limit_eval=30, learning_signals=False)
    report = train(tmp_path / "s", cfg, data_dir=tiny_data, base=tiny_model)
    assert report["stopped_early"] is True and report["steps"] == 1
    assert is_trained(tmp_path / "s")


class _Clock:
    """A fake ``time.monotonic``: every reading is ``tick`` seconds after the one before."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


def test_a_slow_machine_gets_a_schedule_that_fits_the_budget(tmp_path, tiny_model, tiny_data, monkeypatch):
    monkeypatch.setattr(train_mod, "time", _Clock(tick=1.0))
    cfg = dataclasses.replace(SLOW, fit_schedule_to_budget=True)
    report = train(tmp_path / "s", cfg, data_dir=tiny_data, base=tiny_model)
    assert report["planned_steps"] == 23
    assert report["steps"] == report["total_steps"] < 23
    assert report["stopped_early"] is False
    assert report["lr_at_stop"] == 0.0  # the rate decayed to 0 inside the budget


def test_a_fitted_schedule_is_kept_on_resume(tmp_path, tiny_model, tiny_data, monkeypatch):
    cfg = dataclasses.replace(SLOW, fit_schedule_to_budget=True)
    monkeypatch.setattr(train_mod, "time", _Clock(tick=1.0))
    straight = train(tmp_path / "straight", cfg, data_dir=tiny_data, base=tiny_model)
    # crashed after the last fit (step 15), the resumed run ends where the fitted schedule ended, not at 23
    resumed = _crash_then_resume(tmp_path / "resumed", cfg, tiny_data, tiny_model, monkeypatch, at_step=15)
    assert resumed["steps"] == resumed["total_steps"] == straight["total_steps"] < 23
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_a_resumed_run_gets_what_is_left_of_the_budget_not_a_fresh_one(
    tmp_path, tiny_model, tiny_data, monkeypatch
):
    monkeypatch.setattr(train_mod, "time", _Clock(tick=1.0))
    straight = train(tmp_path / "straight", SLOW, data_dir=tiny_data, base=tiny_model)
    resumed = _crash_then_resume(tmp_path / "resumed", SLOW, tiny_data, tiny_model, monkeypatch)
    assert straight["stopped_early"] is resumed["stopped_early"] is True
    # a fresh minute from step 10 would reach all 23 steps; what is left of the first holds about as
    # many as the straight run took (the fake clock ticks per reading, and a resume reads it differently)
    assert abs(resumed["steps"] - straight["steps"]) <= 2 and max(resumed["steps"], straight["steps"]) < 23
    # both runs' seconds: just past the minute (the last step), not the resumed run's own half of it
    assert 60 < resumed["budget_seconds_spent"] < 75


def test_the_snapshot_and_the_run_resumed_after_it_share_one_budget(
    tmp_path, tiny_model, tiny_data, monkeypatch
):
    from export.training.train import Snapshot

    monkeypatch.setattr(train_mod, "time", _Clock(tick=1.0))
    out = tmp_path / "s"
    first = train(out, SLOW, data_dir=tiny_data, base=tiny_model, snapshot=Snapshot(tmp_path / "first", 0.5))
    assert first["snapshot"] is True and 0 < first["steps"] < 23
    final = train(out, SLOW, data_dir=tiny_data, base=tiny_model)
    # half a minute of snapshot, then the rest of the one minute: stopped well short of 23 steps
    assert final["stopped_early"] is True and final["steps"] < 23
    assert 60 < final["budget_seconds_spent"] < 75


def test_without_fitting_the_guard_stops_mid_schedule(tmp_path, tiny_model, tiny_data, monkeypatch):
    monkeypatch.setattr(train_mod, "time", _Clock(tick=1.0))
    cfg = dataclasses.replace(SLOW, fit_schedule_to_budget=False)
    report = train(tmp_path / "s", cfg, data_dir=tiny_data, base=tiny_model)
    assert report["stopped_early"] is True
    assert report["steps"] < report["total_steps"] == report["planned_steps"] == 23
    assert report["lr_at_stop"] > 0.0


def test_head_gets_its_own_learning_rate(tiny_model, label_names):
    model = train_mod._build_model(Path(tiny_model), label_names)
    groups = train_mod._param_groups(model, TrainConfig(head_lr=3e-3, encoder_lr=1e-4))
    head_ids = {id(p) for p in groups[0]["params"]}
    assert groups[0]["lr"] == 3e-3 and groups[1]["lr"] == groups[2]["lr"] == 1e-4
    assert id(model.classifier.weight) in head_ids and id(model.bert.pooler.dense.weight) in head_ids
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert all(p.ndim < 2 for p in groups[2]["params"])  # no weight decay on biases / LayerNorm


def test_learning_signals_are_extra_outputs_learned_from_the_learner_train_split(
    tmp_path, tiny_model, tiny_data, label_names
):
    from transformers import AutoModelForSequenceClassification

    cfg = TrainConfig(epochs=0.2, batch_size=16, limit_eval=30, learner_repeat=1)
    report = train(tmp_path / "s", cfg, data_dir=tiny_data, base=tiny_model)
    learner_train = len(learner_targets("train", load_learner_messages())[0])
    assert report["learner_rows"] == learner_train
    assert report["learner_dev_signals"]["texts"] == len(learner_targets("dev", load_learner_messages())[0])
    assert set(report["learner_dev_signals"]["per_signal_f1"]) == set(LEARNING_SIGNALS)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s")
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == [
        *label_names,
        *LEARNING_SIGNALS,
    ]


def test_at_weight_0_goemotions_rows_never_teach_the_signals(tiny_data):
    from export.training.data import load_split

    split = load_split("train", tiny_data)
    rows = training_rows(split, TrainConfig(learner_repeat=2, signal_negative_weight=0.0))
    n, k = len(split), len(LEARNING_SIGNALS)
    assert rows.targets.shape == rows.mask.shape == (len(rows.texts), 28 + k)
    assert (rows.mask[:n, 28:] == 0).all() and (rows.mask[:n, :28] == 1).all()
    assert (rows.mask[n:, 28:] == 1).all() and rows.learner_rows == len(rows.texts) - n
    assert np.allclose(rows.mask[n:, :28], TrainConfig().learner_label_weight)
    assert rows.targets[n:, 28:].sum() > 0  # learner rows carry signal targets
    assert rows.texts[n : n + rows.learner_rows // 2] == rows.texts[n + rows.learner_rows // 2 :]
    off = training_rows(split, TrainConfig(learning_signals=False))
    assert off.texts == split.texts and off.targets.shape[1] == 28 and off.learner_rows == 0


def test_masked_targets_give_no_gradient():
    logits = torch.zeros((2, 4), requires_grad=True)
    targets = torch.ones((2, 4))
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    masked_bce(logits, targets, mask).backward()
    assert logits.grad is not None
    assert (logits.grad[0, 2:] == 0).all() and (logits.grad[1, 2:] != 0).all()
    # the mean is over the known targets: 6 of them, each log(2) at logit 0
    assert masked_bce(logits.detach(), targets, mask).item() == pytest.approx(
        float(torch.log(torch.tensor(2.0)))
    )


def test_goemotions_rows_can_be_weak_negatives_for_the_signals(tiny_data):
    from export.training.data import load_split

    split = load_split("train", tiny_data)
    rows = training_rows(split, TrainConfig(learner_repeat=1, signal_negative_weight=0.1))
    n = len(split)
    assert np.allclose(rows.mask[:n, 28:], 0.1) and (rows.targets[:n, 28:] == 0).all()
    assert (rows.mask[n:, 28:] == 1).all()


def test_the_learner_rows_goemotions_labels_can_weigh_less_than_their_signals(tiny_data):
    from export.training.data import load_split

    split = load_split("train", tiny_data)
    rows = training_rows(split, TrainConfig(learner_repeat=2, learner_label_weight=0.5))
    n = len(split)
    assert np.allclose(rows.mask[n:, :28], 0.5) and (rows.mask[n:, 28:] == 1).all()
    assert (rows.mask[:n, :28] == 1).all()  # the GoEmotions rows' own labels keep full weight


def test_learner_rows_can_leave_the_labels_their_train_split_never_marks_unknown(tiny_data, tmp_path):
    from export.training.data import load_split
    from tests.support.learner import group_in, write_learner_set

    group = group_in("train")
    learner_dir = write_learner_set(
        tmp_path,
        f"a1\t{group}\tmy dog died and i cant study\tsadness\t-\thigh",
        f"a2\t{group}\tfinally solved it!!\tjoy,excitement\tbreakthrough\tnone",
    )
    split = load_split("train", tiny_data)
    cfg = TrainConfig(learner_repeat=2, learner_label_weight=0.5, learner_unused_label_weight=0.0)
    rows = training_rows(split, cfg, learner_dir=learner_dir)
    n = len(split)
    marked = [GOEMOTIONS_LABELS.index(label) for label in ("excitement", "joy", "sadness")]
    expected = np.zeros(28, np.float32)
    expected[marked] = 0.5
    assert rows.learner_rows == 4
    assert (rows.mask[n:, :28] == expected).all()  # grief and the rest: unknown, not "no"
    assert (rows.mask[n:, 28:] == 1).all() and (rows.mask[:n, :28] == 1).all()
    same = training_rows(
        split, dataclasses.replace(cfg, learner_unused_label_weight=0.5), learner_dir=learner_dir
    )
    assert np.allclose(same.mask[n:, :28], 0.5)  # the default treats them like any other label


def test_typo_variant_misspells_words_seeded_and_keeps_first_letters():
    import random

    from export.training.train import typo_variant

    text = "i cant understand fractions, this homework is impossible and i'm exhausted"
    assert typo_variant(text, random.Random(1), 0.0) == text
    a, b = typo_variant(text, random.Random(1), 1.0), typo_variant(text, random.Random(1), 1.0)
    assert a == b != text  # seeded: the same typos every time (resumed runs replay the same rows)
    pairs = list(zip(text.split(" "), a.split(" "), strict=True))
    assert all(w == v for w, v in pairs if len(w) < 4)  # short words untouched
    changed = [(w, v) for w, v in pairs if w != v]
    assert len(changed) == sum(len(w) >= 4 for w in text.split(" "))  # rate 1: every long word edited
    assert all(v[0] == w[0] and abs(len(v) - len(w)) <= 1 for w, v in changed)


def test_learner_repeats_after_the_first_carry_typos_with_the_same_targets(tiny_data):
    from export.training.data import load_split

    split = load_split("train", tiny_data)
    clean = training_rows(split, TrainConfig(learner_repeat=3))
    noisy = training_rows(split, TrainConfig(learner_repeat=3, learner_typo_rate=0.5))
    n, third = len(split), clean.learner_rows // 3
    assert (
        noisy.texts[: n + third] == clean.texts[: n + third]
    )  # GoEmotions rows and the first copy as written
    assert noisy.texts[n + third :] != clean.texts[n + third :]
    assert noisy.texts[n + third : n + 2 * third] != noisy.texts[n + 2 * third :]  # each copy its own typos
    assert (noisy.targets == clean.targets).all() and (noisy.mask == clean.mask).all()
    assert training_rows(split, TrainConfig(learner_repeat=3, learner_typo_rate=0.5)).texts == noisy.texts
