import numpy as np
import pytest

from export.training.metrics import (
    bootstrap_macro_difference,
    f1_scores,
    precision_lower_bound,
    recall_first_thresholds,
    sigmoid,
    tune_thresholds,
)


def test_f1_by_hand():
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.float32)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.1], [0.1, 0.4]])
    scores = f1_scores(probs, labels)
    # label 0: tp=1 fp=1 fn=1 -> 0.5; label 1: tp=1 fp=0 fn=1 -> 2/3
    assert scores.per_label == pytest.approx([0.5, 2 / 3])
    assert scores.macro == pytest.approx((0.5 + 2 / 3) / 2)
    # micro: tp=2 fp=1 fn=2 -> 4/7
    assert scores.micro == pytest.approx(4 / 7)
    # per-label thresholds apply column-wise
    assert f1_scores(probs, labels, np.array([0.8, 0.3])).per_label == pytest.approx([2 / 3, 1.0])


def test_label_never_predicted_nor_present_scores_zero_not_nan():
    scores = f1_scores(np.zeros((3, 2)), np.zeros((3, 2), dtype=np.float32))
    assert scores.macro == 0.0 and scores.micro == 0.0


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="shape"):
        f1_scores(np.zeros((3, 2)), np.zeros((3, 3)))


def test_sigmoid_is_per_label_not_softmax():
    probs = sigmoid(np.array([[5.0, 5.0, -5.0]]))
    assert probs[0, 0] == pytest.approx(probs[0, 1])
    assert probs.sum() > 1.0  # multi-label: probabilities need not sum to one
    assert np.isfinite(sigmoid(np.array([1e6, -1e6]))).all()


def test_tuned_thresholds_separate_each_label_and_beat_half():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 3)) < 0.2).astype(np.float32)
    # label 0 positives score ~0.3, negatives ~0.1: 0.5 misses them all
    probs = np.where(labels > 0, 0.3, 0.1) + rng.normal(0, 0.01, labels.shape)
    thresholds = tune_thresholds(probs, labels)
    assert all(0.1 < t <= 0.3 for t in thresholds)
    assert f1_scores(probs, labels, thresholds).macro == pytest.approx(1.0)
    assert f1_scores(probs, labels).macro == 0.0


def test_label_without_signal_keeps_neutral_threshold():
    labels = np.zeros((50, 1), dtype=np.float32)
    thresholds = tune_thresholds(np.full((50, 1), 0.2), labels)
    assert thresholds[0] == pytest.approx(0.5)


def test_recall_first_cut_is_the_lowest_that_keeps_the_precision_floor():
    # 4 positives at 0.9 / 0.8 / 0.4 / 0.2; negatives at 0.85 / 0.45 / 0.3 / 0.1
    probs = np.array([[0.9], [0.8], [0.4], [0.2], [0.85], [0.45], [0.3], [0.1]])
    gold = np.array([[1], [1], [1], [1], [0], [0], [0], [0]])
    fallback = np.array([0.81], dtype=np.float32)  # the best-F1 kind of cut: 2 of 4 positives
    # precision >= 0.6: down to 0.40 keeps 3 of 5 (0.6), 0.20 would give 4 of 7: 0.40 is the lowest such cut
    # and among the cuts with 3 positives (0.31..0.40) the highest
    assert recall_first_thresholds(probs, gold, np.array([0.6]), fallback)[0] == pytest.approx(0.40)
    # precision >= 0.7: 3 positives never reach it, 2 of 3 (0.67) neither; 0.86..0.90 keeps 1 of 1
    assert recall_first_thresholds(probs, gold, np.array([0.7]), fallback)[0] == pytest.approx(0.90)
    # no floor: the fallback; a floor nothing reaches: the fallback too
    assert recall_first_thresholds(probs, gold, np.array([np.nan]), fallback)[0] == pytest.approx(0.81)
    negatives_only = np.zeros_like(gold)
    assert recall_first_thresholds(probs, negatives_only, np.array([0.5]), fallback)[0] == pytest.approx(0.81)


def test_with_a_confidence_the_floor_must_hold_at_the_precision_lower_bound():
    # 30 positives at 0.9; 10 more and 6 negatives at 0.6; 10 more and 10 negatives at 0.4
    probs = np.array([0.9] * 30 + [0.6] * 16 + [0.4] * 20)[:, None]
    gold = np.array([1] * 30 + [1] * 10 + [0] * 6 + [1] * 10 + [0] * 10)[:, None]
    fallback = np.array([0.5], dtype=np.float32)
    # point estimates: 50 of 66 (0.76) at cut 0.40 keeps the 0.7 floor, so the most recall is there
    assert recall_first_thresholds(probs, gold, np.array([0.7]), fallback)[0] == pytest.approx(0.40)
    # its 95% lower bound is 0.66; 40 of 46's is 0.77: the cut rises to the highest keeping 40 (0.60)
    assert precision_lower_bound(50, 66, 0.95) == pytest.approx(0.662, abs=1e-3)
    assert precision_lower_bound(40, 46, 0.95) == pytest.approx(0.767, abs=1e-3)
    cut = recall_first_thresholds(probs, gold, np.array([0.7]), fallback, confidence=0.95)[0]
    assert cut == pytest.approx(0.60)
    # a floor no lower bound reaches (30 of 30 is at most 0.917 sure): the point estimate decides
    cut = recall_first_thresholds(probs, gold, np.array([0.95]), fallback, confidence=0.95)[0]
    assert cut == pytest.approx(0.90)


def test_the_paired_difference_resamples_the_same_texts_for_both_models():
    rng = np.random.default_rng(0)
    gold = (rng.random((400, 3)) < 0.3).astype(np.float32)
    better = gold > 0.5
    worse = better ^ (rng.random(gold.shape) < 0.1)  # 10% of the decisions flipped
    assert bootstrap_macro_difference(worse, worse, gold) == {
        "difference": 0.0,
        "difference_ci95": [0.0, 0.0],
    }
    d = bootstrap_macro_difference(better, worse, gold)
    expected = f1_scores(better.astype(float), gold).macro - f1_scores(worse.astype(float), gold).macro
    assert d["difference"] == pytest.approx(expected, abs=1e-4)
    lo, hi = d["difference_ci95"]
    assert 0 < lo < d["difference"] < hi  # paired: the shared texts cancel, the gap stays clear of 0
    assert bootstrap_macro_difference(worse, better, gold)["difference_ci95"] == [-hi, -lo]
