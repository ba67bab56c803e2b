"""The gateway as a child process of the launcher, so `make serve` runs both and stops both."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


class GatewayProcess:
    def __init__(
        self, host: str, port: int, triton_grpc: str, log_file: Path, ready_timeout_s: float = 30
    ) -> None:
        self.url = f"http://{host}:{port}"
        self.log_file = log_file
        self.ready_timeout_s = ready_timeout_s
        self.cmd = [
            sys.executable,
            "-m",
            "gateway",
            "--host",
            host,
            "--port",
            str(port),
            "--triton-url",
            triton_grpc,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as out:
            self.process = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"gateway exited with code {self.process.returncode}; log tail:\n{tail}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r,
            ):
                if r.status == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway not ready after {self.ready_timeout_s:.0f} s (log: {self.log_file})")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM: uvicorn finishes in-flight requests, then exits; SIGKILL only if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        log.info("gateway stopped")
        self.process = None
