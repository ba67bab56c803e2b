"""A short, bounded Locust run of the real locustfile against the in-process gateway (fake Triton)."""

from __future__ import annotations

import csv
import subprocess
import threading
from pathlib import Path

import pytest
import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from loadtest.run import locust_command
from server.probes import wait_for
from tests.support.fake_triton import FakeTriton
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory, label_names):
    port = free_port()
    app = create_app(Settings(_env_file=None), FakeTriton(label_names, version="smoke"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def run_locust(
    url: str,
    tmp_path: Path,
    *extra: str,
    tags: tuple[str, ...] = ("gateway", "gateway-hit"),
    user: str = "GatewayUser",
) -> tuple[int, dict[str, dict[str, str]]]:
    cmd = locust_command(
        url,
        tmp_path / "smoke",
        tags,
        user,
        *("--shape", "constant", "-u", "4", "-r", "4", "-t", "3s", "--triton-metrics", ""),
        *extra,
    )
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    with (tmp_path / "smoke_stats.csv").open() as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    return result.returncode, stats


def test_locustfile_runs_and_checks_answers(gateway_url, tmp_path):
    code, stats = run_locust(gateway_url, tmp_path)
    total = stats["Aggregated"]
    assert code == 0
    assert int(total["Request Count"]) > 20 and int(total["Failure Count"]) == 0
    assert {"/v1/emotions [text]", "/v1/emotions [batch]", "/v1/emotions [hit]"} <= set(stats)


def test_slo_miss_sets_exit_code(gateway_url, tmp_path):
    code, stats = run_locust(gateway_url, tmp_path, "--slo-p95-ms", "0.0001")
    assert int(stats["Aggregated"]["Request Count"]) > 0
    assert code == 1


def test_stream_user_runs_over_websockets_and_checks_answers(gateway_url, tmp_path):
    code, stats = run_locust(gateway_url, tmp_path, tags=("stream",), user="StreamUser")
    stream = stats["/v1/emotions/stream [message]"]
    assert code == 0
    assert stream["Type"] == "WS"
    assert int(stream["Request Count"]) > 20 and int(stream["Failure Count"]) == 0
    assert set(stats) == {"/v1/emotions/stream [message]", "Aggregated"}  # the HTTP user did not run


def test_stream_user_reports_failures(tmp_path):
    port = free_port()  # nothing listens there: every message fails, and is reported
    code, stats = run_locust(f"http://127.0.0.1:{port}", tmp_path, tags=("stream",), user="StreamUser")
    stream = stats["/v1/emotions/stream [message]"]
    assert int(stream["Request Count"]) > 0 and stream["Failure Count"] == stream["Request Count"]
    assert code == 1
