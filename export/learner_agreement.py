"""Two readings of the learner set (``python -m export learner-agreement``): the writers' own annotation
(the first reading, the one every other report scores against) next to a blind second annotation of the dev
and test messages (data/learner/second-reading/), and the served model against each.

How far two careful readers agree bounds what a score against one of them can mean: a model that matches
the first reading as well as the second reader does is at the labels' own noise, and a target set above
that agreement is a target on one reader's taste. Nothing here tunes anything; the model is scored on the
test split only (its cuts were fitted on dev).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import GOEMOTIONS_LABELS, LEARNING_SIGNALS
from export.arrays import Array
from export.learner_gap import (
    TARGET_GIVING_UP_PRECISION,
    TARGET_GIVING_UP_RECALL,
    Served,
    learning_agreement,
    policy_states,
    present_labels_f1,
    write_report,
)
from export.training.learner_data import (
    BANDS,
    LEARNING_VOCABULARY,
    SECOND_READING,
    LearnerMessage,
    load_learner_messages,
    load_second_reading,
)
from export.training.metrics import f1_scores

log = logging.getLogger(__name__)
GO = len(GOEMOTIONS_LABELS)
GIVING_UP = "giving_up"
SPLITS = ("dev", "test")


def multi_hot(messages: list[LearnerMessage], vocabulary: tuple[str, ...], column: str) -> Array:
    """Rows x ``vocabulary``: 1 where a message's ``column`` (``labels`` or ``learning``) names the item."""
    out = np.zeros((len(messages), len(vocabulary)), dtype=np.float32)
    for row, message in enumerate(messages):
        for item in getattr(message, column):
            out[row, vocabulary.index(item)] = 1.0
    return out


def kappa(first: Array, second: Array, weights: str | None = None) -> float | None:
    """Cohen's kappa of two codings of the same items; None where it is undefined (both readers gave one
    and the same code to every item)."""
    from sklearn.metrics import cohen_kappa_score

    if len(first) == 0 or (len(set(first.tolist())) == 1 and set(first.tolist()) == set(second.tolist())):
        return None
    return round(float(cohen_kappa_score(first, second, weights=weights)), 3)


