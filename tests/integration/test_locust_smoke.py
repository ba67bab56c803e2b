"""A short, bounded Locust run of the real locustfile against the in-process gateway (fake Triton)."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from tests.e2e.conftest import free_ports
from tests.integration.test_gateway import FakeTriton

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory, label_names):
    (port,) = free_ports(1)
    app = create_app(Settings(_env_file=None), FakeTriton(label_names, version="smoke"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
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
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "--config",
        str(ROOT / "loadtest" / "locust.conf"),
        "--host",
        url,
        "--shape",
        "constant",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "3s",
        "--triton-metrics",
        "",
        "--csv",
        str(tmp_path / "smoke"),
        *extra,
        "--tags",
        *tags,
        "--",  # --tags takes several values: end it before the user class
        user,
    ]
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
    (port,) = free_ports(1)  # nothing listens there: every message fails, and is reported
    code, stats = run_locust(f"http://127.0.0.1:{port}", tmp_path, tags=("stream",), user="StreamUser")
    stream = stats["/v1/emotions/stream [message]"]
    assert int(stream["Request Count"]) > 0 and stream["Failure Count"] == stream["Request Count"]
    assert code == 1
