"""The domain gap (``python -m export learner-gap``): the served model on the learner-message test split
next to the GoEmotions test split — macro/micro-F1 with bootstrap intervals, per-label F1, the most
frequent confusions, and what it answers to the messages that show a learner giving up.

Runs the installed CPU variant as served (its thresholds and temperatures from the manifest). Only the
learner set's *test* split is read: nothing here tunes anything.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import Manifest
from contract.names import CLASSIFIER, GOEMOTIONS_LABELS, TOKENIZER
from contract.spec import SPEC_FILE, ServingSpec
from export.arrays import Array
from export.packaging.runtime import load_tokenizer, onnx_classifier
from export.training.calibration import calibrated_probabilities
from export.training.data import load_split
from export.training.learner_data import (
    POLICY_LEARNING_EMOTIONS,
    LearnerMessage,
    learner_split,
    load_learner_messages,
)
from export.training.metrics import bootstrap_f1, f1_scores

log = logging.getLogger(__name__)
CONFUSIONS_SHOWN = 12
# The policy's intervention levels read as the set's bands.
BAND_OF_LEVEL = {
    "none": "none",
    "preventive": "low",
    "mild": "low",
    "moderate": "high",
    "significant": "high",
    "critical": "high",
}


def learning_agreement(
    probs: Array, gold: list[LearnerMessage], policy_path: Path | None = None
) -> dict[str, Any]:
    """The learning-state policy on the model's probabilities against the set's learning reading: the
    policy's learning emotions (present at its ``primary_min_score``) and the band of its intervention
    level, message by message (no context, no trend: one message alone)."""
    from gateway.learning.policy import load_policy
    from gateway.learning.state import assess

    policy = load_policy(policy_path)
    cut = policy.learning_emotions.primary_min_score
    tp = fp = fn = 0
    bands: Counter[tuple[str, str]] = Counter()
    for row, message in zip(probs, gold, strict=True):
        state = assess(dict(zip(GOEMOTIONS_LABELS, map(float, row), strict=True)), policy)
        got = {e for e, score in state.learning_emotions.items() if score >= cut}
        want = {e for e in message.learning if e in POLICY_LEARNING_EMOTIONS}
        tp, fp, fn = tp + len(got & want), fp + len(got - want), fn + len(want - got)
        bands[(message.band, BAND_OF_LEVEL[state.intervention_level])] += 1
    return {
        "learning_emotions_micro_f1": round(2 * tp / max(2 * tp + fp + fn, 1), 3),
        "band_agreement": round(sum(n for (g, p), n in bands.items() if g == p) / max(len(gold), 1), 3),
        "bands": {f"{g}->{p}": n for (g, p), n in sorted(bands.items())},
        "high_read_as_none": bands[("high", "none")],
    }


def predicted_labels(probs: Array, thresholds: Array) -> list[list[str]]:
    return [
        [n for n, p, t in zip(GOEMOTIONS_LABELS, row, thresholds, strict=True) if p >= t] for row in probs
    ]


def confusions(gold: list[tuple[str, ...]], predicted: list[list[str]]) -> Counter[tuple[str, str]]:
    """(missed gold label, wrongly predicted label) pairs, counted over the texts that have both."""
    pairs: Counter[tuple[str, str]] = Counter()
    for want, got in zip(gold, predicted, strict=True):
        missed = [g for g in want if g not in got]
        extra = [p for p in got if p not in want]
        pairs.update((m, e) for m in missed for e in extra)
        if missed and not extra:
            pairs.update((m, "(nothing)") for m in missed)
    return pairs


def run(repository: Path) -> dict[str, Any]:
    manifest = Manifest.read(repository / "manifest.json")
    spec = ServingSpec.read(repository / SPEC_FILE)
    variant = manifest.variants[spec.cpu_variant]
    thresholds = np.asarray(variant.thresholds, dtype=np.float32)
    tokenizer = load_tokenizer(repository / TOKENIZER / "1")
    classifier = onnx_classifier(
        repository / CLASSIFIER / "1" / variant.file,
        tokenizer,
        manifest.max_length,
        execution=variant.execution,
    )

    def probabilities(texts: list[str]) -> Array:
        return calibrated_probabilities(classifier.predict(texts), np.asarray(variant.temperatures))

    messages = load_learner_messages()
    learner = learner_split("test", messages)
    chosen = {m.id: m for m in messages if m.split == "test"}
    goemotions = load_split("test")
    log.info("learner test: %d messages; GoEmotions test: %d texts", len(learner), len(goemotions))
    learner_probs = probabilities(learner.texts)
    go_probs = probabilities(goemotions.texts)
    predicted = predicted_labels(learner_probs, thresholds)
    gold = [chosen[i].labels for i in learner.ids]
    scores = f1_scores(learner_probs, learner.labels, thresholds)
    support = learner.labels.sum(axis=0)
    per_label = {
        name: {"f1": round(float(scores.per_label[i]), 3), "support": int(support[i])}
        for i, name in enumerate(GOEMOTIONS_LABELS)
        if support[i] > 0
    }
    giving_up = [
        {"text": chosen[i].text, "gold": list(chosen[i].labels), "predicted": got}
        for i, got in zip(learner.ids, predicted, strict=True)
        if "giving_up" in chosen[i].learning
    ]
    return {
        "model": manifest.served_version(spec.cpu_variant),
        "learner_test": {"n": len(learner), **bootstrap_f1(learner_probs, learner.labels, thresholds)},
        "goemotions_test": {"n": len(goemotions), **bootstrap_f1(go_probs, goemotions.labels, thresholds)},
        "per_label": per_label,
        "confusions": [
            {"gold": g, "predicted": p, "count": n} for (g, p), n in confusions(gold, predicted).most_common()
        ][:CONFUSIONS_SHOWN],
        "exact_label_sets": sum(set(g) == set(p) for g, p in zip(gold, predicted, strict=True)),
        "giving_up": giving_up,
        "learning_state": learning_agreement(learner_probs, [chosen[i] for i in learner.ids]),
    }


def markdown(report: dict[str, Any], command: str) -> str:
    lt, gt = report["learner_test"], report["goemotions_test"]

    def row(name: str, r: dict[str, Any]) -> str:
        lo, hi = r["macro_f1_ci95"]
        mlo, mhi = r["micro_f1_ci95"]
        macro = f"{r['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]"
        micro = f"{r['micro_f1']:.3f} [{mlo:.3f}, {mhi:.3f}]"
        return f"| {name} | {r['n']} | {macro} | {micro} |"

    lines = [
        "# Domain gap: learner messages vs GoEmotions",
        "",
        f"Model `{report['model']}` as served (its thresholds and temperatures). Command: `{command}`. "
        "The learner set is synthetic (data/learner/README.md): read these numbers as a probe of learner "
        "language, not as a platform's measured accuracy. Macro-F1 is the mean over all 28 labels on both "
        "sets; a label neither in the learner test's gold labels nor predicted counts as 0, which lowers "
        "the learner macro-F1: micro-F1 and the per-label table compare more fairly.",
        "",
        "| test split | texts | macro-F1 [95% CI] | micro-F1 [95% CI] |",
        "|---|---:|---:|---:|",
        row("GoEmotions (Reddit)", gt),
        row("learner messages", lt),
        "",
        f"Exact label set right on {report['exact_label_sets']} of {lt['n']} learner messages.",
        "",
        "## Learning state (the gateway's policy on these probabilities, one message alone)",
        "",
        f"- learning emotions present (the policy's eight, at its primary_min_score), micro-F1: "
        f"**{report['learning_state']['learning_emotions_micro_f1']:.3f}**",
        f"- intervention band (none / low = preventive, mild / high = moderate and above) agreement: "
        f"**{report['learning_state']['band_agreement']:.3f}**; messages the set reads `high` that the "
        f"policy reads `none`: {report['learning_state']['high_read_as_none']}",
        "- gold -> policy band counts: "
        + ", ".join(f"{k}: {v}" for k, v in report["learning_state"]["bands"].items()),
        "",
        "## Per label (learner test, labels with gold support)",
        "",
        "| label | F1 | support |",
        "|---|---:|---:|",
        *(f"| {n} | {v['f1']:.3f} | {v['support']} |" for n, v in sorted(report["per_label"].items())),
        "",
        "## Most frequent confusions (missed gold label → predicted instead)",
        "",
        "| gold | predicted | count |",
        "|---|---|---:|",
        *(f"| {c['gold']} | {c['predicted']} | {c['count']} |" for c in report["confusions"]),
        "",
        "## Messages that show a learner giving up (learner test)",
        "",
        "| text | gold labels | predicted |",
        "|---|---|---|",
        *(
            f"| {g['text']} | {', '.join(g['gold'])} | {', '.join(g['predicted']) or '(none)'} |"
            for g in report["giving_up"]
        ),
        "",
    ]
    return "\n".join(lines)


def write(report: dict[str, Any], out: Path, command: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "learner_gap.md", out / "learner_gap.json"
    md.write_text(markdown(report, command), encoding="utf-8")
    js.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return [md, js]
