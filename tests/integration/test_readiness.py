"""Liveness, readiness and Triton's state kept apart (gateway/core/readiness.py): a gateway whose Triton
is down or hangs stays ready (it answers 503 with Retry-After at once), ``/readyz/triton`` reports Triton,
every check is bounded in time, and the Kubernetes probes use the right endpoint each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from gateway.core.readiness import CHECK_S, triton_state
from gateway.errors import GatewayError
from tests.support.fake_triton import WAIT_S, FakeTriton
from tests.support.gateway import make_settings, running, services

ROOT = Path(__file__).resolve().parents[2]


class HangingTriton(FakeTriton):
    """A Triton that accepts connections but never answers a health check."""

    async def ready(self) -> bool:
        await asyncio.Event().wait()
        return True


async def test_a_hanging_triton_cannot_make_the_readiness_check_hang():
    async with running(make_settings(version_check_s=0), HangingTriton()) as (client, app):
        state = await triton_state(services(app).pipeline, None, timeout_s=0.05)
        assert not state.ready and "did not answer the readiness check within 0.05 s" in (state.reason or "")
        ready = await asyncio.wait_for(client.get("/readyz"), WAIT_S)  # a bound: fail, never hang
        assert ready.status_code == 200 and ready.json()["triton"] == "unavailable"
        assert (await asyncio.wait_for(client.get("/readyz/triton"), WAIT_S)).status_code == 503


async def test_triton_down_keeps_the_gateway_ready_and_answering_503_with_retry_after():
    fake = FakeTriton()
    async with running(make_settings(breaker_failures=1), fake) as (client, _):
        fake.fail = GatewayError("backend_unavailable", "down", {"Retry-After": "1"})
        fake.is_ready = False
        for _ in range(2):  # the call that fails, then the open circuit's answer
            r = await client.post("/v1/emotions", json={"text": "anyone there?"})
            assert r.status_code == 503 and "retry-after" in r.headers
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert ready.json()["triton"] == "unavailable" and ready.json()["circuit"] == "open"
        triton = await client.get("/readyz/triton")
        assert triton.status_code == 503 and triton.json()["reason"].startswith("the circuit breaker is open")
        assert (await client.get("/healthz")).status_code == 200


async def test_docs_can_be_turned_off():
    async with running(make_settings(), FakeTriton()) as (client, _):
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200
    async with running(make_settings(api_docs="off"), FakeTriton()) as (client, app):
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 404, path
        assert "/v1/emotions" in app.openapi()["paths"]  # the contract itself is still there for tests


async def test_docs_can_be_put_behind_an_api_key():
    key = "docs-reader-key-0123456789abcdef0123456789"
    async with running(make_settings(api_docs="protected", api_keys=key), FakeTriton()) as (client, _):
        refused = await client.get("/openapi.json")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/openapi.json", headers={"x-api-key": "wrong"})).status_code == 401
        document = await client.get("/openapi.json", headers={"x-api-key": key})
        assert document.status_code == 200 and "/v1/emotions" in document.json()["paths"]
        assert "/openapi.json" not in document.json()["paths"]
        for path in ("/docs", "/redoc"):  # a browser could not send the key for the document
            assert (await client.get(path, headers={"x-api-key": key})).status_code == 404, path


def test_kubernetes_probes_use_liveness_and_readiness_as_meant():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "gateway.yaml").read_text()))
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"  # stays 200 while Triton is down
    assert liveness["httpGet"]["path"] == "/healthz"  # the process alone
    assert readiness["timeoutSeconds"] > CHECK_S  # the check's own bound fits in the probe's
