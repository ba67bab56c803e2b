"""The learner-message evaluation set: loader rules, label vocabularies and group-wise splits."""

from __future__ import annotations

import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from contract.names import GOEMOTIONS_LABELS
from export.training.learner_data import (
    LEARNER_DIR,
    LEARNING_VOCABULARY,
    POLICY_LEARNING_EMOTIONS,
    LearnerDataError,
    joined_groups,
    learner_split,
    load_learner_messages,
    near_duplicates,
    rename_groups,
    split_of,
)
from tests.support.learner import group_in, write_learner_set

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_set_loads_and_every_split_has_messages():
    messages = load_learner_messages(LEARNER_DIR)
    assert len(messages) >= 600
    by_split = {name: learner_split(name, messages) for name in ("train", "dev", "test")}
    assert all(len(split) > 0 for split in by_split.values())
    assert sum(len(s) for s in by_split.values()) == len(messages)
    assert all(split.labels.shape[1] == len(GOEMOTIONS_LABELS) for split in by_split.values())


def test_no_group_straddles_two_splits_in_the_committed_set():
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for message in load_learner_messages(LEARNER_DIR):
        splits_of_group[message.group].add(message.split)
    assert all(len(splits) == 1 for splits in splits_of_group.values())


def test_no_near_duplicate_pair_straddles_two_splits_in_the_committed_set():
    straddling = [
        f"{a.id} {a.text!r} ({a.split}) ~ {b.id} {b.text!r} ({b.split}): {score:.2f}"
        for a, b, score in near_duplicates(load_learner_messages(LEARNER_DIR))
        if a.split != b.split
    ]
    assert not straddling, "run python -m export learner-regroup:\n" + "\n".join(straddling)


def test_near_duplicate_groups_join_the_split_of_the_first_group(tmp_path):
    train, test = group_in("train"), group_in("test")
    dev, other_train = group_in("dev"), group_in("train", int(group_in("train")[4:]) + 1)
    directory = write_learner_set(
        tmp_path,
        f"x-1\t{train}\ti give up\tsadness\tgiving_up\thigh",
        f"x-2\t{test}\tI GIVE UP\tsadness\tgiving_up\thigh",
        f"x-3\t{test}\twhat is a vector space\tcuriosity\t-\tnone",
        f"x-4\t{dev}\tjust tell me what a vector space is\tcuriosity\t-\tnone",
        f"x-5\t{other_train}\tI give up\tsadness\tgiving_up\thigh",
        f"x-6\t{dev}\tthe bus was late again\tannoyance\t-\tnone",
    )
    messages = load_learner_messages(directory)
    pairs = {(a.id, b.id) for a, b, _ in near_duplicates(messages)}
    assert {("x-1", "x-2"), ("x-1", "x-5"), ("x-3", "x-4")} <= pairs and not any("x-6" in p for p in pairs)
    # x-4 is linked to x-3 only, and x-3's group to x-1's: the whole chain follows the first group (train);
    # a linked group already in train keeps its name
    assert joined_groups(messages) == {test: train, dev: train}
    assert rename_groups(directory, joined_groups(messages)) == 4
    moved = load_learner_messages(directory)
    assert [m.group for m in moved] == [train, train, train, train, other_train, train]
    assert {m.split for m in moved} == {"train"} and joined_groups(moved) == {}
    assert [m.text for m in moved] == [m.text for m in messages]


def test_learner_regroup_checks_without_writing_then_fixes(tmp_path):
    from export.__main__ import main

    train, test = group_in("train"), group_in("test")
    directory = write_learner_set(
        tmp_path,
        f"x-1\t{train}\ti give up\tsadness\tgiving_up\thigh",
        f"x-2\t{test}\tI GIVE UP\tsadness\tgiving_up\thigh",
    )
    before = (directory / "part.tsv").read_text(encoding="utf-8")
    assert main(["learner-regroup", "--directory", str(directory), "--check"]) == 1
    assert (directory / "part.tsv").read_text(encoding="utf-8") == before
    assert main(["learner-regroup", "--directory", str(directory)]) == 0
    assert main(["learner-regroup", "--directory", str(directory), "--check"]) == 0
    assert {m.group for m in load_learner_messages(directory)} == {train}


