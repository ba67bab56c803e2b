"""Payload loading, the SLO gate, the step shape and the Triton metrics parser."""

from __future__ import annotations

import pytest

from loadtest.common import PathResult, bench_report
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
# TYPE nv_inference_count counter
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


def test_audit_bench_counts_rows_and_reports_the_on_off_comparison(tmp_path):
    from loadtest.bench_audit import audit_counts, summarize, write_report
    from loadtest.common import PathResult

    metrics = "\n".join(
        [
            "# HELP gateway_audit_written_total Audit rows written",
            "gateway_audit_written_total 1234.0",
            'gateway_audit_dropped_total{reason="queue_full"} 3.0',
            'gateway_audit_dropped_total{reason="db_error"} 2.0',
            "gateway_audit_written_created 1.7e9",
        ]
    )
    assert audit_counts(metrics) == {"written": 1234.0, "dropped": 5.0}
    rounds = [
        {
            "audit-off@1": PathResult(100.0, 10.0, 12.0, 14.0, 200),
            "audit-sqlite@1": PathResult(95.0, 10.0 + extra, 13.0, 15.0, 200),
            "audit-off@16": PathResult(400.0, 40.0, 60.0, 70.0, 800),
            "audit-sqlite@16": PathResult(400.0 * ratio, 41.0, 61.0, 72.0, 800),
            "audit-sqlite+outcomes@1": PathResult(95.0, 10.0 + extra + 0.05, 13.0, 15.0, 200),
            "audit-sqlite+outcomes@16": PathResult(400.0 * ratio * 0.99, 41.0, 61.0, 72.0, 800),
            "audit-sqlite+healthz@1": PathResult(95.0, 10.0 + extra + 0.04, 13.0, 15.0, 200),
            "audit-sqlite+healthz@16": PathResult(400.0 * ratio * 0.99, 41.0, 61.0, 72.0, 800),
        }
        for extra, ratio in ((0.2, 0.98), (0.4, 0.95), (0.1, 1.0))
    ]
    counts = {
        "written": 1234.0,
        "dropped": 5.0,
        "sent": 1239.0,
        "outcomes_posted": 1200,
        "outcomes_failed": 0,
    }
    report = summarize(rounds, counts, "v1")
    assert report["rounds"] == 3 and report["model_version"] == "v1"
    assert report["p50_delta_ms_1_client"]["median"] == pytest.approx(0.2)
    assert report["throughput_ratio_16_clients"]["range"] == pytest.approx([0.95, 1.0])
    written = write_report(report, tmp_path)
    assert [p.name for p in written] == ["audit_bench.json", "audit_bench.md", "audit_bench.png"]
    text = written[1].read_text()
    assert "| audit-sqlite | 16 | 392 |" in text  # the shared paths table: median texts/s per path
    assert "**+0.20 ms** [+0.10 to +0.40]" in text and "**0.98x** [0.95-1.00]" in text
    # the outcome write path: the same gateway with and without outcomes posted meanwhile
    assert report["outcomes_p50_delta_ms_1_client"]["median"] == pytest.approx(0.05)
    assert "with minus without: **+0.05 ms**" in text and "with / without: **0.99x**" in text
    assert "1200 outcomes stored, 0 failed" in text
    assert report["outcomes_vs_control_p50_delta_ms_1_client"]["median"] == pytest.approx(0.01)
    assert "against the control" in text and "**1.00x**" in text
    assert "1239 texts sent, 1234 written, 5 dropped" in text


def test_a_bench_report_keeps_each_rounds_throughput_beside_the_median():
    rounds = [{"a": PathResult(t, 1.0, 2.0, 3.0, 10)} for t in (600.0, 350.0, 610.0)]
    report = bench_report("make bench-x", "v1", rounds)
    assert report["paths"]["a"]["texts_per_s"] == 600.0
    assert report["texts_per_s_per_round"] == {"a": [600.0, 350.0, 610.0]}  # the slow round is visible
