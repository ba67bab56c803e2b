"""Helpers for tests that run the gateway: in process (httpx over ASGI) or under uvicorn in a thread
(for the WebSocket stream), settings builders, a fake clock, the error-body check, audit settings and
sample audit rows."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.api.stream import PATH
from gateway.app import create_app
from gateway.backends.audit.store import AuditRow, AuditStore, Before, Erasure
from gateway.backends.audit.writer import AuditTrail
from gateway.backends.triton import Inference
from gateway.metrics import Metrics
from gateway.services import Services
from gateway.settings import Settings
from server.probes import wait_for
from tests.support.processes import free_port

WAIT_S = 10  # upper bound on any wait: a broken server fails the test instead of hanging it

# The audit trail's HMAC key and a client API key, as the audit tests configure them.
KEY = "integration-test-audit-key"
API_KEY = "client-key-1-integration-tests-0123456789"  # at least MIN_API_KEY_CHARS
AUTH = {"X-API-Key": API_KEY}


class FakeClock:
    """A monotonic clock that only moves when told to (``clock.now += 5``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_settings(**overrides: Any) -> Settings:
    """Settings from ``overrides`` only (no environment file)."""
    return Settings(_env_file=None, **overrides)


def audit_settings(**kwargs: Any) -> Settings:
    """Settings with an API key and an audit hash key (the audit trail itself is up to ``kwargs``)."""
    kwargs.setdefault("api_keys", [SecretStr(API_KEY)])
    kwargs.setdefault("audit_hash_key", SecretStr(KEY))
    return make_settings(**kwargs)


@asynccontextmanager
async def running(
    settings: Settings, triton: Inference, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The in-process gateway (lifespan entered) and its app."""
    app = create_app(settings, triton, clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, app


@asynccontextmanager
async def gateway(
    settings: Settings, triton: Inference, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the in-process gateway."""
    async with running(settings, triton, clock) as (client, _):
        yield client


def services(app: FastAPI) -> Services:
    """The running app's services (metrics, pipeline, audit trail)."""
    found: Services = app.state.services
    return found


def error(response: httpx.Response) -> dict[str, str]:
    """The body of an error response, checked to be the gateway's one error format."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    error_body: dict[str, str] = body["error"]
    return error_body


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """A sample from ``GET /metrics`` (with the audit tests' API key); 0 when absent."""
    text = (await client.get("/metrics", headers=AUTH)).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


async def analyse(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """``POST /v1/emotions`` with the audit tests' API key; asserts a 200."""
    r = await client.post("/v1/emotions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


# --- under uvicorn (WebSocket tests) ----------------------------------------------------------------


@dataclass
class Served:
    url: str  # the stream's ws:// URL
    http: str
    app: FastAPI
    loop: asyncio.AbstractEventLoop

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = services(self.app).metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else float(value)

    def settled(self, name: str, labels: dict[str, str], value: float) -> bool:
        """Whether the metric reaches `value` (the server's bookkeeping may trail the close frame)."""
        return wait_for(lambda: self.metric(name, labels) == value, WAIT_S, interval_s=0.01)

    def task_names(self) -> list[str]:
        async def names() -> list[str]:
            return [t.get_name() for t in asyncio.all_tasks()]

        return asyncio.run_coroutine_threadsafe(names(), self.loop).result(WAIT_S)


@contextmanager
def serve(settings: Settings, triton: Inference | None = None) -> Iterator[Served]:
    """The gateway under uvicorn on a free port, in a thread with its own event loop."""
    app = create_app(settings, triton)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, WAIT_S, interval_s=0.02), "uvicorn did not start"
    try:
        yield Served(f"ws://127.0.0.1:{port}{PATH}", f"http://127.0.0.1:{port}", app, loop)
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        loop.close()


def ws(served: Served, headers: dict[str, str] | None = None, path: str = "") -> ClientConnection:
    return connect(
        served.url + path, additional_headers=headers, proxy=None, open_timeout=WAIT_S, close_timeout=WAIT_S
    )


def ask(conn: ClientConnection, frame: Any) -> dict[str, Any]:
    conn.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    return recv(conn)


def recv(conn: ClientConnection) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(conn.recv(timeout=WAIT_S))
    return body


def closed_with(conn: ClientConnection) -> tuple[int, str]:
    """The server's close code and reason (after it closes)."""
    with pytest.raises(ConnectionClosed) as info:
        conn.recv(timeout=WAIT_S)
    assert info.value.rcvd is not None, "the server did not send a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


# --- audit rows -------------------------------------------------------------------------------------

NOW = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)


def row(
    ts: datetime = NOW,
    learner_id: str | None = "learner-1",
    index: int = 0,
    request: str = "r1",
    tenant: str = "default",
) -> AuditRow:
    """A sample audit row."""
    return AuditRow(
        ts=ts,
        learner_id=learner_id,
        request_id=request,
        text_index=index,
        channel="http",
        model_version="test-v1",
        labels=["joy", "gratitude"],
        primary_emotion="joy",
        confidence=0.9,
        readiness_state="ready_to_learn",
        readiness_score=0.8,
        valence=0.7,
        intervention_level="none",
        reasons=["joy 0.90"],
        latency_ms=3.5,
        cached=False,
        text_hash="ab" * 32,
        text=None,
        tenant=tenant,
    )


async def every_page(
    trail: AuditTrail, learner_id: str, page_size: int, tenant: str = "default"
) -> list[tuple[str, int]]:
    """(request id, text index) of a learner's whole audit history, read page by page as a client would."""
    seen: list[tuple[str, int]] = []
    before = None
    while True:
        page = await trail.history(tenant, learner_id, page_size, before)
        seen += [(e.request_id, e.text_index) for e in page]
        if len(page) < page_size:
            return seen
        before = Before(page[-1].ts, page[-1].id)  # page boundaries may fall inside a request


def erase_many(store: AuditStore, rows: int, tenant: str = "acme") -> float:
    """Write ``rows`` audit rows for one learner (and 10 for another), erase the learner; the seconds the
    erasure took (the store's one transaction: delete and erasure record). Closes the store."""
    try:
        return _erase_many(store, rows, tenant)
    finally:
        store.close()


def _erase_many(store: AuditStore, rows: int, tenant: str) -> float:
    store.open()
    batch = 1000
    for start in range(0, rows, batch):
        store.insert(
            [
                row(NOW, index=i, request=f"r{i}", tenant=tenant)
                for i in range(start, min(rows, start + batch))
            ]
        )
    store.insert([row(NOW, learner_id="someone-else", index=i, tenant=tenant) for i in range(10)])
    started = time.perf_counter()
    deleted = store.erase_learner(tenant, "learner-1", Erasure(NOW, tenant, None, "bench", 0, 0))
    seconds = time.perf_counter() - started
    assert deleted == rows
    return seconds


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A metric's value in a registry (0 when absent)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0