def test_the_split_is_a_stable_function_of_the_group_with_the_stated_shares():
    groups = [f"g-{i}" for i in range(4000)]
    assert [split_of(g) for g in groups] == [split_of(g) for g in groups]
    shares = {
        name: sum(split_of(g) == name for g in groups) / len(groups) for name in ("train", "dev", "test")
    }
    assert shares["train"] == pytest.approx(0.6, abs=0.03)
    assert shares["dev"] == pytest.approx(0.2, abs=0.03)
    assert shares["test"] == pytest.approx(0.2, abs=0.03)


def test_learning_signals_cover_the_policys_learning_emotions():
    policy = tomllib.loads((ROOT / "gateway" / "learning" / "policy.toml").read_text(encoding="utf-8"))
    # the set's learning column speaks the policy's language: its learning emotions, signals included
    assert set(policy["learning_emotions"]["map"]) == set(LEARNING_VOCABULARY)
    assert set(POLICY_LEARNING_EMOTIONS) < set(LEARNING_VOCABULARY)


def test_a_good_file_loads_with_its_fields(tmp_path):
    directory = write_learner_set(
        tmp_path, "x-1\tx-g\tI want to give up.\tdisappointment,sadness\tgiving_up\thigh"
    )
    [message] = load_learner_messages(directory)
    assert message.labels == ("disappointment", "sadness") and message.learning == ("giving_up",)
    assert message.band == "high" and message.split == split_of("x-g")


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("x-1\tg\thi\thappiness\t-\tnone", "unknown label"),
        ("x-1\tg\thi\tneutral,joy\t-\tnone", "goes alone"),
        ("x-1\tg\thi\t\t-\tnone", "no label"),
        ("x-1\tg\thi\tjoy\tsleepy\tnone", "unknown learning signal"),
        ("x-1\tg\thi\tjoy\t\tnone", "empty learning column"),
        ("x-1\tg\thi\tjoy\t-\turgent", "band"),
        ("x-1\tg\thi\tjoy\t-", "5 columns"),
        ("x-1\t\thi\tjoy\t-\tnone", "empty id, group or text"),
        ("x-1\tg\thi\tjoy,joy\t-\tnone", "repeated label"),
    ],
)
def test_a_bad_row_is_refused_naming_its_line(tmp_path, row, error):
    with pytest.raises(LearnerDataError, match=error) as info:
        load_learner_messages(write_learner_set(tmp_path, "x-0\tg\tfine\tneutral\t-\tnone", row))
    assert "part.tsv:3" in str(info.value)


def test_duplicate_ids_and_a_wrong_header_are_refused(tmp_path):
    with pytest.raises(LearnerDataError, match="already used"):
        load_learner_messages(
            write_learner_set(tmp_path, "x-1\tg\ta\tjoy\t-\tnone", "x-1\th\tb\tjoy\t-\tnone")
        )
    with pytest.raises(LearnerDataError, match="header"):
        load_learner_messages(write_learner_set(tmp_path, "x-1\tg\ta\tjoy\t-\tnone", header="id\ttext\n"))


def test_gap_report_counts_missed_labels_against_what_was_predicted_instead():
    from export.learner_gap import confusions, predicted_labels

    probs = np.zeros((2, len(GOEMOTIONS_LABELS)), dtype=np.float32)
    probs[0, GOEMOTIONS_LABELS.index("desire")] = 0.9
    probs[1, GOEMOTIONS_LABELS.index("sadness")] = 0.9
    predicted = predicted_labels(probs, np.full(len(GOEMOTIONS_LABELS), 0.5, dtype=np.float32))
    assert predicted == [["desire"], ["sadness"]]
    counted = confusions([("disappointment", "sadness"), ("sadness",)], predicted)
    assert counted == {("disappointment", "desire"): 1, ("sadness", "desire"): 1}
    assert confusions([("joy",)], [[]]) == {("joy", "(nothing)"): 1}


