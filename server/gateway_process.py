"""Child processes with an HTTP readiness URL: the gateway (so `make serve` runs Triton and the gateway
and stops both), and, for the benchmarks and tests, the launcher itself and peer services."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from server.lifetime import die_with_parent
from server.probes import answers, log_tail, loopback_for, wait_for

log = logging.getLogger(__name__)


class ProcessError(RuntimeError):
    """A child process exited during start-up or did not become ready; the message has its log tail."""


# A readiness probe waits this long for an answer: longer than the gateway's own bounded check of a
# hanging Triton (1.5 s, gateway/core/readiness.py), so "Triton hangs" reads as an answer, not as silence.
PROBE_TIMEOUT_S = 3.0
# What `python -m server` logs last once Triton and its gateway are up: a harness that starts it waits for
# this line too, so it never acts on a stack whose launcher is still starting.
LAUNCHER_READY_LINE = "Ctrl-C to stop"


class ManagedProcess:
    """Start a command in its own session with its output in a log file, wait until ``url`` +
    ``ready_path`` answers 200 (or the process exits), stop it with SIGTERM (SIGKILL if it hangs).

    ``env`` is the child's whole environment; None inherits this process's."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        url: str,
        log_file: Path,
        *,
        ready_path: str = "/readyz",
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 30,
        cwd: Path | None = None,
        ready_line: str | None = None,
    ) -> None:
        self.name = name
        self.ready_line = ready_line  # when set, ready also means this line is in the log
        self.cmd = list(cmd)
        self.url = url
        self.ready_url = f"{url}{ready_path}"
        self.log_file = log_file
        self.env = dict(env) if env is not None else None
        self.ready_timeout_s = ready_timeout_s
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to be ready."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as out:
            # A file, not a pipe: an undrained pipe would stall the child.
            self.process = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return self.process

    def wait_ready(self, timeout_s: float | None = None, abort: Callable[[], bool] | None = None) -> None:
        """Return once ready, or at once when ``abort()`` holds (the caller is stopping: not an error);
        raise ``ProcessError`` when the process exits or is not ready in time."""
        process = self.process
        assert process is not None, "spawn() first"
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        stopping = abort or (lambda: False)
        if wait_for(
            lambda: answers(self.ready_url, timeout_s=PROBE_TIMEOUT_S) and self._logged_ready(),
            timeout_s,
            interval_s=0.2,
            abort=lambda: not self.alive() or stopping(),
        ):
            return
        if stopping():
            return
        if process.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with code {process.returncode}; log tail:\n{log_tail(self.log_file)}"
            )
        self.stop()
        raise ProcessError(
            f"{self.name} not ready after {timeout_s:.0f} s (log: {self.log_file}); log tail:\n"
            f"{log_tail(self.log_file)}"
        )

    def _logged_ready(self) -> bool:
        if self.ready_line is None:
            return True
        try:
            return self.ready_line in self.log_file.read_text(errors="replace")
        except OSError:
            return False

    def start(self, abort: Callable[[], bool] | None = None) -> Self:
        """Spawn and wait until ready, or until ``abort()`` holds (a stop asked for meanwhile)."""
        self.spawn()
        self.wait_ready(abort=abort)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 15, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` (SIGTERM: uvicorn finishes in-flight requests, then exits); SIGKILL only if it hangs.
        Returns the exit code (None when it was not started)."""
        if self.process is None:
            return None
        self.send(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit in %.0f s; killing it", self.name, timeout)
            self.send(signal.SIGKILL)
            code = self.process.wait()
        log.info("%s stopped", self.name)
        self.process = None
        return code


def gateway_command(host: str, port: int, triton_grpc: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "--host", host, "--port", str(port), "--triton-url", triton_grpc]


# Where a started gateway is waited on: it answers, and its Triton does (``/readyz`` alone is 200 while
# Triton is down, so that replicas keep answering 503s instead of leaving their Service).
GATEWAY_READY_PATH = "/readyz/triton"
# The gateway's drain before a shutdown, in seconds (gateway/draining.py; its setting shutdown_drain_s).
DRAIN_ENV = "GATEWAY_SHUTDOWN_DRAIN_S"
# The gateway's own readiness (200 while Triton is down; 503 for a wrong model version): what a supervisor
# that restarts Triton itself waits on.
GATEWAY_OWN_READY_PATH = "/readyz"


class GatewayProcess(ManagedProcess):
    def __init__(
        self,
        host: str,
        port: int,
        triton_grpc: str,
        log_file: Path,
        ready_timeout_s: float = 30,
        env: Mapping[str, str] | None = None,
        ready_path: str = GATEWAY_READY_PATH,
    ) -> None:
        super().__init__(
            "gateway",
            gateway_command(host, port, triton_grpc),
            f"http://{loopback_for(host)}:{port}",
            log_file,
            ready_path=ready_path,
            env=env,
            ready_timeout_s=ready_timeout_s,
        )
