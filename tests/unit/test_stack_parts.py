"""The stack harness's parts (server/stack.py, server/probes.py), without Triton: the one readiness
poll, Prometheus samples, ports, explicit gateway environments, and a real child process's lifetime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from server.gateway_process import ProcessError
from server.probes import answers, metric, per_label, private_bytes, process_tree, wait_for
from server.stack import Ports, Stack, gateway_env
from tests.support.processes import gone

ROOT = Path(__file__).resolve().parents[2]


def test_wait_for_polls_until_the_condition_holds():
    calls = []
    assert wait_for(lambda: calls.append(1) or len(calls) >= 3, 10, interval_s=0) is True
    assert len(calls) == 3


def test_wait_for_gives_up_at_the_deadline_and_when_aborted():
    assert wait_for(lambda: False, 0.05, interval_s=0.01) is False
    checks = []
    aborted = wait_for(lambda: checks.append(1) and False, 60, interval_s=0, abort=lambda: len(checks) >= 2)
    assert aborted is False and len(checks) == 2  # stopped at once, long before the deadline


def test_metric_reads_counters_typed_or_not_and_sums_matching_label_sets():
    text = "\n".join(
        [
            "# TYPE nv_inference_count counter",
            'nv_inference_count{model="classifier",version="1"} 120',
            'nv_inference_count{model="tokenizer",version="1"} 7',
            'gateway_audit_dropped_total{reason="queue_full"} 3.0',
            'gateway_audit_dropped_total{reason="db_error"} 2.0',
            "gateway_inflight_requests 4.0",
        ]
    )
    assert metric(text, "nv_inference_count", model="classifier", version="1") == 120
    assert metric(text, "nv_inference_count") == 127
    assert metric(text, "gateway_audit_dropped_total") == 5
    assert metric(text, "gateway_audit_dropped_total", reason="db_error") == 2
    assert metric(text, "gateway_inflight_requests") == 4
    assert metric(text, "absent") == 0
    assert per_label(text, ["nv_inference_count"], "model") == {
        "classifier": {"nv_inference_count": 120},
        "tokenizer": {"nv_inference_count": 7},
    }


def test_ports_are_consecutive_from_a_base_or_free_ones():
    ports = Ports(18000)
    assert [ports.take() for _ in range(4)] == [18000, 18001, 18002, 18003]
    free = Ports()
    assert len({free.take() for _ in range(3)}) >= 2  # the kernel's picks


def test_a_gateway_gets_exactly_the_settings_it_is_given():
    base = {"PATH": "/bin", "GATEWAY_CACHE_BACKEND": "redis", "GATEWAY_API_KEY": "from-the-shell"}
    env = gateway_env({"GATEWAY_CACHE_BACKEND": "memory"}, base=base)
    assert env == {"PATH": "/bin", "GATEWAY_CACHE_BACKEND": "memory"}


def test_the_stack_starts_a_service_on_its_port_and_stops_it_on_close(tmp_path):
    with Stack(tmp_path) as stack:
        web = stack.start_service(
            "web",
            lambda port: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            ready_path="/",
        )
        assert answers(f"{web.url}/")
        pid = web.pid
        assert pid is not None and process_tree(pid) and private_bytes(pid) > 0
    assert web.process is None and not psutil.pid_exists(pid)


def test_a_service_that_exits_during_start_up_fails_with_its_log(tmp_path):
    with (
        Stack(tmp_path) as stack,
        pytest.raises(ProcessError, match=r"exited with code 3[\s\S]*no model here"),
    ):
        stack.start_service("broken", lambda port: [sys.executable, "-c", "print('no model here'); exit(3)"])


SLOW_READY = """
import sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class Slow(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(float(sys.argv[2]))  # answers only after this long, as a gateway whose Triton hangs
        self.send_response(200)
        self.end_headers()

HTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"""


def test_a_readiness_answer_slower_than_a_second_still_counts(tmp_path):
    """The gateway's /readyz bounds its Triton check at 1.5 s: a probe that gave up after 1 s could not see
    a gateway ready while its Triton hung, and the launcher waited on it (a SIGTERM went unheard)."""
    with Stack(tmp_path) as stack:
        slow = stack.start_service(
            "slow", lambda port: [sys.executable, "-c", SLOW_READY, str(port), "1.6"], ready_timeout_s=20
        )
        assert slow.alive()


def test_a_start_up_wait_ends_at_once_when_a_stop_is_asked(tmp_path):
    with Stack(tmp_path) as stack:
        never = stack.start_service(
            "never", lambda port: [sys.executable, "-c", "import time; time.sleep(60)"], wait=False
        )
        checks: list[int] = []

        def stop_asked() -> bool:  # a stop asked after the first look
            checks.append(1)
            return len(checks) > 1

        never.wait_ready(timeout_s=5, abort=stop_asked)
        assert len(checks) >= 2 and never.alive()  # returned on the stop, without raising or stopping it


@pytest.mark.parametrize(("line", "ready"), [("Serving HTTP", True), ("a line it never logs", False)])
def test_a_process_with_a_ready_line_is_ready_once_it_has_logged_it(tmp_path, line, ready):
    """The launcher's gateway answers before the launcher is done starting: a harness waits for its line."""
    from server.gateway_process import ManagedProcess
    from server.probes import free_port

    port = free_port()
    web = ManagedProcess(
        "web",
        [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        f"http://127.0.0.1:{port}",
        tmp_path / "web.log",
        ready_path="/",
        ready_timeout_s=3,
        ready_line=line,
    )
    web.spawn()
    try:
        if ready:
            web.wait_ready()
        else:
            with pytest.raises(ProcessError, match="not ready"):
                web.wait_ready()
            assert "Serving HTTP" in (tmp_path / "web.log").read_text()  # up all along, without the line
    finally:
        web.stop()


def test_nothing_here_changes_this_process_environment(tmp_path):
    before = dict(os.environ)
    with Stack(tmp_path) as stack:
        stack.start_service(
            "web",
            lambda port: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            ready_path="/",
            env=gateway_env({"GATEWAY_CACHE_BACKEND": "off"}),
        )
    assert dict(os.environ) == before


def run_until_its_child_is_up(
    script: str, tmp_path: Path, **popen: Any
) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """Run ``script`` (its argv: a work folder, then the file where it writes its child's pid) until the
    pid is written; the run and that child."""
    pid_file = tmp_path / "child.pid"
    run = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(pid_file)], cwd=ROOT, **popen)
    written = lambda: pid_file.exists() and pid_file.read_text() != ""  # noqa: E731
    started = wait_for(lambda: written() or run.poll() is not None, 60, interval_s=0.05)
    if not (started and run.poll() is None):
        run.kill()
        run.wait()
        raise AssertionError("the run failed before its child was up")
    return run, psutil.Process(int(pid_file.read_text()))


