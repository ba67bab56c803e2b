import re
from pathlib import Path

import numpy as np
import pytest

from contract.names import GOEMOTIONS_LABELS
from export.training.data import (
    EXPECTED_RECORDS,
    NUM_LABELS,
    DataError,
    load_dataset,
    load_label_names,
    load_split,
)


def test_vendored_dataset_loads_with_published_counts():
    names, splits = load_dataset()
    assert len(names) == NUM_LABELS
    assert names == list(GOEMOTIONS_LABELS)
    for name, split in splits.items():
        assert len(split) == EXPECTED_RECORDS[name]
        assert split.labels.shape == (EXPECTED_RECORDS[name], NUM_LABELS)
        assert (split.labels.sum(axis=1) >= 1).all()  # every text has at least one label
    # Multi-label lines as documented in the data README.
    assert int((splits["test"].labels.sum(axis=1) > 1).sum()) == 837


def test_csv_quoted_texts_are_unquoted():
    test = load_split("test")
    # test.tsv line 36: """We need more content."" ""OK. here's some ballerina shoes."""
    assert test.texts[35] == '"We need more content." "OK. here\'s some ballerina shoes."'
    assert test.ids[35] == "eexh9wg"
    # line 61 is quoted only because of inner quotes; its trailing space survives
    assert test.texts[60] == "I didn't know this was a \"reveal\" he'd been talking about for awhile. "
    np.testing.assert_array_equal(np.flatnonzero(test.labels[52]), [10, 27])


def _write(dir_: Path, name: str, text: str) -> None:
    (dir_ / name).write_text(text, encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path, label_names: list[str]) -> Path:
    _write(tmp_path, "emotions.txt", "\n".join(label_names))  # no final newline, like upstream
    for split in ("train", "dev", "test"):
        _write(tmp_path, f"{split}.tsv", "I love it\t0,27\tabc\nmeh\t27\tdef")
    return tmp_path


def test_small_custom_dir_loads_without_count_check(data_dir: Path):
    names, splits = load_dataset(data_dir)
    assert len(names) == 28
    assert splits["dev"].texts == ["I love it", "meh"]
    np.testing.assert_array_equal(np.flatnonzero(splits["dev"].labels[0]), [0, 27])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text only\n", "expected 3 tab-separated fields, found 1"),
        ("hi\t28\tid", "label id(s) [28] outside 0..27"),
        ("hi\t-1\tid", "outside 0..27"),
        ("hi\tjoy\tid", "label ids must be integers"),
        ("   \t1\tid", "empty text"),
    ],
)
def test_malformed_rows_name_file_and_line(data_dir: Path, content: str, message: str):
    _write(data_dir, "dev.tsv", "fine\t1\tid0\n" + content)
    with pytest.raises(DataError, match=re.escape(message)) as exc:
        load_split("dev", data_dir)
    assert "dev.tsv:2" in str(exc.value)


def test_missing_file_is_a_clear_error(data_dir: Path):
    (data_dir / "test.tsv").unlink()
    with pytest.raises(DataError, match=r"test\.tsv: missing"):
        load_dataset(data_dir)


def test_label_file_must_have_28_unique_labels(data_dir: Path, label_names: list[str]):
    _write(data_dir, "emotions.txt", "\n".join(label_names[:27]))
    with pytest.raises(DataError, match="expected 28 labels, found 27"):
        load_label_names(data_dir)
    _write(data_dir, "emotions.txt", "\n".join([*label_names[:27], "joy"]))
    with pytest.raises(DataError, match="duplicate"):
        load_label_names(data_dir)


def test_label_file_must_name_the_contract_labels_in_order(data_dir: Path, label_names: list[str]):
    swapped = [label_names[1], label_names[0], *label_names[2:]]
    _write(data_dir, "emotions.txt", "\n".join(swapped))
    with pytest.raises(DataError, match="label 1 is 'amusement', expected 'admiration'"):
        load_label_names(data_dir)
    _write(data_dir, "emotions.txt", "\n".join([*label_names[:27], "boredom"]))
    with pytest.raises(DataError, match="label 28 is 'boredom'"):
        load_label_names(data_dir)


def test_record_count_mismatch_is_detected(data_dir: Path):
    with pytest.raises(DataError, match="expected 5 records, found 2"):
        load_split("train", data_dir, expected_records=5)


def test_unknown_split_rejected():
    with pytest.raises(DataError, match="unknown split"):
        load_split("validation")