def item_agreement(first: Array, second: Array, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per item either reading uses: how often each reader marks it, both, kappa, and the second reading's
    precision and recall taking the first as gold."""
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        a, b = first[:, j] > 0.5, second[:, j] > 0.5
        if not (a.any() or b.any()):
            continue
        both = int((a & b).sum())
        out[name] = {
            "first": int(a.sum()),
            "second": int(b.sum()),
            "both": both,
            "kappa": kappa(a.astype(int), b.astype(int)),
            "precision": round(both / int(b.sum()), 3) if b.any() else None,
            "recall": round(both / int(a.sum()), 3) if a.any() else None,
        }
    return out


def readings_agreement(first: list[LearnerMessage], second: list[LearnerMessage]) -> dict[str, Any]:
    """The second reading against the first on the same messages: the GoEmotions labels scored as the
    model is (macro/micro-F1 over the labels the first reading has, bootstrap intervals), per label and
    per learning signal (kappa, the second's precision and recall), and the bands (agreement, kappa,
    linearly weighted kappa, counts)."""
    labels_a, labels_b = (multi_hot(r, GOEMOTIONS_LABELS, "labels") for r in (first, second))
    learning_a, learning_b = (multi_hot(r, LEARNING_VOCABULARY, "learning") for r in (first, second))
    band_a = np.array([BANDS.index(m.band) for m in first], dtype=int)
    band_b = np.array([BANDS.index(m.band) for m in second], dtype=int)
    return {
        "n": len(first),
        "labels": present_labels_f1(labels_b, labels_a, np.full(GO, 0.5, dtype=np.float32)),
        "exact_label_sets": sum(set(a.labels) == set(b.labels) for a, b in zip(first, second, strict=True)),
        "per_label": item_agreement(labels_a, labels_b, GOEMOTIONS_LABELS),
        "learning": item_agreement(learning_a, learning_b, LEARNING_VOCABULARY),
        "band_agreement": round(float((band_a == band_b).mean()), 3) if len(band_a) else 0.0,
        "band_kappa": kappa(band_a, band_b),
        "band_kappa_linear": kappa(band_a, band_b, weights="linear"),
        "bands": {
            f"{x}->{y}": int(((band_a == i) & (band_b == j)).sum())
            for i, x in enumerate(BANDS)
            for j, y in enumerate(BANDS)
            if ((band_a == i) & (band_b == j)).any()
        },
    }


def _giving_up(fired: Array, gold: Array) -> dict[str, Any]:
    hit, firings, support = int((fired & gold).sum()), int(fired.sum()), int(gold.sum())
    return {
        "support": support,
        "fired": firings,
        "precision": round(hit / firings, 3) if firings else None,
        "recall": round(hit / support, 3) if support else None,
    }


def model_against(
    probs: Array, thresholds: Array, first: list[LearnerMessage], second: list[LearnerMessage]
) -> dict[str, Any]:
    """The served model's probabilities scored against each reading: GoEmotions macro-F1 over the labels
    present, ``giving_up`` precision/recall, the learning-state agreement; then on the messages the two
    readings agree on (giving up or not), and the first reading's giving-up messages the policy leaves
    below ``moderate`` with how the second reading reads them."""
    from gateway.learning.policy import load_policy

    fired = (
        probs[:, GO + LEARNING_SIGNALS.index(GIVING_UP)] >= thresholds[GO + LEARNING_SIGNALS.index(GIVING_UP)]
    )
    gives_up = [np.array([GIVING_UP in m.learning for m in r], dtype=bool) for r in (first, second)]
    out: dict[str, Any] = {}
    for name, reading in (("first", first), ("second", second)):
        labels = multi_hot(reading, GOEMOTIONS_LABELS, "labels")
        gold = np.array([GIVING_UP in m.learning for m in reading], dtype=bool)
        present = labels.sum(axis=0) > 0
        per_label = f1_scores(probs[:, :GO], labels, thresholds[:GO]).per_label
        out[name] = {
            "labels": present_labels_f1(probs[:, :GO], labels, thresholds[:GO]),
            "per_label_f1": {
                n: round(float(f), 3)
                for n, f, p in zip(GOEMOTIONS_LABELS, per_label, present, strict=True)
                if p
            },
            "giving_up": _giving_up(fired, gold),
            "learning_state": learning_agreement(probs, reading, thresholds),
        }
    agreed = gives_up[0] == gives_up[1]
    both = gives_up[0] & gives_up[1]
    out["agreed_giving_up"] = {
        "messages": int(agreed.sum()),
        **_giving_up(fired[agreed], gives_up[0][agreed]),
    }
    both_rows = np.flatnonzero(both)
    reach = learning_agreement(probs[both_rows], [first[i] for i in both_rows], thresholds)
    out["both_giving_up_at_least_moderate"] = [reach["giving_up_at_least_moderate"], int(both.sum())]
    policy = load_policy()
    names = list(policy.intervention.levels)
    states = policy_states(probs, thresholds, policy)
    out["giving_up_below_moderate"] = [
        {
            "id": a.id,
            "text": a.text,
            "level": state.intervention_level,
            "second_learning": list(b.learning),
            "second_band": b.band,
        }
        for a, b, state in zip(first, second, states, strict=True)
        if GIVING_UP in a.learning and names.index(state.intervention_level) < names.index("moderate")
    ]
    return out


def run(repository: Path | None, reading: Path = SECOND_READING) -> dict[str, Any]:
    """The report: per split (dev, test) the two readings' agreement, and with ``repository`` (a model
    repository or export directory) the served model against each reading on the test split."""
    messages = load_learner_messages()
    second = load_second_reading(messages, reading)
    report: dict[str, Any] = {"model": None, "splits": {}, "dev_and_test": None}
    pairs: dict[str, tuple[list[LearnerMessage], list[LearnerMessage]]] = {}
    for split in SPLITS:
        chosen = [m for m in messages if m.split == split]
        read = [m for m in chosen if m.id in second]
        pairs[split] = (read, [second[m.id] for m in read])
        report["splits"][split] = {"messages": len(chosen), **readings_agreement(*pairs[split])}
    report["dev_and_test"] = readings_agreement(*(pairs["dev"][k] + pairs["test"][k] for k in (0, 1)))
    if repository is not None:
        served = Served.load(repository)
        first_test, second_test = pairs["test"]
        probs = served.probabilities([m.text for m in first_test])
        report["model"] = {
            "name": served.manifest.served_version(served.variant),
            **model_against(probs, served.thresholds, first_test, second_test),
        }
    return report


def _f1(r: dict[str, Any]) -> str:
    lo, hi = r["macro_f1_ci95"]
    return f"{r['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]"


def _k(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _pr(r: dict[str, Any]) -> str:
    return " / ".join("–" if r[k] is None else f"{r[k]:.3f}" for k in ("precision", "recall"))


def markdown(report: dict[str, Any], command: str) -> str:
    dev, test = report["splits"]["dev"], report["splits"]["test"]
    lines = [
        "# Two readings of the learner set",
        "",
        f"Command: `{command}`. The first reading is the writers' own annotation, the one every learner "
        "score in this project is measured against. The second is a blind annotation of the dev and test "
        "messages by four more AI assistants, each reading about a quarter of them, shuffled, from the text "
        "alone and the written guide (data/learner/briefs/second-reading.md), without the first reading. "
        "Both readings are AI assistants': read the agreement as how stable the labels are under the "
        "written rules, not as agreement between people.",
        "",
        "## The second reading against the first",
        "",
        "| | dev | test |",
        "|---|---:|---:|",
        f"| messages read twice | {dev['n']} of {dev['messages']} | {test['n']} of {test['messages']} |",
        f"| GoEmotions labels: macro-F1 over the labels present [95% CI] | {_f1(dev['labels'])} "
        f"| {_f1(test['labels'])} |",
        f"| GoEmotions labels: micro-F1 | {dev['labels']['micro_f1']:.3f} "
        f"| {test['labels']['micro_f1']:.3f} |",
        f"| exact label set | {dev['exact_label_sets']} | {test['exact_label_sets']} |",
        *(
            f"| `{s}`: kappa (first / second / both) | {_signal_cell(dev, s)} | {_signal_cell(test, s)} |"
            for s in LEARNING_SIGNALS
        ),
        f"| band agreement | {dev['band_agreement']:.3f} | {test['band_agreement']:.3f} |",
        f"| band kappa (linearly weighted) | {_k(dev['band_kappa'])} ({_k(dev['band_kappa_linear'])}) "
        f"| {_k(test['band_kappa'])} ({_k(test['band_kappa_linear'])}) |",
        "",
        "Band counts, first -> second: "
        + "; ".join(
            f"{s} " + ", ".join(f"{k}: {v}" for k, v in report["splits"][s]["bands"].items()) for s in SPLITS
        )
        + ".",
        "",
    ]
    model = report["model"]
    if model is not None:
        lines += _model_lines(model, test)
    lines += [
        "## Learning signals and emotions, dev and test together",
        "",
        "Kappa 1 is full agreement, 0 is what chance gives; precision and recall are the second reading's, "
        "taking the first as gold.",
        "",
        *_item_table(report["dev_and_test"]["learning"]),
        "",
        "## GoEmotions labels, dev and test together (by kappa)",
        "",
        *_item_table(report["dev_and_test"]["per_label"]),
        "",
        "![per-label F1 against the first reading, learner test](learner_agreement.png)",
        "",
    ]
    return "\n".join(lines)


def _signal_cell(split: dict[str, Any], signal: str) -> str:
    r = split["learning"].get(signal)
    return "–" if r is None else f"{_k(r['kappa'])} ({r['first']} / {r['second']} / {r['both']})"


def _model_lines(model: dict[str, Any], test: dict[str, Any]) -> list[str]:
    first, second, agreed = model["first"], model["second"], model["agreed_giving_up"]
    reached, n_both = model["both_giving_up_at_least_moderate"]
    gu = test["learning"].get(GIVING_UP)

    def state(r: dict[str, Any]) -> str:
        s = r["learning_state"]
        return f"{s['giving_up_at_least_moderate']} of {s['giving_up_messages']}"

    lines = [
        f"## The served model `{model['name']}` against each reading (test)",
        "",
        "| | against the first | against the second | the second reading against the first |",
        "|---|---:|---:|---:|",
        f"| GoEmotions labels: macro-F1 over the labels present | {_f1(first['labels'])} "
        f"| {_f1(second['labels'])} | {_f1(test['labels'])} |",
        f"| `giving_up` precision / recall (support) | {_pr(first['giving_up'])} "
        f"({first['giving_up']['support']}) | {_pr(second['giving_up'])} ({second['giving_up']['support']}) "
        f"| {'–' if gu is None else _pr(gu)} |",
        f"| band agreement | {first['learning_state']['band_agreement']:.3f} "
        f"| {second['learning_state']['band_agreement']:.3f} | {test['band_agreement']:.3f} |",
        f"| giving-up messages at `moderate` or above | {state(first)} | {state(second)} | |",
        "",
        f"On the {agreed['messages']} test messages the two readings agree on (giving up or not), the "
        f"model's `giving_up` precision / recall is {_pr(agreed)} (support {agreed['support']}; target: "
        f"recall >= {TARGET_GIVING_UP_RECALL} at precision >= {TARGET_GIVING_UP_PRECISION}). Of the "
        f"{n_both} messages both readings call giving up, {reached} reach `moderate` or above.",
        "",
        "The first reading's giving-up messages the policy leaves below `moderate`, and the second reading "
        "of each:",
        "",
        "| id | text | level | second reading: signals, band |",
        "|---|---|---|---|",
        *(
            f"| {r['id']} | {r['text']} | {r['level']} | {', '.join(r['second_learning']) or '-'}; "
            f"{r['second_band']} |"
            for r in model["giving_up_below_moderate"]
        ),
        "",
    ]
    return lines


def _item_table(items: dict[str, dict[str, Any]]) -> list[str]:
    rows = sorted(items.items(), key=lambda kv: (-(kv[1]["kappa"] or -1.0), kv[0]))
    return [
        "| item | first | second | both | kappa | second's precision / recall |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['first']} | {r['second']} | {r['both']} | {_k(r['kappa'])} | {_pr(r)} |"
            for name, r in rows
        ),
    ]


def chart(report: dict[str, Any], path: Path) -> Path:
    """Per-label F1 on the learner test split against the first reading: the second reading's, and the
    model's where there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = report["splits"]["test"]["per_label"]
    names = sorted(n for n, r in test.items() if r["first"])
    second = [_f1_of(test[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.45), 4.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, second, 0.4, label="second reading")
    model = report["model"]
    if model is not None:
        per_label = model["first"]["per_label_f1"]
        ax.bar(x + 0.2, [per_label.get(n, 0.0) for n in names], 0.4, label=model["name"])
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylabel("F1 against the first reading (test)")
    # Head room over 1.0 keeps the legend off the bars.
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title("Learner test split: per-label F1 against the writers' reading")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f1_of(r: dict[str, Any]) -> float:
    return 2 * r["both"] / (r["first"] + r["second"]) if r["first"] + r["second"] else 0.0


def write(report: dict[str, Any], out: Path, command: str) -> list[Path]:
    return write_report(out, "learner_agreement", report, markdown(report, command), chart)
