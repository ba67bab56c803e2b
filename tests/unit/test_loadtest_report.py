"""The capacity report: steps, percentiles, failures, Triton deltas, knee, sizing, files and CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest

from loadtest.report import (
    PathReport,
    StepStats,
    main,
    read_history,
    read_triton,
    replicas,
    sizing,
    summarize,
    write_report,
)
from loadtest.triton_metrics import FIELDS

DATA = Path(__file__).resolve().parent.parent / "data" / "loadtest"
SAMPLE = DATA / "gateway"  # a real run: 2 -> 4 -> 6 users, 5 s each
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the real header, from the recorded run
LOCUST_HEADER = Path(f"{SAMPLE}_stats_history.csv").read_text().splitlines()[0].split(",")


Row = tuple[float, int, float | str, float, float | str, float | str, float | str]


def write_history(path: Path, rows: list[Row]) -> Path:
    """rows: (timestamp, users, req/s, failures/s, p50, p95, p99) -> a Locust --csv-full-history file."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LOCUST_HEADER)
        for ts, users, rps, fps, p50, p95, p99 in rows:
            # a per-name row, as Locust writes one: the report must use only the Aggregated ones
            writer.writerow(
                [ts, users, "POST", "/v1/emotions [text]", 9999, 9999, *[1] * 11, 0, 0, 0, 0, 0, 0, 0]
            )
            pct = [p50, p50, p50, p50, p95, p95, p95, p99, p99, p99, p99]
            writer.writerow([ts, users, "", "Aggregated", rps, fps, *pct, 0, 0, 0, 0, 0, 0, 0])
    return path


def step_rows(
    start: int, users: int, rates: list[float], p95s: list[float | str], fails: list[float] | None = None
) -> list[Row]:
    """One step, one row per second; p50 = p95 / 2, p99 = p95 + 10 (N/A stays N/A)."""
    fails = fails or [0.0] * len(rates)
    out: list[Row] = []
    for i, (rps, p95, fps) in enumerate(zip(rates, p95s, fails, strict=True)):
        if isinstance(p95, str):
            out.append((start + i, users, rps, fps, p95, p95, p95))
        else:
            out.append((start + i, users, rps, fps, p95 / 2, p95, p95 + 10))
    return out


def knee_run(tmp_path: Path) -> Path:
    """4 -> 8 -> 12 -> 16 users, 6 s each; p95 crosses 100 ms at 16 users. Ramp rows are junk (5 req/s)."""
    rows: list[Row] = [(999, 0, 0.0, 0.0, "N/A", "N/A", "N/A")]
    rows += step_rows(1000, 4, [5, 5, 5, 40, 42, 44], [500, 500, 500, 30, 30, 30])
    rows += step_rows(1006, 8, [5, 5, 5, 80, 82, 84], [500, 500, 500, 50, 55, 60])
    rows += step_rows(1012, 12, [5, 5, 5, 118, 120, 122], [500, 500, 500, 90, 95, 95])
    rows += step_rows(1018, 16, [5, 5, 5, 130, 125, 128], [500, 500, 500, 120, 130, 140])
    return write_history(tmp_path / "knee_stats_history.csv", rows)