STOPPED_BY_SIGTERM = """
import sys
from pathlib import Path
from server.stack import Stack

with Stack(Path(sys.argv[1])) as stack:
    web = stack.start_service(
        "web", lambda port: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], ready_path="/"
    )
    Path(sys.argv[2]).write_text(str(web.pid))
    while True:
        input()  # blocks; only a signal ends this run
"""


def test_a_run_stopped_with_sigterm_takes_what_its_stack_started_with_it(tmp_path):
    """A benchmark killed with SIGTERM (it unwinds nothing) left its Triton, gateways and peer services
    running; its children now get SIGTERM from the kernel when it dies (server/lifetime.py)."""
    run, child = run_until_its_child_is_up(STOPPED_BY_SIGTERM, tmp_path, stdin=subprocess.PIPE)
    try:
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == -signal.SIGTERM
        assert wait_for(lambda: gone(child), 10, interval_s=0.05), "the service outlived its run"
    finally:
        run.kill()
        run.wait()


PARENT = """
import subprocess, sys
from pathlib import Path
from server.lifetime import die_with_parent

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], preexec_fn=die_with_parent())
Path(sys.argv[2]).write_text(str(child.pid))
child.wait()
"""


def test_a_child_started_with_die_with_parent_goes_when_its_parent_is_killed(tmp_path):
    """SIGKILL leaves a parent no chance to stop its children; the kernel's parent-death signal does it."""
    parent, child = run_until_its_child_is_up(PARENT, tmp_path)
    try:
        parent.kill()
        parent.wait()
        assert wait_for(lambda: gone(child), 10, interval_s=0.05), "the child outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