def test_learning_agreement_reads_the_policys_emotions_and_bands():
    from export.learner_gap import learning_agreement
    from export.training.learner_data import LearnerMessage

    probs = np.full((2, len(GOEMOTIONS_LABELS)), 0.01, dtype=np.float32)
    probs[0, GOEMOTIONS_LABELS.index("neutral")] = 0.95
    probs[1, GOEMOTIONS_LABELS.index("annoyance")] = 0.95
    gold = [
        LearnerMessage("x-1", "g1", "is the quiz open book", ("neutral",), (), "none"),
        LearnerMessage("x-2", "g2", "ugh this again", ("annoyance",), ("frustration",), "high"),
    ]
    report = learning_agreement(probs, gold)
    assert report["learning_emotions_micro_f1"] == 1.0  # frustration found, nothing extra
    assert report["bands"]["none->none"] == 1
    assert report["band_agreement"] == (1 + (report["bands"].get("high->high", 0))) / 2


def test_learning_agreement_counts_giving_up_messages_that_reach_moderate():
    from contract.names import WITH_LEARNING_SIGNALS
    from export.learner_gap import learning_agreement
    from export.training.learner_data import LearnerMessage

    probs = np.full((2, len(WITH_LEARNING_SIGNALS)), 0.01, dtype=np.float32)
    probs[:, WITH_LEARNING_SIGNALS.index("desire")] = 0.6  # "I want to give up" read as desire
    probs[0, WITH_LEARNING_SIGNALS.index("giving_up")] = 0.9
    gold = [
        LearnerMessage("x-1", "g1", "i want to give up", ("sadness",), ("giving_up",), "high"),
        LearnerMessage("x-2", "g2", "i want to give up on this", ("sadness",), ("giving_up",), "high"),
    ]
    report = learning_agreement(probs, gold)
    assert report["giving_up_messages"] == 2 and report["giving_up_at_least_moderate"] == 1
    assert report["bands"] == {"high->high": 1, "high->none": 1}
    # the same rows from a model without the signal: the policy cannot see it
    assert learning_agreement(probs[:, :28], gold)["giving_up_at_least_moderate"] == 0
    # at the model's own thresholds (giving_up cut for recall at 0.3) a 0.4 is detected, as the gateway
    # passes the answer's labels, and reaches moderate; without them 0.5 stands in and it does not
    probs[1, WITH_LEARNING_SIGNALS.index("giving_up")] = 0.4
    cuts = np.full(len(WITH_LEARNING_SIGNALS), 0.5, dtype=np.float32)
    cuts[WITH_LEARNING_SIGNALS.index("giving_up")] = 0.3
    assert learning_agreement(probs, gold, cuts)["giving_up_at_least_moderate"] == 2
    assert learning_agreement(probs, gold)["giving_up_at_least_moderate"] == 1


def test_signals_are_reported_per_part_of_the_set():
    from export.learner_gap import signals_by_part

    ids = ["a-001", "d-002", "e1-001", "e3-004", "f4-010", "g2-007"]
    probs = np.array(
        [[0.9, 0, 0], [0.1, 0, 0], [0.9, 0, 0], [0.9, 0, 0], [0, 0.8, 0], [0, 0, 0.7]], dtype=np.float32
    )
    targets = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    report = signals_by_part(ids, probs, targets, np.full(3, 0.5, dtype=np.float32))
    assert report["a-d"]["giving_up"] == {
        "messages": 2,
        "support": 2,
        "fired": 1,
        "precision": 1.0,
        "recall": 0.5,
    }
    assert report["e"]["giving_up"] == {
        "messages": 2,
        "support": 1,
        "fired": 2,
        "precision": 0.5,
        "recall": 1.0,
    }
    assert report["e"]["stuck"]["recall"] == 0.0  # no support: reported as 0, not a division error
    assert report["f"]["boredom"] == {
        "messages": 1,
        "support": 1,
        "fired": 1,
        "precision": 1.0,
        "recall": 1.0,
    }
    assert report["g"]["stuck"] == {"messages": 1, "support": 1, "fired": 1, "precision": 1.0, "recall": 1.0}
    assert set(signals_by_part(ids[:2], probs[:2], targets[:2], np.full(3, 0.5))) == {"a-d"}


