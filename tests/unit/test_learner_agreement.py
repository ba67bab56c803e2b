"""The learner set's second reading: its loader, the agreement measures, and the model against each reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.names import GOEMOTIONS_LABELS, WITH_LEARNING_SIGNALS
from export.training.learner_data import (
    SECOND_READING_COLUMNS,
    LearnerDataError,
    LearnerMessage,
    load_learner_messages,
    load_second_reading,
)

HEADER = "\t".join(SECOND_READING_COLUMNS) + "\n"
FIRST = [
    LearnerMessage("x-1", "g1", "i want to give up", ("sadness",), ("giving_up",), "high"),
    LearnerMessage("x-2", "g2", "ugh this again", ("annoyance",), ("frustration",), "low"),
]


def _reading(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "annotations.tsv"
    path.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_second_reading_replaces_the_annotation_and_keeps_the_message(tmp_path):
    path = _reading(tmp_path, "x-1\tdisappointment,sadness\tgiving_up,discouragement\thigh")
    readings = load_second_reading(FIRST, path)
    assert list(readings) == ["x-1"]
    second = readings["x-1"]
    assert (second.id, second.group, second.text) == ("x-1", "g1", "i want to give up")
    assert second.labels == ("disappointment", "sadness")
    assert second.learning == ("giving_up", "discouragement") and second.band == "high"


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("x-9\tjoy\t-\tnone", "no message has id 'x-9'"),
        ("x-1\tjoy\t-\tnone\textra", "5 columns"),
        ("x-1\thappiness\t-\tnone", "unknown label"),
        ("x-1\tneutral,joy\t-\tnone", "goes alone"),
        ("x-1\tjoy\tsleepy\tnone", "unknown learning signal"),
        ("x-1\tjoy\t-\turgent", "band"),
    ],
)
def test_a_bad_second_reading_is_refused_naming_its_line(tmp_path, row, error):
    with pytest.raises(LearnerDataError, match=error) as info:
        load_second_reading(FIRST, _reading(tmp_path, "x-2\tneutral\t-\tnone", row))
    assert "annotations.tsv:3" in str(info.value)


def test_a_message_read_twice_or_a_wrong_header_is_refused(tmp_path):
    with pytest.raises(LearnerDataError, match="read twice"):
        load_second_reading(FIRST, _reading(tmp_path, "x-1\tjoy\t-\tnone", "x-1\tjoy\t-\tnone"))
    with pytest.raises(LearnerDataError, match="header"):
        load_second_reading(FIRST, _reading(tmp_path, "x-1\tjoy\t-\tnone", header="id\tlabels\n"))


def test_the_committed_second_reading_covers_the_dev_and_test_messages_and_no_train_message():
    messages = load_learner_messages()
    readings = load_second_reading(messages)
    by_split = {s: {m.id for m in messages if m.split == s} for s in ("train", "dev", "test")}
    assert set(readings) == by_split["dev"] | by_split["test"]


def test_kappa_is_cohens_and_undefined_when_both_readers_give_one_code_to_everything():
    from export.learner_agreement import kappa

    first, second = np.array([1, 1, 0, 0, 0, 0]), np.array([1, 0, 0, 0, 0, 1])
    # observed 4/6; chance (2/6)(2/6) + (4/6)(4/6) = 5/9
    assert kappa(first, second) == pytest.approx(round((4 / 6 - 5 / 9) / (1 - 5 / 9), 3))
    assert kappa(np.zeros(4, int), np.zeros(4, int)) is None
    assert kappa(np.zeros(4, int), np.array([0, 0, 0, 1])) == 0.0


def test_the_second_reading_is_scored_against_the_first_per_label_signal_and_band():
    from export.learner_agreement import readings_agreement

    second = [
        LearnerMessage(
            "x-1", "g1", "i want to give up", ("sadness", "disappointment"), ("giving_up",), "high"
        ),
        LearnerMessage("x-2", "g2", "ugh this again", ("annoyance",), ("stuck",), "high"),
    ]
    report = readings_agreement(FIRST, second)
    assert report["n"] == 2 and report["exact_label_sets"] == 1
    assert report["labels"]["macro_f1"] == 1.0  # both labels the first reading has are found
    assert report["per_label"]["disappointment"] == {
        "first": 0,
        "second": 1,
        "both": 0,
        "kappa": 0.0,
        "precision": 0.0,
        "recall": None,
    }
    assert report["learning"]["giving_up"]["both"] == 1 and report["learning"]["giving_up"]["kappa"] == 1.0
    assert (
        report["learning"]["frustration"]["recall"] == 0.0 and report["learning"]["stuck"]["precision"] == 0.0
    )
    assert "boredom" not in report["learning"]  # neither reader used it
    assert report["band_agreement"] == 0.5 and report["bands"] == {"high->high": 1, "low->high": 1}


def test_the_model_is_scored_against_each_reading_and_where_they_agree():
    from export.learner_agreement import model_against

    def message(id_: str, text: str, learning: tuple[str, ...], band: str) -> LearnerMessage:
        return LearnerMessage(id_, id_, text, ("sadness",), learning, band)

    texts = ["i want to give up", "maybe i'm just not a maths person", "done for today", "i quit piano"]
    first = [
        message("x-1", texts[0], ("giving_up",), "high"),
        message("x-2", texts[1], ("giving_up",), "high"),
        message("x-3", texts[2], (), "none"),
        message("x-4", texts[3], ("giving_up",), "high"),
    ]
    # the readings agree on x-1 and x-4 (giving up); the second reads x-2 as discouragement, x-3 as giving up
    second = [
        first[0],
        message("x-2", texts[1], ("discouragement",), "low"),
        message("x-3", texts[2], ("giving_up",), "high"),
        first[3],
    ]
    probs = np.full((4, len(WITH_LEARNING_SIGNALS)), 0.01, dtype=np.float32)
    probs[:, GOEMOTIONS_LABELS.index("sadness")] = 0.9
    probs[:2, WITH_LEARNING_SIGNALS.index("giving_up")] = 0.95  # fired on x-1 and x-2
    thresholds = np.full(len(WITH_LEARNING_SIGNALS), 0.5, dtype=np.float32)
    report = model_against(probs, thresholds, first, second)
    assert report["first"]["giving_up"] == {"support": 3, "fired": 2, "precision": 1.0, "recall": 0.667}
    assert report["second"]["giving_up"] == {"support": 3, "fired": 2, "precision": 0.5, "recall": 0.333}
    assert report["agreed_giving_up"] == {
        "messages": 2,
        "support": 2,
        "fired": 1,
        "precision": 1.0,
        "recall": 0.5,
    }
    assert report["both_giving_up_at_least_moderate"] == [1, 2]  # x-1 reaches it, x-4 does not
    assert report["first"]["learning_state"]["giving_up_at_least_moderate"] == 2
    assert report["second"]["learning_state"]["giving_up_at_least_moderate"] == 1  # x-1 of x-1, x-3, x-4
    assert report["first"]["labels"]["macro_f1"] == 1.0 and report["first"]["per_label_f1"] == {
        "sadness": 1.0
    }
    # the first reading's giving-up messages left below moderate, with the second reading of each
    [below] = report["giving_up_below_moderate"]
    assert (
        below["id"] == "x-4" and below["second_learning"] == ["giving_up"] and below["second_band"] == "high"
    )
