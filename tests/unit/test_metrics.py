import numpy as np
import pytest

from export.training.metrics import f1_scores, sigmoid, tune_thresholds


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
