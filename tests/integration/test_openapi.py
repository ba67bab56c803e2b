"""The OpenAPI document is the contract: every response the API really gives is one it documents.

The real app (with a fake Triton) gets representative good and bad requests, and Triton, Redis and
audit-database outages; each response's status must be documented for its operation, its content type
must be one the document lists, its documented required headers must be there, and a JSON body must
validate against the documented schema (``app.openapi()``, $refs resolved against its components). The
request schema must also agree with the API on which bodies are acceptable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from pydantic import SecretStr

from gateway.app import create_app
from gateway.backends.triton import InvalidModelOutput
from gateway.core.tenants import Scope, create_key
from gateway.errors import ErrorCode, GatewayError
from gateway.settings import Settings
from tests.support.fake_triton import FakeTriton
from tests.support.fuzz import fuzz, requests_like
from tests.support.gateway import AUTH, FakeClock, audit_settings, make_settings, running
from tests.support.processes import free_port

jsonschema = pytest.importorskip("jsonschema", reason="the contract check validates bodies with jsonschema")

EMOTIONS = ("POST", "/v1/emotions")
TRAJECTORY = ("GET", "/v1/learners/{learner_id}/trajectory")
HISTORY = ("GET", "/v1/learners/{learner_id}/history")
ERASE = ("DELETE", "/v1/learners/{learner_id}")
HEALTHZ = ("GET", "/healthz")
READYZ = ("GET", "/readyz")
READYZ_TRITON = ("GET", "/readyz/triton")
METRICS = ("GET", "/metrics")


class Contract:
    """Checks responses against one OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.checked: Counter[tuple[str, str, int]] = Counter()

    def schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A documented schema as a standalone JSON Schema: its "#/components/..." refs resolve here."""
        return {**schema, "components": self.document["components"]}

    def validate(self, instance: Any, schema: dict[str, Any]) -> None:
        jsonschema.Draft202012Validator(self.schema(schema)).validate(instance)

    def is_valid(self, instance: Any, schema: dict[str, Any]) -> bool:
        return bool(jsonschema.Draft202012Validator(self.schema(schema)).is_valid(instance))

    def request_schema(self, operation: tuple[str, str]) -> dict[str, Any]:
        method, path = operation
        body = self.document["paths"][path][method.lower()]["requestBody"]
        schema: dict[str, Any] = body["content"]["application/json"]["schema"]
        return schema

    def check(self, operation: tuple[str, str], response: httpx.Response) -> None:
        method, path = operation
        documented = self.document["paths"][path][method.lower()]["responses"]
        status = str(response.status_code)
        assert status in documented, f"{method} {path} answered {status}, which it does not document"
        spec = documented[status]
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        content = spec.get("content", {})
        assert media_type in content, f"{method} {path} {status}: {media_type} is not one of {list(content)}"
        for name, header in spec.get("headers", {}).items():
            if header.get("required"):
                assert name.lower() in response.headers, f"{method} {path} {status}: no {name} header"
                self.validate(response.headers[name.lower()], header["schema"])
        if media_type == "application/json":
            self.validate(response.json(), content[media_type]["schema"])
        else:
            assert content[media_type]["schema"] == {"type": "string"} and response.text
        self.checked[(method, path, response.status_code)] += 1


@pytest.fixture
def fake(label_names: list[str]) -> FakeTriton:
    return FakeTriton(label_names)


@pytest.fixture
async def contract(fake: FakeTriton) -> AsyncIterator[Contract]:
    async with running(make_settings(), fake) as (_, app):
        yield Contract(app.openapi())


# ---- the document itself ----------------------------------------------------------------------------


def test_the_document_declares_every_error_body_and_its_headers(contract):
    for path, methods in contract.document["paths"].items():
        for method, operation in methods.items():
            for status, spec in operation["responses"].items():
                if int(status) >= 400 and path not in ("/readyz", "/readyz/triton"):
                    schema = spec["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
                if status in ("429", "503", "504") and path != "/readyz":
                    assert spec["headers"]["Retry-After"]["required"] is True, (method, path, status)
    codes = contract.document["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(codes) == {c.value for c in ErrorCode}
    assert "HTTPValidationError" not in contract.document["components"]["schemas"]  # no undocumented 422 body
    metrics = contract.document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"text": "I finally get it"}, True),
        ({"texts": ["one", "two"]}, True),
        ({"text": None, "texts": ["one"]}, True),  # an explicit null counts as absent
        ({"texts": ["one"], "learner_id": "l-1", "context": {"recent_error_rate": 0.5}}, True),
        ({"text": "a", "texts": ["b"]}, False),  # exactly one of the two
        ({}, False),
        ({"text": None}, False),
        ({"texts": []}, False),
        ({"texts": "not a list"}, False),
        ({"text": "a", "extra": 1}, False),
        ({"text": "a", "learner_id": "spaces are not allowed"}, False),
        ({"text": "a", "context": {"recent_error_rate": 2}}, False),
        ({"text": "a", "context": {"time_on_task_seconds": "1"}}, False),  # a number, not a numeric string
        ({"text": "a", "context": {"consecutive_errors": True}}, False),
    ],
)
async def test_the_request_schema_accepts_exactly_what_the_api_accepts(fake, body, accepted):
    async with running(make_settings(), fake) as (client, app):
        contract = Contract(app.openapi())
        assert contract.is_valid(body, contract.request_schema(EMOTIONS)) is accepted
        r = await client.post("/v1/emotions", json=body)
        assert r.status_code == (200 if accepted else 422), r.text
        contract.check(EMOTIONS, r)


def test_a_body_the_api_accepts_is_one_the_schema_accepts():
    """For request-shaped JSON: an answered body is schema-valid, and a schema-invalid one is a 422.
    (The converse is not required: the gateway also refuses texts that are empty after normalization,
    too long, or not real unicode, which no schema says.)"""
    loop = asyncio.new_event_loop()  # one app for every example, on a loop this test drives
    stack = contextlib.AsyncExitStack()
    try:
        client, app = loop.run_until_complete(
            stack.enter_async_context(running(make_settings(version_check_s=0), FakeTriton()))
        )
        contract = Contract(app.openapi())
        schema = contract.request_schema(EMOTIONS)

        @fuzz(200)
        @given(body=requests_like)
        def check(body: Any) -> None:
            sent = json.dumps(body)  # ASCII, lone surrogates as \ud800 escapes
            post = client.post(
                "/v1/emotions", content=sent.encode(), headers={"content-type": "application/json"}
            )
            response = loop.run_until_complete(post)
            contract.check(EMOTIONS, response)
            valid = contract.is_valid(json.loads(sent), schema)  # what the gateway parsed
            if response.status_code == 200:
                assert valid, sent[:500]
            if not valid:
                assert response.status_code in (413, 422), sent[:500]

        check()
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


# ---- responses: good and bad requests ----------------------------------------------------------------


async def test_good_and_bad_requests_answer_as_documented(fake):
    settings = make_settings(max_body_bytes=2048, max_texts=4, max_text_chars=100)
    async with running(settings, fake) as (client, app):
        contract = Contract(app.openapi())
        post = client.post
        for body in (
            {"text": "I finally get it"},
            {"texts": ["a", "b"], "learner_id": "l-1", "context": {"time_on_task_seconds": 30}},
            {"text": ""},
            {"texts": ["a"] * 5},
            {"text": "x" * 101},
            {"text": "a", "texts": ["b"]},
        ):
            contract.check(EMOTIONS, await post("/v1/emotions", json=body))
        contract.check(EMOTIONS, await post("/v1/emotions", content=b"{not json"))
        contract.check(
            EMOTIONS, await post("/v1/emotions", content=b"text=a", headers={"content-type": "text/plain"})
        )
        contract.check(EMOTIONS, await post("/v1/emotions", json={"text": "x" * 3000}))  # 413
        contract.check(TRAJECTORY, await client.get("/v1/learners/l-1/trajectory"))
        contract.check(HISTORY, await client.get("/v1/learners/l-1/history"))  # 404: audit trail off
        contract.check(HEALTHZ, await client.get("/healthz"))
        contract.check(READYZ, await client.get("/readyz"))
        contract.check(READYZ_TRITON, await client.get("/readyz/triton"))
        contract.check(METRICS, await client.get("/metrics"))
        fake.is_ready = False
        contract.check(READYZ, await client.get("/readyz"))  # 200: this gateway answers (Triton's 503s)
        contract.check(READYZ_TRITON, await client.get("/readyz/triton"))  # 503 with a reason
    assert {status for (_, path, status) in contract.checked if path == "/v1/emotions"} == {200, 413, 422}
    assert (*HISTORY, 404) in contract.checked and (*READYZ_TRITON, 503) in contract.checked


async def test_keyed_requests_answer_as_documented(fake):
    async with running(make_settings(cache_backend="off"), fake) as (client, app):
        contract = Contract(app.openapi())
        keyed = {"Idempotency-Key": "k-1"}
        body = {"text": "I give up", "learner_id": "l-1"}
        contract.check(EMOTIONS, await client.post("/v1/emotions", json=body, headers=keyed))
        replay = await client.post("/v1/emotions", json=body, headers=keyed)
        assert replay.headers["idempotent-replayed"] == "true"
        contract.check(EMOTIONS, replay)
        contract.check(EMOTIONS, await client.post("/v1/emotions", json={"text": "other"}, headers=keyed))
        fake.hold = asyncio.Event()
        first = asyncio.create_task(
            client.post("/v1/emotions", json=body, headers={"Idempotency-Key": "k-2"})
        )
        await asyncio.wait_for(fake.entered.wait(), 10)
        contract.check(
            EMOTIONS, await client.post("/v1/emotions", json=body, headers={"Idempotency-Key": "k-2"})
        )
        fake.hold.set()
        contract.check(EMOTIONS, await first)
    assert {status for (_, _, status) in contract.checked} == {200, 409, 422}


async def test_auth_and_rate_limit_errors_answer_as_documented(fake):
    settings = make_settings(api_keys="k-one-0123456789abcdef0123456789abcdef", rate_limit_per_minute=2)
    async with running(settings, fake, FakeClock()) as (client, app):
        contract = Contract(app.openapi())
        for operation, url in ((EMOTIONS, "/v1/emotions"), (TRAJECTORY, "/v1/learners/l/trajectory")):
            method = operation[0]
            r = await client.request(method, url, json={"text": "a"} if method == "POST" else None)
            contract.check(operation, r)
            assert r.status_code == 401
        contract.check(METRICS, await client.get("/metrics"))
        contract.check(HISTORY, await client.get("/v1/learners/l/history"))
        key = {"x-api-key": "k-one-0123456789abcdef0123456789abcdef"}
        for _ in range(3):
            contract.check(EMOTIONS, await client.post("/v1/emotions", json={"text": "a"}, headers=key))
        contract.check(METRICS, await client.get("/metrics", headers=key))  # 429 on a text/plain route
    assert {s for (_, p, s) in contract.checked if p == "/metrics"} == {401, 429}
    assert (*EMOTIONS, 429) in contract.checked


# ---- responses: outages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        GatewayError("backend_unavailable", "down", {"Retry-After": "1"}),
        GatewayError("backend_timeout", "slow", {"Retry-After": "1"}),
        GatewayError("backend_error", "broken"),
        InvalidModelOutput("non_finite", "non-finite probabilities"),
        RuntimeError("a bug"),
    ],
)
async def test_triton_failures_answer_as_documented(fake, failure):
    async with running(make_settings(), fake) as (client, app):
        contract = Contract(app.openapi())
        fake.fail = failure
        r = await client.post("/v1/emotions", json={"text": "a"})
        contract.check(EMOTIONS, r)
        assert r.status_code >= 500
        contract.check(READYZ, await client.get("/readyz"))
        contract.check(READYZ_TRITON, await client.get("/readyz/triton"))


async def test_an_open_circuit_and_overload_answer_as_documented(fake):
    settings = make_settings(breaker_failures=1, max_concurrency=1)
    async with running(settings, fake, FakeClock()) as (client, app):
        contract = Contract(app.openapi())
        fake.fail = GatewayError("backend_unavailable", "down", {"Retry-After": "1"})
        contract.check(EMOTIONS, await client.post("/v1/emotions", json={"text": "a"}))
        r = await client.post("/v1/emotions", json={"text": "b"})
        assert "circuit open" in r.json()["error"]["message"]
        contract.check(EMOTIONS, r)
        contract.check(READYZ, await client.get("/readyz"))
    fake = FakeTriton()
    fake.hold = asyncio.Event()
    async with running(make_settings(max_concurrency=1), fake) as (client, app):
        contract = Contract(app.openapi())
        slow = asyncio.create_task(client.post("/v1/emotions", json={"text": "slow"}))
        await asyncio.wait_for(fake.entered.wait(), 10)
        r = await client.post("/v1/emotions", json={"text": "fast"})
        assert r.status_code == 429
        contract.check(EMOTIONS, r)
        fake.hold.set()
        contract.check(EMOTIONS, await slow)


async def test_a_learner_store_outage_answers_as_documented(fake):
    settings = make_settings(
        trajectory_backend="redis", learner_redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    async with running(settings, fake, FakeClock()) as (client, app):
        contract = Contract(app.openapi())
        r = await client.post("/v1/emotions", json={"text": "a", "learner_id": "l-1"})
        assert r.status_code == 200 and r.json()["trend"] is None  # answered without the trajectory
        contract.check(EMOTIONS, r)
        r = await client.get("/v1/learners/l-1/trajectory")
        assert r.status_code == 503
        contract.check(TRAJECTORY, r)


async def test_the_audit_history_answers_as_documented(fake, tmp_path: Path):
    settings = audit_settings(audit_backend="sqlite", audit_sqlite_path=tmp_path / "audit.sqlite3")
    async with running(settings, fake) as (client, app):
        contract = Contract(app.openapi())
        contract.check(
            EMOTIONS, await client.post("/v1/emotions", json={"text": "a", "learner_id": "l"}, headers=AUTH)
        )
        for query in ("", "?limit=1", "?before_id=3", "?limit=0", "?before=yesterday"):
            contract.check(HISTORY, await client.get(f"/v1/learners/l/history{query}", headers=AUTH))
        contract.check(HISTORY, await client.get("/v1/learners/bad%20id/history", headers=AUTH))
    dsn = f"postgresql://gateway:pw@127.0.0.1:{free_port()}/audit"
    down = audit_settings(audit_backend="postgres", audit_dsn=SecretStr(dsn))
    async with running(down, fake) as (client, app):
        contract = Contract(app.openapi())
        r = await client.get("/v1/learners/l/history", headers=AUTH)
        assert r.status_code == 503
        contract.check(HISTORY, r)


def test_settings_are_not_needed_for_the_document():
    """The document describes the API, not one deployment: the same with any settings."""
    plain = create_app(Settings(_env_file=None)).openapi()
    keyed = create_app(
        Settings(_env_file=None, api_keys="k-0123456789abcdef0123456789abcdef", rate_limit_per_minute=5)
    ).openapi()
    assert plain == keyed


async def test_tenant_scopes_and_erasure_answer_as_documented(fake, tmp_path: Path):
    keys = tmp_path / "keys.json"
    _, full = create_key(keys, "acme", [s.value for s in Scope])
    _, metrics_only = create_key(keys, "acme", ["metrics"])
    _, analyse_only = create_key(keys, "acme", ["analyse"])
    _, other = create_key(keys, "beta", [s.value for s in Scope])
    acme, limited, analyst, beta = ({"x-api-key": k} for k in (full, metrics_only, analyse_only, other))
    settings = audit_settings(
        api_keys=[], api_keys_file=keys, audit_backend="sqlite", audit_sqlite_path=tmp_path / "audit.sqlite3"
    )
    async with running(settings, fake) as (client, app):
        contract = Contract(app.openapi())
        body = {"text": "a", "learner_id": "l"}
        contract.check(EMOTIONS, await client.post("/v1/emotions", json=body, headers=acme))
        contract.check(EMOTIONS, await client.post("/v1/emotions", json=body, headers=limited))  # 403
        for operation, url in (
            (TRAJECTORY, "/v1/learners/l/trajectory"),
            (HISTORY, "/v1/learners/l/history"),
        ):
            for headers in (acme, limited, beta):  # 200, 403, 404 (another tenant's learner)
                contract.check(operation, await client.get(url, headers=headers))
        contract.check(METRICS, await client.get("/metrics", headers=acme))  # 403 on a text/plain route
        contract.check(METRICS, await client.get("/metrics", headers=analyst))
        for headers in (acme, beta, limited, {}):  # 200, 200 (nothing of beta's), 403, 401
            contract.check(ERASE, await client.delete("/v1/learners/l", headers=headers))
        contract.check(ERASE, await client.delete("/v1/learners/bad%20id", headers=acme))  # 422
    for path in ("/v1/learners/{learner_id}/trajectory", "/v1/learners/{learner_id}/history", "/metrics"):
        assert {s for (_, p, s) in contract.checked if p == path} >= {200, 403}, path
    assert {s for (_, p, s) in contract.checked if p == ERASE[1]} == {200, 401, 403, 422}
    assert (*TRAJECTORY, 404) in contract.checked and (*HISTORY, 404) in contract.checked
    dsn = f"postgresql://gateway:pw@127.0.0.1:{free_port()}/audit"
    down = audit_settings(audit_backend="postgres", audit_dsn=SecretStr(dsn))
    async with running(down, fake) as (client, app):
        r = await client.delete("/v1/learners/l", headers=AUTH)
        assert r.status_code == 503
        Contract(app.openapi()).check(ERASE, r)
