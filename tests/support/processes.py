"""Helper processes of the tests: free ports, a real redis-server (loadtest.redis_server, shared with the
benchmarks), stopping a child. Readiness is the stack harness's one poll (server.probes.wait_for)."""

from __future__ import annotations

from loadtest.redis_server import start_redis, stop_process
from server.probes import free_port

__all__ = ["free_port", "start_redis", "stop_process"]
