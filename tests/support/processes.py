"""Helper processes of the tests: free ports, a real redis-server (loadtest.redis_server, shared with the
benchmarks), stopping a child. Readiness is the stack harness's one poll (server.probes.wait_for)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import redis

from loadtest.redis_server import redis_server as _redis_server
from loadtest.redis_server import start_redis, stop_process
from server.probes import free_port

__all__ = ["free_port", "gone", "redis_with", "start_redis", "stop_process"]


@contextlib.contextmanager
def redis_with(log_dir: Path, *flags: str) -> Iterator[str]:
    """A real redis-server (the benchmarks' ``loadtest.redis_server``) with ``flags`` set after start
    (CONFIG SET name value ...); its redis:// URL."""
    with _redis_server(log_dir / f"redis-{uuid.uuid4().hex[:8]}.log") as url:
        client = redis.Redis.from_url(url)
        for name, value in zip(flags[::2], flags[1::2], strict=True):
            client.config_set(name, value)
        client.close()
        yield url


def gone(process: psutil.Process) -> bool:
    """Exited (a zombie nobody has reaped yet counts: it holds no port and runs nothing)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
