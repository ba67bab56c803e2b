"""The learner-message evaluation set: short messages of the kinds learners send (tutoring chats, course
forums, exercise feedback), written for this project and annotated with GoEmotions labels, the learning
signals they show and the intervention band a tutor would want (data/learner/README.md says who wrote them
and how; they are synthetic).

Format: ``data/learner/*.tsv``, UTF-8, a header ``id group text labels learning band``, one message a line;
``labels`` and ``learning`` are comma-separated (``-`` for no learning signal). ``group`` is the template or
author a message comes from: the split is a function of the group alone, so near-duplicates (one situation
reworded, one learner's follow-ups) never straddle train/dev/test. Nothing may be tuned on ``test``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from contract.names import GOEMOTIONS_LABELS, LEARNING_SIGNALS, NEUTRAL, WITH_LEARNING_SIGNALS
from export.arrays import Array
from export.training.data import Split

LEARNER_DIR = Path(__file__).resolve().parents[2] / "data" / "learner"
COLUMNS = ("id", "group", "text", "labels", "learning", "band")
# A second, blind annotation of the dev and test messages (data/learner/second-reading/README.md); in a
# folder of its own, as ``load_learner_messages`` reads every ``*.tsv`` of LEARNER_DIR as messages.
SECOND_READING = LEARNER_DIR / "second-reading" / "annotations.tsv"
SECOND_READING_COLUMNS = ("id", "labels", "learning", "band")
# The policy's learning emotions (gateway/learning/policy.toml) and the signals GoEmotions has no label for.
POLICY_LEARNING_EMOTIONS = (
    "frustration",
    "anxiety",
    "confusion",
    "curiosity",
    "breakthrough",
    "mastery_joy",
    "engagement",
    "discouragement",
)
# What the ``learning`` column may name: the policy's learning emotions and the model's learning signals
# (contract.names.LEARNING_SIGNALS), which the student learns as extra outputs from the train split.
LEARNING_VOCABULARY = POLICY_LEARNING_EMOTIONS + LEARNING_SIGNALS
BANDS = ("none", "low", "high")
# Share of groups per split, by a stable hash of the group name.
SPLIT_PERCENT = (("train", 60), ("dev", 20), ("test", 20))
NO_SIGNAL = "-"
# Writers converge on the same short messages ("i give up", "ok", "zzz") in different groups: any two messages
# whose character 3-5-gram TF-IDF cosine exceeds this must share a split, so their groups are joined
# (``joined_groups``; data/learner/README.md). Over 0.7 every pair read was a rewording; from 0.6 most were,
# and joining a pair that was not only moves a message between splits.
NEAR_DUPLICATE_COSINE = 0.6


class LearnerDataError(ValueError):
    """A learner-set file is malformed; the message names the file and line."""


def split_of(group: str) -> str:
    """The split a group belongs to: a stable function of its name alone."""
    bucket = int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big") % 100
    for name, percent in SPLIT_PERCENT:
        if bucket < percent:
            return name
        bucket -= percent
    raise AssertionError("split shares must sum to 100")


@dataclass(frozen=True)
class LearnerMessage:
    id: str
    group: str
    text: str
    labels: tuple[str, ...]
    learning: tuple[str, ...]
    band: str

    @property
    def split(self) -> str:
        return split_of(self.group)


def _items(value: str, vocabulary: tuple[str, ...], what: str, where: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in items if v not in vocabulary]
    if unknown:
        raise LearnerDataError(f"{where}: unknown {what} {unknown}")
    if len(set(items)) != len(items):
        raise LearnerDataError(f"{where}: repeated {what}")
    return items


def _message(fields: list[str], where: str) -> LearnerMessage:
    if len(fields) != len(COLUMNS):
        raise LearnerDataError(
            f"{where}: {len(fields)} columns, expected {len(COLUMNS)} ({', '.join(COLUMNS)})"
        )
    id_, group, text, labels, learning, band = (f.strip() for f in fields)
    if not id_ or not group or not text:
        raise LearnerDataError(f"{where}: empty id, group or text")
    return LearnerMessage(id_, group, text, *_annotation(labels, learning, band, where))


def _annotation(
    labels: str, learning: str, band: str, where: str
) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """One reading of a message: its GoEmotions labels, learning signals and band, validated."""
    label_set = _items(labels, GOEMOTIONS_LABELS, "label", where)
    if not label_set:
        raise LearnerDataError(f"{where}: no label (use {NEUTRAL!r} when no emotion is expressed)")
    if NEUTRAL in label_set and len(label_set) > 1:
        raise LearnerDataError(f"{where}: {NEUTRAL!r} goes alone")
    signals = () if learning == NO_SIGNAL else _items(learning, LEARNING_VOCABULARY, "learning signal", where)
    if learning != NO_SIGNAL and not signals:
        raise LearnerDataError(f"{where}: empty learning column (use {NO_SIGNAL!r} for none)")
    if band not in BANDS:
        raise LearnerDataError(f"{where}: band {band!r} is not one of {', '.join(BANDS)}")
    return label_set, signals, band


def load_learner_messages(directory: Path = LEARNER_DIR) -> list[LearnerMessage]:
    """Every message of every ``*.tsv`` in ``directory``, validated (ids unique across files)."""
    files = sorted(directory.glob("*.tsv"))
    if not files:
        raise LearnerDataError(f"{directory}: no *.tsv files")
    messages: list[LearnerMessage] = []
    seen: dict[str, str] = {}
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines or tuple(lines[0].split("\t")) != COLUMNS:
            raise LearnerDataError(f"{path}:1: header must be {chr(9).join(COLUMNS)!r}")
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            message = _message(line.split("\t"), where)
            if message.id in seen:
                raise LearnerDataError(f"{where}: id {message.id!r} already used at {seen[message.id]}")
            seen[message.id] = where
            messages.append(message)
    return messages


def load_second_reading(
    messages: list[LearnerMessage], path: Path = SECOND_READING
) -> dict[str, LearnerMessage]:
    """The blind second annotation of some messages (``SECOND_READING``), by id: each the message with the
    second reader's labels, learning signals and band in place of the writers'. Every id must be a message
    of ``messages``, once."""
    by_id = {m.id: m for m in messages}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != SECOND_READING_COLUMNS:
        raise LearnerDataError(f"{path}:1: header must be {chr(9).join(SECOND_READING_COLUMNS)!r}")
    readings: dict[str, LearnerMessage] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != len(SECOND_READING_COLUMNS):
            raise LearnerDataError(f"{where}: {len(fields)} columns, expected {len(SECOND_READING_COLUMNS)}")
        id_, labels, learning, band = fields
        if id_ not in by_id:
            raise LearnerDataError(f"{where}: no message has id {id_!r}")
        if id_ in readings:
            raise LearnerDataError(f"{where}: id {id_!r} read twice")
        labels_read, learning_read, band_read = _annotation(labels, learning, band, where)
        readings[id_] = replace(by_id[id_], labels=labels_read, learning=learning_read, band=band_read)
    return readings


def learner_split(name: str, messages: list[LearnerMessage]) -> Split:
    """One split as a GoEmotions ``Split`` (texts, 28-column multi-hot labels, ids) for the same metrics."""
    chosen = [m for m in messages if m.split == name]
    labels = np.zeros((len(chosen), len(GOEMOTIONS_LABELS)), dtype=np.float32)
    for row, message in enumerate(chosen):
        for label in message.labels:
            labels[row, GOEMOTIONS_LABELS.index(label)] = 1.0
    return Split(name, [m.text for m in chosen], labels, [m.id for m in chosen])


def learner_targets(name: str, messages: list[LearnerMessage]) -> tuple[list[str], Array]:
    """One split's texts and multi-hot targets over ``WITH_LEARNING_SIGNALS``: the GoEmotions labels, then
    the learning signals the model learns as outputs (giving up, boredom, stuck)."""
    chosen = [m for m in messages if m.split == name]
    targets = np.zeros((len(chosen), len(WITH_LEARNING_SIGNALS)), dtype=np.float32)
    for row, message in enumerate(chosen):
        for item in (*message.labels, *(s for s in message.learning if s in LEARNING_SIGNALS)):
            targets[row, WITH_LEARNING_SIGNALS.index(item)] = 1.0
    return [m.text for m in chosen], targets


def near_duplicates(
    messages: list[LearnerMessage], threshold: float = NEAR_DUPLICATE_COSINE
) -> list[tuple[LearnerMessage, LearnerMessage, float]]:
    """Pairs of messages whose character 3-5-gram TF-IDF cosine (lower-cased) exceeds ``threshold``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    if len(messages) < 2:
        return []
    vectors = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)).fit_transform(
        [m.text.lower() for m in messages]
    )
    similarity = np.triu(cosine_similarity(vectors), k=1)
    rows, columns = np.nonzero(similarity > threshold)
    return [(messages[i], messages[j], float(similarity[i, j])) for i, j in zip(rows, columns, strict=True)]