def test_learner_f1_is_reported_per_part_over_the_labels_present_in_it():
    from export.learner_gap import learner_by_part

    ids = ["a-001", "c-002", "f3-001", "f3-002"]
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    probs = np.array([[0.9, 0, 0], [0.2, 0, 0], [0, 0.9, 0.9], [0, 0, 0.9]], dtype=np.float32)
    report = learner_by_part(ids, probs, labels, np.full(3, 0.5, dtype=np.float32))
    assert set(report) == {"a-d", "f"}
    assert (report["a-d"]["n"], report["a-d"]["labels"]) == (2, 1)
    assert report["a-d"]["macro_f1"] == pytest.approx(2 / 3, abs=1e-4)  # one hit, one miss, label 0 only
    assert (report["f"]["n"], report["f"]["labels"]) == (2, 2)
    assert report["f"]["macro_f1"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)


def test_targets_are_judged_against_the_baseline_and_the_giving_up_signal():
    from export.learner_gap import targets

    def model(learner: float, go: float, recall: float | None, reached: int) -> dict:
        signals = (
            None if recall is None else {"giving_up": {"recall": recall, "precision": 0.9, "support": 7}}
        )
        return {
            "learner_test_present_labels": {"macro_f1": learner},
            "goemotions_test": {"macro_f1": go},
            "signals": signals,
            "learning_state": {"giving_up_at_least_moderate": reached, "giving_up_messages": 7},
        }

    baseline = model(0.30, 0.53, None, 0)
    met = [t["met"] for t in targets(model(0.50, 0.53, 0.86, 7), baseline)]
    assert met == [True, True, True, True, True]
    met = [t["met"] for t in targets(model(0.39, 0.515, 0.71, 6), baseline)]
    assert met == [False, False, False, False, False]
    assert [t["met"] for t in targets(baseline, None)] == [False, False, False]
    # with the paired interval of the drop (learner_gap.run adds it when there is a baseline)
    drop = {"difference": 0.018, "difference_ci95": [0.004, 0.031]}
    rows = targets({**model(0.50, 0.514, 0.86, 7), "goemotions_drop": drop}, model(0.3, 0.532, None, 0))
    assert rows[2]["measured"] == "0.514 vs 0.532 (drop +0.018, paired 95% CI [+0.004, +0.031])"


def test_with_other_seeds_the_drop_is_also_judged_between_the_recipe_means_with_its_interval():
    from export.learner_gap import seed_spread, target_table, targets

    def row(go: float) -> dict:
        return {
            "learner_test_present_labels": {"macro_f1": 0.5},
            "goemotions_test": {"macro_f1": go},
            "signals": None,
            "learning_state": {"giving_up_at_least_moderate": 0, "giving_up_messages": 7},
        }

    # the pair alone drops 0.019 (not met); over three seeds a side the means drop 0.008 (met)
    seeds = seed_spread(
        [{"model": f"a{i}", "macro_f1": v} for i, v in enumerate([0.508, 0.522, 0.516])],
        [{"model": f"b{i}", "macro_f1": v} for i, v in enumerate([0.527, 0.521, 0.522])],
    )
    rows = targets(row(0.508), row(0.527), seeds)
    assert [r["met"] for r in rows[2:4]] == [False, True]
    lo, hi = seeds["drop_ci95"]
    assert (
        rows[3]["target"] == "GoEmotions test macro-F1 drop between the recipe means <= 0.01 (3 vs 3 seeds)"
    )
    assert rows[3]["measured"] == f"0.515 vs 0.523 (drop +0.008, 95% Welch interval [{lo:+.3f}, {hi:+.3f}])"
    assert len(targets(row(0.508), row(0.527))) == len(rows) - 1  # no seeds, no row
    assert rows[3]["unresolved"] == (lo <= 0.01 <= hi)
    # seeds that agree closely resolve it: the interval lies under the line
    close = seed_spread(
        [{"model": f"a{i}", "macro_f1": v} for i, v in enumerate([0.520, 0.521, 0.522])],
        [{"model": f"b{i}", "macro_f1": v} for i, v in enumerate([0.522, 0.523, 0.524])],
    )
    row_close = targets(row(0.520), row(0.522), close)[3]
    assert close["drop_ci95"][1] < 0.01 and (row_close["met"], row_close["unresolved"]) == (True, False)
    text = "\n".join(target_table(rows))
    assert "| yes, not resolved: the interval spans the line |" in text


