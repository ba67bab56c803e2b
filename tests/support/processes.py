"""Helper processes of the tests: free ports, a real redis-server (loadtest.redis_server, shared with the
benchmarks), stopping a child. Readiness is the stack harness's one poll (server.probes.wait_for)."""

from __future__ import annotations

import psutil

from loadtest.redis_server import start_redis, stop_process
from server.probes import free_port

__all__ = ["free_port", "gone", "start_redis", "stop_process"]


def gone(process: psutil.Process) -> bool:
    """Exited (a zombie nobody has reaped yet counts: it holds no port and runs nothing)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