def joined_groups(messages: list[LearnerMessage], threshold: float = NEAR_DUPLICATE_COSINE) -> dict[str, str]:
    """The groups to rename so that no near-duplicate pair straddles two splits: groups linked by a pair
    form one cluster, which takes the split of its first group in file order; each group of the cluster
    in another split is renamed to that first group (a group already in that split keeps its name)."""
    order: dict[str, int] = {}
    for m in messages:
        order.setdefault(m.group, len(order))
    parent = {g: g for g in order}

    def root(group: str) -> str:
        while parent[group] != group:
            group = parent[group]
        return group

    for a, b, _ in near_duplicates(messages, threshold):
        first, second = sorted((root(a.group), root(b.group)), key=order.__getitem__)
        parent[second] = first
    return {g: root(g) for g in order if split_of(root(g)) != split_of(g)}


def rename_groups(directory: Path, renames: dict[str, str]) -> int:
    """Rewrite the ``group`` column of every ``*.tsv`` in ``directory`` by ``renames``; the rows changed."""
    changed = 0
    column = COLUMNS.index("group")
    for path in sorted(directory.glob("*.tsv")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        before = changed
        for number, line in enumerate(lines[1:], start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) == len(COLUMNS) and fields[column] in renames:
                fields[column] = renames[fields[column]]
                lines[number] = "\t".join(fields) + "\n"
                changed += 1
        if changed > before:  # files without a renamed group stay untouched
            path.write_text("".join(lines), encoding="utf-8")
    return changed
