"""Payload loading, the SLO gate, the step shape and the Triton metrics parser."""

from __future__ import annotations

import pytest

from loadtest.payloads import PayloadPicker, load_texts
from loadtest.shapes import target
from loadtest.slo import evaluate
from loadtest.triton_metrics import parse


def test_payloads_are_the_real_test_split_in_a_seeded_order():
    texts = load_texts()
    assert len(texts) == 5427
    assert texts == load_texts()  # seeded
    lengths = sorted(len(t) for t in texts)
    assert lengths[0] < 10 and lengths[-1] > 150  # the real length mix, not a fixed sentence


def test_picker_repeat_share_and_batches():
    picker = PayloadPicker([f"t{i}" for i in range(1000)], repeat_share=0.3, hot_set=5, seed=1)
    drawn = [picker.next() for _ in range(2000)]
    hot = sum(d in {"t0", "t1", "t2", "t3", "t4"} for d in drawn)
    assert 0.25 < hot / 2000 < 0.36
    assert all(2 <= len(picker.batch()) <= 8 for _ in range(50))
    fresh = PayloadPicker(["a", "b"], repeat_share=0.0, seed=0)
    other = PayloadPicker(["a", "b"], repeat_share=0.0, seed=1)
    seen = [fresh.next() for _ in range(6)] + [other.next() for _ in range(6)]
    assert len(set(seen)) == 12  # fresh texts never repeat, not even across users
    assert all(s.split(" #")[0] in ("a", "b") for s in seen)  # still the real texts
    with pytest.raises(ValueError):
        PayloadPicker([], 0.1)
    with pytest.raises(ValueError):
        PayloadPicker(["a"], 1.5)


@pytest.mark.parametrize(
    ("requests", "failures", "p95", "max_fail", "max_p95", "ok", "reason"),
    [
        (1000, 5, 80.0, 0.01, 100.0, True, None),
        (1000, 20, 80.0, 0.01, 100.0, False, "failure ratio 2.00% > 1.00%"),
        (1000, 0, 150.0, 0.01, 100.0, False, "p95 150 ms > 100 ms"),
        (1000, 0, 150.0, 0.01, None, True, None),
        (0, 0, None, 0.01, 100.0, False, "no requests were made"),
    ],
)
def test_slo_gate(requests, failures, p95, max_fail, max_p95, ok, reason):
    result = evaluate(requests, failures, p95, max_fail, max_p95)
    assert result.ok is ok and result.exit_code == (0 if ok else 1)
    if reason:
        assert reason in result.reasons


def test_step_and_soak_shapes():
    from types import SimpleNamespace

    opts = SimpleNamespace(
        shape="step", step_users=4, step_seconds=10, max_users=12, soak_users=8, soak_seconds=60
    )
    ticks = {t: target(opts, t) for t in (0, 9.9, 10, 25, 29.9, 30)}
    assert ticks == {0: (4, 4.0), 9.9: (4, 4.0), 10: (8, 4.0), 25: (12, 4.0), 29.9: (12, 4.0), 30: None}
    opts.shape = "soak"
    assert target(opts, 59) == (8, 8.0)
    assert target(opts, 61) is None
    opts.shape = "constant"
    opts.num_users, opts.spawn_rate, opts.run_time = 5, 2.0, 3
    assert target(opts, 2.9) == (5, 2.0)
    assert target(opts, 3) is None


def test_triton_metrics_parser_sums_label_sets():
    text = """
# HELP nv_inference_count x
nv_inference_count{model="classifier",version="1"} 120
nv_inference_exec_count{model="classifier",version="1"} 30
nv_inference_request_failure{model="goemotions",reason="REJECTED",version="1"} 2
nv_inference_request_failure{model="goemotions",reason="BACKEND",version="1"} 1
nv_gpu_utilization{gpu_uuid="x"} 0.5
"""
    metrics = parse(text)
    assert metrics["classifier"]["nv_inference_count"] == 120
    assert metrics["classifier"]["nv_inference_exec_count"] == 30
    assert metrics["goemotions"]["nv_inference_request_failure"] == 3