def test_the_goemotions_drop_is_split_by_label_largest_share_first():
    from contract.names import GOEMOTIONS_LABELS
    from export.learner_gap import DROP_LABELS_SHOWN, drop_by_label

    before = {name: {"f1": 0.5, "support": 100} for name in GOEMOTIONS_LABELS}
    after = {**before, "grief": {"f1": 0.167, "support": 6}, "relief": {"f1": 0.4, "support": 11}}
    after["joy"] = {"f1": 0.6, "support": 161}  # rose: a negative share, never among the largest
    rows = drop_by_label({"goemotions_per_label": after}, {"goemotions_per_label": before})
    assert len(rows) == DROP_LABELS_SHOWN
    assert [r["label"] for r in rows[:2]] == ["grief", "relief"]
    assert rows[0] == {"label": "grief", "support": 6, "baseline_f1": 0.5, "f1": 0.167, "share": 0.0119}
    assert rows[1]["share"] == pytest.approx(0.1 / 28, abs=1e-4)
    assert "joy" not in [r["label"] for r in rows]


def test_the_goemotions_drop_is_split_into_frequent_and_rare_labels():
    from contract.names import GOEMOTIONS_LABELS
    from export.learner_gap import RARE_SUPPORT, drop_by_frequency

    before = {name: {"f1": 0.5, "support": 100} for name in GOEMOTIONS_LABELS}
    before["grief"] = {"f1": 0.5, "support": 6}
    before["relief"] = {"f1": 0.3, "support": RARE_SUPPORT}  # at the bound: frequent
    before["pride"] = {"f1": 0.4, "support": RARE_SUPPORT - 1}  # just under it: rare
    after = {**before, "grief": {"f1": 0.1, "support": 6}, "relief": {"f1": 0.2, "support": RARE_SUPPORT}}
    after["joy"] = {"f1": 0.6, "support": 161}
    split = drop_by_frequency({"goemotions_per_label": after}, {"goemotions_per_label": before})
    assert split["rare"]["labels"] == ["grief", "pride"]
    assert split["rare"]["drop"] == pytest.approx(0.2)  # grief fell 0.4, pride held
    assert len(split["frequent"]["labels"]) == 26
    assert split["frequent"]["drop"] == pytest.approx(0.0)  # relief fell 0.1, joy rose 0.1
    # the two shares add up to the whole macro-F1 drop
    whole = sum(v["f1"] for v in before.values()) / 28 - sum(v["f1"] for v in after.values()) / 28
    assert split["rare"]["share"] + split["frequent"]["share"] == pytest.approx(whole, abs=2e-4)


def test_the_seed_spread_compares_recipe_means():
    from export.learner_gap import seed_spread

    spread = seed_spread(
        [{"model": "a13", "macro_f1": 0.508}, {"model": "a14", "macro_f1": 0.522}],
        [
            {"model": "b13", "macro_f1": 0.532},
            {"model": "b14", "macro_f1": 0.520},
            {"model": "b15", "macro_f1": 0.526},
        ],
    )
    assert spread["model"]["mean"] == pytest.approx(0.515)
    assert spread["model"]["spread"] == pytest.approx(0.014)
    assert spread["baseline"]["mean"] == pytest.approx(0.526)
    assert spread["baseline"]["spread"] == pytest.approx(0.012)
    assert spread["drop_of_means"] == pytest.approx(0.011)
    assert [r["model"] for r in spread["baseline"]["runs"]] == ["b13", "b14", "b15"]
    # Welch's interval: the means' difference -/+ t(0.975, Welch-Satterthwaite df) x its standard error
    lo, hi = spread["drop_ci95"]
    a, b = np.array([0.508, 0.522]), np.array([0.532, 0.520, 0.526])
    va, vb = a.var(ddof=1) / 2, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert (lo, hi) == pytest.approx((0.011 - half, 0.011 + half), abs=1e-4)
    assert lo < 0 < 0.01 < hi  # two seeds against three cannot tell this drop from 0 or from the line
    # one run a side, or a side whose runs are all equal, gives no interval (no spread to estimate)
    one = seed_spread([{"model": "a", "macro_f1": 0.5}], [{"model": "b", "macro_f1": 0.52}])
    assert one["drop_ci95"] is None
    same = seed_spread([{"model": "a", "macro_f1": 0.5}] * 2, [{"model": "b", "macro_f1": 0.52}] * 2)
    assert same["drop_ci95"] is None