def write_triton(path: Path, rows: list[tuple[float, str, float, float, float, float, float, float]]) -> Path:
    """rows: (timestamp, model, count, exec_count, queue_us, compute_us, success, failure)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerows(rows)
    return path


# ---- reading ---------------------------------------------------------------------------------------


def test_read_history_keeps_only_aggregated_rows_in_time_order():
    rows = read_history(Path(f"{SAMPLE}_stats_history.csv"))
    assert len(rows) == 16  # 1795647602..617, one Aggregated row per second
    assert {r["Name"] for r in rows} == {"Aggregated"}
    assert [int(r["Timestamp"]) for r in rows] == list(range(1795647602, 1795647618))


def test_read_history_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope_stats_history.csv"
    with pytest.raises(ValueError, match=r"nope_stats_history\.csv"):
        read_history(missing)
    wrong = tmp_path / "wrong_stats_history.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"wrong_stats_history\.csv.*missing columns"):
        read_history(wrong)
    bad = write_history(tmp_path / "bad_stats_history.csv", [(1, 2, "fast", 0, 1, 2, 3)])
    with pytest.raises(ValueError, match=r"bad_stats_history\.csv: line 3"):
        read_history(bad)
    per_name_only = tmp_path / "names_stats_history.csv"
    per_name_only.write_text(",".join(LOCUST_HEADER) + "\n")
    with pytest.raises(ValueError, match="no 'Aggregated' rows"):
        read_history(per_name_only)


def test_read_triton_missing_file_is_none_and_sample_reads(tmp_path):
    assert read_triton(tmp_path / "none_triton_metrics.csv") is None
    rows = read_triton(Path(f"{SAMPLE}_triton_metrics.csv"))
    assert rows is not None and len(rows) == 36
    assert {r["model"] for r in rows} == {"tokenizer", "classifier", "postprocess", "goemotions"}


# ---- steps from the recorded sample ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_report() -> PathReport:
    history = read_history(Path(f"{SAMPLE}_stats_history.csv"))
    return summarize("gateway", history, read_triton(Path(f"{SAMPLE}_triton_metrics.csv")), 100.0, 0.01)


def test_sample_steps_skip_ramp_rows(sample_report):
    assert [s.users for s in sample_report.steps] == [2, 4, 6]  # the 0-user row is ignored
    two, four, six = sample_report.steps
    # 2 users: rows 603..607; 603-605 are ramp, median(58, 75)
    assert two.rps == pytest.approx(66.5)
    assert (two.start, two.end) == (1795647606.0, 1795647607.0)
    assert four.rps == pytest.approx((122.0 + 140.875) / 2)
    assert six.rps == pytest.approx((215.8 + 235.2) / 2)
    assert all(s.fail_ratio == 0.0 for s in sample_report.steps)


def test_sample_percentiles_come_from_the_last_steady_row(sample_report):
    four, six = sample_report.steps[1:]
    assert (four.p50_ms, four.p95_ms, four.p99_ms) == (5.0, 15.0, 18.0)  # row 1795647612
    assert (six.p50_ms, six.p95_ms, six.p99_ms) == (5.0, 21.0, 27.0)  # row 1795647617


def test_sample_triton_deltas_use_the_scrapes_around_a_short_window(sample_report):
    six = sample_report.steps[2]
    assert six.triton is not None
    classifier = six.triton["classifier"]
    # window 616..617 has no scrape inside: 615.047 -> 617.060 (counters read from the CSV by hand)
    assert classifier["count"] == 2571 - 2094
    assert classifier["avg_batch"] == pytest.approx((2571 - 2094) / (1489 - 1244))
    assert classifier["compute_ms"] == pytest.approx((7493898 - 6305386) / (1566 - 1314) / 1000)
    assert classifier["queue_ms"] == pytest.approx((76373 - 51323) / (1566 - 1314) / 1000)
    assert set(six.triton) == {"tokenizer", "classifier", "postprocess", "goemotions"}


def test_sample_meets_a_100ms_slo_everywhere(sample_report):
    assert sample_report.knee is sample_report.steps[2]  # most req/s within the SLO
    assert sample_report.breaks_at is None
    text = sizing(sample_report, 100.0, 1000.0)
    assert "One node holds 225.5 req/s at p95 ≤ 100 ms (6 users). For 1000 req/s you need 5 replicas." in text
    assert "did not break within the tested range (up to 6 users)" in text


# ---- synthetic runs ----------------------------------------------------------------------------------


def test_knee_and_breaks_at_on_a_run_crossing_the_slo(tmp_path):
    report = summarize("synthetic", read_history(knee_run(tmp_path)), None, 100.0, 0.01)
    assert [s.users for s in report.steps] == [4, 8, 12, 16]
    assert [s.rps for s in report.steps] == [42, 82, 120, 128]  # medians of the 3 steady rows
    assert [s.p95_ms for s in report.steps] == [30, 60, 95, 140]
    assert report.knee is not None and report.knee.users == 12
    assert report.breaks_at is not None and report.breaks_at.users == 16
    assert all(s.triton is None for s in report.steps)
    text = sizing(report, 100.0, 1000.0)
    assert text.startswith(
        "One node holds 120.0 req/s at p95 ≤ 100 ms (12 users). For 1000 req/s you need 9 replicas."
    )
    assert "It breaks at 16 users (128.0 req/s, p95 140 ms > 100 ms)." in text


def test_no_step_meets_the_slo(tmp_path):
    report = summarize("slow", read_history(knee_run(tmp_path)), None, 20.0, 0.01)
    assert report.knee is None
    assert report.breaks_at is report.steps[0]
    text = sizing(report, 20.0, 1000.0)
    assert "No tested step meets the SLO" in text
    assert "4 users (42.0 req/s, p95 30 ms > 20 ms)" in text
    assert "replica" not in text


def test_failure_ratio_decides_the_slo_too(tmp_path):
    rows = step_rows(100, 2, [9, 9, 9, 100, 100, 200], [10] * 6, fails=[9, 9, 9, 1, 0, 3])
    rows += step_rows(106, 4, [9, 9, 9, 300, 300, 300], [10] * 6)
    history = read_history(write_history(tmp_path / "f_stats_history.csv", rows))
    strict = summarize("f", history, None, 100.0, 0.005)
    assert strict.steps[0].fail_ratio == pytest.approx(4 / 400)  # the ramp rows' failures are skipped
    assert strict.steps[0].rps == 100
    assert strict.steps[1].fail_ratio == 0.0
    assert strict.breaks_at is strict.steps[0] and strict.knee is strict.steps[1]
    assert "failures 1.00%" in sizing(strict, 100.0, None)
    lenient = summarize("f", history, None, 100.0, 0.01)
    assert lenient.breaks_at is None  # 1 % is within a 1 % limit


def test_zero_requests_give_zero_failure_ratio(tmp_path):
    rows = step_rows(100, 2, [0, 0, 0, 0], [10, 10, 10, 10], fails=[0, 0, 0, 0])
    report = summarize(
        "idle", read_history(write_history(tmp_path / "z_stats_history.csv", rows)), None, 100, 0.01
    )
    assert report.steps[0].fail_ratio == 0.0
    assert "0 req/s" in sizing(report, 100.0, 1000.0)  # met the SLO, but nothing to size from


def test_na_percentiles_fall_back_to_earlier_steady_rows_or_none(tmp_path):
    rows = step_rows(100, 2, [1, 1, 1, 50, 50], [500, 500, 500, 40, "N/A"])
    rows += step_rows(105, 4, [1, 1, 1, 50, 50], ["N/A"] * 5)
    report = summarize(
        "na", read_history(write_history(tmp_path / "na_stats_history.csv", rows)), None, 100, 0.01
    )
    two, four = report.steps
    assert (two.p50_ms, two.p95_ms, two.p99_ms) == (20, 40, 50)  # the row before the N/A one
    assert (four.p50_ms, four.p95_ms, four.p99_ms) == (None, None, None)
    assert report.breaks_at is four  # an unmeasured p95 cannot be shown to meet the SLO


def test_a_step_shorter_than_the_ramp_keeps_its_last_row(tmp_path):
    rows = step_rows(100, 2, [10, 20], [30, 35])
    rows += step_rows(102, 4, [1, 1, 1, 1, 60, 70], [9, 9, 9, 9, 40, 45])
    report = summarize(
        "short", read_history(write_history(tmp_path / "s_stats_history.csv", rows)), None, 100, 0.01
    )
    two, four = report.steps
    assert (two.rps, two.p95_ms, two.start, two.end) == (20, 35, 101, 101)
    assert (four.rps, four.p95_ms) == (60, 45)  # 105..107 are past a 3 s ramp: median(1, 60, 70)
    longer = summarize("short", read_history(tmp_path / "s_stats_history.csv"), None, 100, 0.01, ramp_s=5)
    assert longer.steps[1].rps == 70  # only 107 is past a 5 s ramp


def test_triton_deltas_inside_the_step_window(tmp_path):
    """2 users from t=100 to 110, steady 103..110: the outermost scrapes inside it (104, 109) are differenced."""
    history = read_history(
        write_history(tmp_path / "t_stats_history.csv", step_rows(100, 2, [50] * 11, [20] * 11))
    )
    triton = read_triton(
        write_triton(
            tmp_path / "t_triton_metrics.csv",
            [
                (102.0, "classifier", 1, 1, 1, 1, 1, 0),  # ramp: must not be used
                (104.0, "classifier", 1000, 500, 10000, 400000, 800, 0),
                (104.0, "tokenizer", 800, 800, 1600, 80000, 800, 0),
                (107.0, "classifier", 1200, 600, 12000, 500000, 900, 0),
                (109.0, "classifier", 1600, 700, 16000, 1000000, 1100, 2),
                (109.0, "tokenizer", 1100, 1100, 4600, 110000, 1100, 0),
                (111.0, "classifier", 99999, 99999, 99999, 99999, 99999, 0),  # after the step
            ],
        )
    )
    report = summarize("t", history, triton, 100.0, 0.01)
    figures = report.steps[0].triton
    assert figures is not None
    classifier = figures["classifier"]
    assert classifier["avg_batch"] == 3.0  # 600 rows / 200 executions
    assert classifier["queue_ms"] == pytest.approx(6000 / 300 / 1000)  # per successful request
    assert classifier["compute_ms"] == pytest.approx(600000 / 300 / 1000)
    assert (classifier["seconds"], classifier["failure"]) == (5.0, 2)
    assert classifier["inferences_per_s"] == pytest.approx(600 / 5)
    tokenizer = figures["tokenizer"]  # one row per request: per request = per inference
    assert tokenizer["avg_batch"] == 1.0
    assert tokenizer["queue_ms"] == pytest.approx(3000 / 300 / 1000)
    assert tokenizer["compute_ms"] == pytest.approx(30000 / 300 / 1000)


def test_triton_counter_reset_is_skipped(tmp_path, caplog):
    history = read_history(
        write_history(tmp_path / "r_stats_history.csv", step_rows(100, 2, [50] * 11, [20] * 11))
    )
    triton = read_triton(
        write_triton(
            tmp_path / "r_triton_metrics.csv",
            [(104.0, "classifier", 1000, 500, 1, 1, 800, 0), (110.0, "classifier", 10, 5, 1, 1, 8, 0)],
        )
    )
    with caplog.at_level(logging.WARNING):
        report = summarize("r", history, triton, 100.0, 0.01)
    assert report.steps[0].triton is None
    assert "restarted" in caplog.text


# ---- sizing ------------------------------------------------------------------------------------------


def _one_step(rps: float) -> PathReport:
    step = StepStats(4, rps, 10.0, 50.0, 60.0, 0.0, 0.0, 10.0, None)
    return PathReport("p", [step], step, None)


@pytest.mark.parametrize(
    ("node_rps", "target", "expected"),
    [(200.0, 1000.0, 5), (300.0, 1000.0, 4), (225.5, 1000.0, 5), (200.0, 1.0, 1), (0.1, 1.1, 11)],
)
def test_replicas_is_the_ceiling(node_rps, target, expected):
    assert replicas(node_rps, target) == expected == math.ceil(round(target / node_rps, 9))


def test_sizing_sentence_and_default_table():
    assert "For 1000 req/s you need 4 replicas." in sizing(_one_step(300.0), 100.0, 1000.0)
    assert "For 150 req/s you need 1 replica." in sizing(_one_step(300.0), 100.0, 150.0)
    table = sizing(_one_step(200.0), 100.0, None)
    assert table.startswith("One node holds 200.0 req/s at p95 ≤ 100 ms (4 users).")
    assert "| 100 | 1 |\n| 500 | 3 |\n| 1000 | 5 |\n| 5000 | 25 |" in table


def test_sizing_without_steps():
    assert "nothing to size" in sizing(PathReport("empty", [], None, None), 100.0, None)


# ---- files and CLI -----------------------------------------------------------------------------------


def test_write_report_writes_markdown_json_and_two_pngs(tmp_path):
    synthetic = summarize("synthetic", read_history(knee_run(tmp_path)), None, 100.0, 0.01)
    history = read_history(Path(f"{SAMPLE}_stats_history.csv"))
    gateway = summarize("gateway", history, read_triton(Path(f"{SAMPLE}_triton_metrics.csv")), 100.0, 0.01)
    meta = {"command": "make loadtest", "date": "2026-01-02", "machine": "2-core box", "shared_cores": "yes"}
    paths = write_report([gateway, synthetic], tmp_path / "out", 100.0, 0.01, 1000.0, meta)
    assert [p.name for p in paths] == [
        "capacity.md",
        "capacity.json",
        "capacity_throughput.png",
        "capacity_latency.png",
    ]
    for png in paths[2:]:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000

    md = paths[0].read_text()
    assert md.index("**date**: 2026-01-02") < md.index("**machine**: 2-core box") < md.index("**command**")
    assert "shared_cores" not in md and "ran on the same cores as the server" in md
    assert "These numbers are for this machine (2-core box)" in md
    assert "One node holds 120.0 req/s at p95 ≤ 100 ms (12 users). For 1000 req/s you need 9 replicas." in md
    assert "| **12 ← knee** | 120.0 | 47.5 | 95 | 105 | 0.00% | ✓ |" in md
    assert "| 16 | 128.0 | 70 | 140 | 150 | 0.00% | ✗ p95 140 ms > 100 ms (breaks) |" in md
    assert "| **6 ← knee** | 225.5 |" in md
    assert "classifier avg batch" in md and "classifier queue / compute ms" in md
    synthetic_section = md.split("## synthetic")[1]
    assert "No Triton metrics for this path" in synthetic_section
    assert "No Triton metrics" not in md.split("## synthetic")[0]
    assert "![Throughput vs users](capacity_throughput.png)" in md
    assert "![Latency vs users](capacity_latency.png)" in md

    payload = json.loads(paths[1].read_text())
    assert payload["shared_cores"] is True
    by_name = {p["name"]: p for p in payload["paths"]}
    assert by_name["synthetic"]["knee_users"] == 12 and by_name["synthetic"]["breaks_at_users"] == 16
    assert by_name["synthetic"]["replicas"] == {"1000": 9}
    assert by_name["gateway"]["steps"][2]["triton"]["classifier"]["count"] == 477


def test_write_report_no_shared_cores_note_without_the_flag(tmp_path):
    report = summarize("synthetic", read_history(knee_run(tmp_path)), None, 20.0, 0.01)
    md_path = write_report([report], tmp_path, 20.0, 0.01, stem="plain")[0]
    md = md_path.read_text()
    assert md_path.name == "plain.md" and (tmp_path / "plain_latency.png").exists()
    assert "same cores" not in md
    assert "No tested step meets the SLO" in md
    assert "← knee" not in md


def test_cli_missing_history_exits_2(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = main(["--path", f"grpc={tmp_path / 'grpc'}", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "grpc_stats_history.csv does not exist" in caplog.text
    assert not (tmp_path / "out").exists()
    assert main(["--path", "no-equals-sign", "--out", str(tmp_path / "out")]) == 2


def test_cli_on_the_sample(tmp_path):
    out = tmp_path / "results"
    argv = ["--path", f"gateway={SAMPLE}", "--slo-p95-ms", "18", "--target-rps", "1000", "--out", str(out)]
    assert main([*argv, "--meta", "machine=test box", "shared_cores=yes"]) == 0
    md = (out / "capacity.md").read_text()
    # p95 is 16, 15, 21 ms: 4 users is the knee at an 18 ms SLO, 6 users breaks it
    assert "One node holds 131.4 req/s at p95 ≤ 18 ms (4 users). For 1000 req/s you need 8 replicas." in md
    assert "It breaks at 6 users (225.5 req/s, p95 21 ms > 18 ms)." in md
    assert "**machine**: test box" in md and "**command**: python -m loadtest.report --path gateway=" in md
    assert {p.name for p in out.iterdir()} == {
        "capacity.md",
        "capacity.json",
        "capacity_throughput.png",
        "capacity_latency.png",
    }