def test_int8_calibration_adds_learner_train_messages_only_for_a_model_with_signals():
    from export.pipeline import LEARNER_CALIBRATION_TEXTS, int8_calibration_texts

    reddit = [f"reddit comment {i}" for i in range(100)]
    plain = int8_calibration_texts(reddit, 50, learner=False)
    assert len(plain) == 50 and set(plain) <= set(reddit)
    mixed = int8_calibration_texts(reddit, 50, learner=True)
    train = {m.text for m in load_learner_messages() if m.split == "train"}
    assert mixed[:50] == plain
    assert len(mixed[50:]) == LEARNER_CALIBRATION_TEXTS and set(mixed[50:]) <= train  # never dev or test


def _candidate(name: str, goemotions: float, learner: float, signals: bool = True) -> dict:
    return {
        "export": name,
        "goemotions_dev_macro_f1": goemotions,
        "learner_dev_macro_f1_present": learner,
        "signal_f1": {"giving_up": 0.8} if signals else {},
    }


def test_the_choosing_rule_keeps_goemotions_as_a_constraint_then_takes_the_best_learner_dev():
    from export.learner_gap import choose

    rows = [
        _candidate("x5", 0.5368, 0.490),  # best on learner dev, but 0.0164 under the GoEmotions-only line
        _candidate("x3", 0.5436, 0.474),  # 0.0096 under: within
        _candidate("x2", 0.5500, 0.460),  # within, worse on learner dev
        _candidate("go", 0.5532, 0.261, signals=False),
    ]
    choice = choose(rows)
    assert (choice["chosen"], choice["line"]) == ("x3", 0.5432)
    assert "2 within the line" in choice["why"]
    assert choose(rows, max_drop=0.02)["chosen"] == "x5"  # a looser line lets the better learner model in
    assert choose([_candidate("a", 0.55, 0.5), _candidate("b", 0.55, 0.5), rows[3]])["chosen"] == "a"
    # two GoEmotions-only seeds: the line is 0.01 under their mean (0.5482), not under the luckier one
    seeds = [*rows, _candidate("go14", 0.5432, 0.262, signals=False)]
    assert (choose(seeds)["chosen"], choose(seeds)["line"]) == ("x3", 0.5382)
    assert choose([rows[0], *seeds[2:]])["chosen"] == "x2"  # x5 is still 0.0014 under the mean's line


def test_the_choosing_rule_chooses_nothing_without_a_reference_or_a_candidate_within_the_line():
    from export.learner_gap import choose, selection_markdown

    assert choose([_candidate("x3", 0.55, 0.5)])["chosen"] is None  # no GoEmotions-only export to compare
    below = choose([_candidate("x5", 0.50, 0.6), _candidate("go", 0.55, 0.2, signals=False)])
    assert below["chosen"] is None and below["line"] == 0.54
    rows = [
        {
            **_candidate("x3", 0.55, 0.5),
            "model": "m",
            "signal_precision": {"giving_up": 0.8},
            "signal_recall": {"giving_up": 0.8},
            "signals_on_goemotions_dev": None,
            "band_agreement": 0.5,
            "giving_up_at_least_moderate": 1,
            "giving_up_messages": 2,
        }
    ]
    table = selection_markdown({"candidates": rows, "choice": choose(rows)}, "cmd")
    assert "**Nothing chosen**: no GoEmotions-only export among the candidates." in table
