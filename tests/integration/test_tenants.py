"""Tenants and scopes (issue 14): keys from a hashed keys file, the scope each route needs, learner data
scoped to the key's tenant on every learner route and the stream (another tenant's learner is a 404, the
same as an unknown one), erasure, and a cross-tenant fuzz run over learner ids."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from gateway.backends.trajectory import GuardedTrajectoryStore, MemoryTrajectoryStore
from gateway.core.tenants import Keyring, Scope, create_key, keyring_from, read_keys_file
from gateway.resilience import Breaker
from gateway.settings import MIN_API_KEY_CHARS, Settings
from tests.support.fake_triton import FakeTriton
from tests.support.fuzz import fuzz, mixed_text
from tests.support.gateway import (
    KEY,
    closed_with,
    error,
    make_settings,
    recv,
    running,
    serve,
    services,
    ws,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Examples of the cross-tenant fuzz test: small for CI; TENANT_FUZZ_EXAMPLES=5000 for a long run.
FUZZ_EXAMPLES = int(os.environ.get("TENANT_FUZZ_EXAMPLES", "25"))


@pytest.fixture
def fake(label_names: list[str]) -> FakeTriton:
    return FakeTriton(label_names)


class Tenants:
    """A keys file with keys of two tenants (acme, beta), every scope each, and key headers by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, str] = {}
        for tenant in ("acme", "beta"):
            self.add(tenant, tenant, [s.value for s in Scope])

    def add(self, name: str, tenant: str, scopes: list[str], browser: bool = False) -> dict[str, str]:
        _, key = create_key(self.path, tenant, scopes, key_id=name, browser=browser)
        self.keys[name] = key
        return self.headers(name)

    def headers(self, name: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[name]}


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    return Tenants(tmp_path / "keys.json")


def tenant_settings(tenants: Tenants, tmp_path: Path, **kwargs: Any) -> Settings:
    kwargs.setdefault("audit_backend", "sqlite")
    kwargs.setdefault("audit_sqlite_path", tmp_path / "audit.sqlite3")
    return make_settings(api_keys_file=tenants.path, audit_hash_key=SecretStr(KEY), **kwargs)


def audit_rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


# ---- the keys file and the settings --------------------------------------------------------------


def test_the_keys_file_holds_hashes_only_and_authenticates_by_them(tenants: Tenants):
    text = tenants.path.read_text()
    for key in tenants.keys.values():
        assert key not in text and len(key) >= MIN_API_KEY_CHARS
        assert hashlib.sha256(key.encode()).hexdigest() in text
    assert {r.id for r in read_keys_file(tenants.path)} == {"acme", "beta"}
    assert oct(tenants.path.stat().st_mode & 0o777) == "0o600"
    ring = keyring_from(make_settings(api_keys_file=tenants.path))
    principal = ring.authenticate(tenants.keys["acme"])
    assert principal is not None and (principal.tenant, principal.key_id) == ("acme", "acme")
    assert ring.authenticate(tenants.keys["acme"][:-1]) is None and ring.authenticate("") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"id": "k", "tenant": "acme", "scopes": ["analyse"], "sha256": "0" * 64, "key": "x"},
            "never the key",
        ),
        ({"id": "k", "tenant": "acme", "scopes": ["analyse"], "sha256": "plain-key"}, "sha256"),
        ({"id": "k", "tenant": "acme", "scopes": ["admin"], "sha256": "0" * 64}, "unknown scope"),
        ({"id": "k", "tenant": "acme", "scopes": [], "sha256": "0" * 64}, "at least one scope"),
        ({"id": "k", "tenant": "a:b", "scopes": ["analyse"], "sha256": "0" * 64}, "tenant"),
        (
            {
                "id": "k",
                "tenant": "acme",
                "scopes": ["analyse", "metrics"],
                "sha256": "0" * 64,
                "browser": True,
            },
            "browser key",
        ),
    ],
)
def test_a_bad_keys_file_entry_stops_the_start(tmp_path: Path, entry: dict[str, Any], message: str):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(ValueError, match=message):
        keyring_from(make_settings(api_keys_file=path))


def test_the_old_one_key_per_line_file_is_refused_with_what_to_do(tmp_path: Path):
    path = tmp_path / "api-keys"
    path.write_text("a-plain-key-of-the-old-format-0123456789\n")
    with pytest.raises(ValueError, match="python -m gateway keys create"):
        keyring_from(make_settings(api_keys_file=path))


@pytest.mark.parametrize(
    "value", ['["k1-0123456789abcdef0123456789abcdef", ""]', "short-key", '[""]', '["   "]']
)
def test_empty_or_short_plain_keys_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, value: str):
    monkeypatch.setenv("GATEWAY_API_KEYS", value)
    with pytest.raises(ValidationError, match=f"shorter than {MIN_API_KEY_CHARS}"):
        Settings(_env_file=None)


def test_plain_keys_are_the_default_tenant_with_every_scope():
    key = "k" * MIN_API_KEY_CHARS
    principal = keyring_from(make_settings(api_keys=key)).authenticate(key)
    assert principal is not None and principal.tenant == "default" and principal.scopes == frozenset(Scope)
    assert not Keyring([])  # no keys: auth is off


def test_the_key_command_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path):
    path = tmp_path / "secrets" / "keys.json"
    command = [sys.executable, "-m", "gateway", "keys", "create", "--tenant", "acme", "--file", str(path)]
    done = subprocess.run(
        [*command, "--scopes", "analyse,learners:read", "--id", "acme-web"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    key = done.stdout.strip()
    assert done.stdout.count(key) == 1 and key not in done.stderr and len(key) >= MIN_API_KEY_CHARS
    assert key not in path.read_text()
    [record] = read_keys_file(path)
    assert record.sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert (record.id, record.tenant, set(record.scopes)) == (
        "acme-web",
        "acme",
        {"analyse", "learners:read"},
    )
    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "list", "--file", str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert "acme-web\tacme\tanalyse,learners:read" in listed.stdout and key not in listed.stdout
    refused = subprocess.run(
        [*command, "--scopes", "analyse,learners:erase", "--browser"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert refused.returncode == 2 and "browser key may only have the 'analyse' scope" in refused.stderr
    assert len(read_keys_file(path)) == 1


# ---- scopes -------------------------------------------------------------------------------------

ROUTES: list[tuple[Scope, str, str]] = [
    (Scope.ANALYSE, "POST", "/v1/emotions"),
    (Scope.LEARNERS_READ, "GET", "/v1/learners/learner-1/trajectory"),
    (Scope.LEARNERS_READ, "GET", "/v1/learners/learner-1/history"),
    (Scope.LEARNERS_ERASE, "DELETE", "/v1/learners/learner-1"),
    (Scope.METRICS, "GET", "/metrics"),
]
SCOPE_SETS = [
    set(c) for n in range(1, len(Scope) + 1) for c in itertools.combinations([s.value for s in Scope], n)
]


async def test_each_route_needs_its_scope_for_every_scope_combination(
    tenants: Tenants, tmp_path: Path, fake: FakeTriton
):
    for i, scopes in enumerate(SCOPE_SETS):
        tenants.add(f"combo-{i}", "acme", sorted(scopes))
    async with running(tenant_settings(tenants, tmp_path), fake) as (client, _):
        for i, scopes in enumerate(SCOPE_SETS):
            headers = tenants.headers(f"combo-{i}")
            for scope, method, path in ROUTES:
                # a learner with data, so that an allowed read is a 200
                seeded = {"text": "seed", "learner_id": "learner-1"}
                assert (
                    await client.post("/v1/emotions", json=seeded, headers=tenants.headers("acme"))
                ).is_success
                r = await client.request(
                    method, path, json={"text": "hi"} if method == "POST" else None, headers=headers
                )
                if scope.value in scopes:
                    assert r.status_code == 200, (scopes, path, r.text)
                else:
                    assert r.status_code == 403, (scopes, path, r.text)
                    assert error(r)["code"] == "forbidden" and f"'{scope.value}'" in error(r)["message"]
        for method, path in [(m, p) for _, m, p in ROUTES]:
            r = await client.request(method, path, json={"text": "hi"} if method == "POST" else None)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            bad = await client.request(method, path, headers={"X-API-Key": tenants.keys["acme"] + "x"})
            assert bad.status_code == 401 and error(bad)["code"] == "unauthorized"
        assert (await client.get("/healthz")).status_code == 200  # probes need no key


async def test_a_browser_key_can_only_analyse(tenants: Tenants, tmp_path: Path, fake: FakeTriton):
    browser = tenants.add("web", "acme", ["analyse"], browser=True)
    async with running(tenant_settings(tenants, tmp_path), fake) as (client, _):
        assert (
            await client.post("/v1/emotions", json={"text": "hi", "learner_id": "l1"}, headers=browser)
        ).is_success
        for _, method, path in ROUTES[1:]:
            assert (await client.request(method, path, headers=browser)).status_code == 403


async def test_without_keys_everything_is_the_default_tenant(tmp_path: Path, fake: FakeTriton):
    settings = make_settings(
        audit_backend="sqlite", audit_sqlite_path=tmp_path / "a.db", audit_hash_key=SecretStr(KEY)
    )
    async with running(settings, fake) as (client, _):
        assert (await client.post("/v1/emotions", json={"text": "hi", "learner_id": "l1"})).is_success
        assert (await client.get("/v1/learners/l1/trajectory")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        erased = await client.delete("/v1/learners/l1")
        assert erased.json() == {
            "learner_id": "l1",
            "removed": {"trajectory_points": 1, "audit_rows": 1, "idempotent_responses": 0},
        }
    assert audit_rows(tmp_path / "a.db", "SELECT tenant, key_id FROM audit_erasures") == [("default", None)]


# ---- learner data belongs to its tenant --------------------------------------------------------------


async def test_another_tenants_learner_is_a_404_like_an_unknown_one_on_every_learner_route(
    tenants: Tenants, tmp_path: Path, fake: FakeTriton
):
    acme, beta = tenants.headers("acme"), tenants.headers("beta")
    async with running(tenant_settings(tenants, tmp_path), fake) as (client, _):
        for i in range(3):
            r = await client.post(
                "/v1/emotions", json={"text": f"acme {i}", "learner_id": "shared-id"}, headers=acme
            )
            assert r.json()["trend"]["points"] == i + 1
        for suffix in ("trajectory", "history"):
            mine = await client.get(f"/v1/learners/shared-id/{suffix}", headers=acme)
            assert mine.status_code == 200
            theirs = await client.get(f"/v1/learners/shared-id/{suffix}", headers=beta)
            unknown = await client.get(f"/v1/learners/never-seen/{suffix}", headers=beta)
            assert theirs.status_code == unknown.status_code == 404  # not 403: existence is not revealed
            assert theirs.json() == {"error": {"code": "not_found", "message": error(theirs)["message"]}}
            assert error(theirs)["message"] == error(unknown)["message"].replace("never-seen", "shared-id")
        # beta's own learner of the same id starts from nothing and never mixes with acme's
        r = await client.post("/v1/emotions", json={"text": "beta", "learner_id": "shared-id"}, headers=beta)
        assert r.json()["trend"]["points"] == 1
        history = (await client.get("/v1/learners/shared-id/history", headers=beta)).json()
        assert len(history["entries"]) == 1
        # beta erasing "shared-id" erases beta's learner only
        erased = await client.delete("/v1/learners/shared-id", headers=beta)
        assert erased.json()["removed"] == {
            "trajectory_points": 1,
            "audit_rows": 1,
            "idempotent_responses": 0,
        }
        assert (
            len((await client.get("/v1/learners/shared-id/trajectory", headers=acme)).json()["points"]) == 3
        )
        assert len((await client.get("/v1/learners/shared-id/history", headers=acme)).json()["entries"]) == 3
        assert (await client.get("/v1/learners/shared-id/trajectory", headers=beta)).status_code == 404
    rows = audit_rows(tmp_path / "audit.sqlite3", "SELECT tenant, count(*) FROM audit_log GROUP BY tenant")
    assert rows == [("acme", 3)]


def test_the_stream_works_in_its_keys_tenant(tenants: Tenants, tmp_path: Path, fake: FakeTriton):
    no_analyse = tenants.add("reader", "beta", ["learners:read"])
    with serve(tenant_settings(tenants, tmp_path), fake) as served:
        client = httpx.Client(base_url=served.http, timeout=10)
        for i in range(2):
            r = client.post(
                "/v1/emotions", json={"text": f"a{i}", "learner_id": "L"}, headers=tenants.headers("acme")
            )
            assert r.status_code == 200
        # header auth, and a browser's first-frame auth
        for headers, first in [
            (tenants.headers("beta"), None),
            (None, {"type": "auth", "api_key": tenants.keys["beta"]}),
        ]:
            with ws(served, headers) as conn:
                if first:
                    conn.send(json.dumps(first))
                conn.send(json.dumps({"id": 1, "text": "beta's message", "learner_id": "L"}))
                result = recv(conn)
                assert result["type"] == "result" and result["trend"]["points"] <= 2  # never acme's points
        beta = client.get("/v1/learners/L/trajectory", headers=tenants.headers("beta")).json()
        assert len(beta["points"]) == 2
        assert (
            len(client.get("/v1/learners/L/trajectory", headers=tenants.headers("acme")).json()["points"])
            == 2
        )
        with ws(served, no_analyse) as conn:
            assert closed_with(conn) == (1008, "this API key lacks the 'analyse' scope")
        with ws(served) as conn:
            conn.send(json.dumps({"type": "auth", "api_key": ""}))
            assert closed_with(conn) == (1008, "invalid API key")


BAD_IDS = ["a b", "x" * 129, "é", "a\n", "a/b", "\ud800"]


def test_one_learner_id_rule_on_every_route_and_the_stream(
    tenants: Tenants, tmp_path: Path, fake: FakeTriton
):
    acme = tenants.headers("acme")
    with serve(tenant_settings(tenants, tmp_path), fake) as served, ws(served, acme) as conn:
        client = httpx.Client(base_url=served.http, timeout=10)
        for learner in BAD_IDS:
            body = json.dumps({"text": "hi", "learner_id": learner})  # a lone surrogate as its JSON escape
            post = client.post(
                "/v1/emotions", content=body, headers={**acme, "content-type": "application/json"}
            )
            assert post.status_code == 422 and "learner_id" in error(post)["message"], learner
            conn.send(body)
            frame = recv(conn)
            assert (frame["type"], frame["status"]) == ("error", 422) and "learner_id" in frame["message"]
            if "/" in learner:
                continue  # the server decodes %2F before routing: a path with another segment, a 404
            path = "/v1/learners/" + _quote(learner)
            for method, url in [("GET", f"{path}/trajectory"), ("GET", f"{path}/history"), ("DELETE", path)]:
                r = client.request(method, url, headers=acme)
                assert r.status_code == 422 and "learner_id" in error(r)["message"], (method, learner, r.text)


# ---- erasure --------------------------------------------------------------------------------------


async def test_erasure_removes_the_tenants_learner_everywhere_and_records_only_a_hash(
    tenants: Tenants, tmp_path: Path, fake: FakeTriton
):
    acme, beta = tenants.headers("acme"), tenants.headers("beta")
    db = tmp_path / "audit.sqlite3"
    async with running(tenant_settings(tenants, tmp_path), fake) as (client, app):
        for headers in (acme, beta):
            r = await client.post(
                "/v1/emotions", json={"texts": ["x", "y"], "learner_id": "L-1"}, headers=headers
            )
            assert r.status_code == 200
        await client.post("/v1/emotions", json={"text": "z", "learner_id": "L-2"}, headers=acme)
        erased = await client.delete("/v1/learners/L-1", headers=acme)
        assert erased.status_code == 200
        assert erased.json() == {
            "learner_id": "L-1",
            "removed": {"trajectory_points": 2, "audit_rows": 2, "idempotent_responses": 0},
        }
        again = await client.delete("/v1/learners/L-1", headers=acme)  # idempotent
        assert again.json() == {
            "learner_id": "L-1",
            "removed": {"trajectory_points": 0, "audit_rows": 0, "idempotent_responses": 0},
        }
        for suffix in ("trajectory", "history"):
            assert (await client.get(f"/v1/learners/L-1/{suffix}", headers=acme)).status_code == 404
            assert (await client.get(f"/v1/learners/L-1/{suffix}", headers=beta)).status_code == 200
        assert (await client.delete("/v1/learners/bad%20id", headers=acme)).status_code == 422
        await services(app).audit_trail.flush()  # type: ignore[union-attr]
    assert audit_rows(db, "SELECT count(*) FROM audit_log WHERE tenant = 'acme' AND learner_id = 'L-1'") == [
        (0,)
    ]
    assert audit_rows(db, "SELECT tenant, learner_id FROM audit_log ORDER BY tenant, learner_id") == [
        ("acme", "L-2"),
        ("beta", "L-1"),
        ("beta", "L-1"),
    ]
    records = audit_rows(
        db,
        "SELECT tenant, learner_hash, key_id, trajectory_points, audit_rows FROM audit_erasures ORDER BY id",
    )
    digest = hmac.new(KEY.encode(), b"acme:L-1", hashlib.sha256).hexdigest()
    assert records == [("acme", digest, "acme", 2, 2), ("acme", digest, "acme", 0, 0)]
    assert "L-1" not in json.dumps(records)


class DownStore(MemoryTrajectoryStore):
    async def erase(self, learner_id: str) -> int:
        raise ConnectionError("redis is down")


async def test_erasure_is_a_503_while_the_learner_store_is_down(
    tenants: Tenants, tmp_path: Path, fake: FakeTriton
):
    async with running(tenant_settings(tenants, tmp_path), fake) as (client, app):
        pipeline = services(app).pipeline
        pipeline.trajectories = GuardedTrajectoryStore(
            DownStore(pipeline.policy), Breaker("the learner store", reset_s=5.0), (ConnectionError,)
        )
        r = await client.delete("/v1/learners/L-1", headers=tenants.headers("acme"))
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert error(r)["code"] == "backend_unavailable"


# ---- fuzz: no learner id ever reaches another tenant's data -----------------------------------------

valid_ids = st.from_regex(r"[A-Za-z0-9_.:@-]{1,128}", fullmatch=True)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_fuzzed_learner_ids_never_reach_another_tenants_data(
    tenants: Tenants, tmp_path: Path, fake: FakeTriton, loop: asyncio.AbstractEventLoop
):
    acme, beta = tenants.headers("acme"), tenants.headers("beta")
    counts = {"requests": 0, "examples": 0, "cross_tenant_attempts": 0, "cross_tenant_reads": 0}
    gateway = running(tenant_settings(tenants, tmp_path), fake)
    client, _ = loop.run_until_complete(gateway.__aenter__())

    async def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> httpx.Response:
        counts["requests"] += 1
        if body is None:
            return await client.request(method, path, headers=headers)
        # json.dumps escapes a lone surrogate (httpx's own encoder cannot send one)
        content, kind = json.dumps(body), {"content-type": "application/json"}
        return await client.request(method, path, content=content, headers={**headers, **kind})

    async def case(learner: str, valid: bool) -> None:
        quoted = "/v1/learners/" + _quote(learner)
        written = await call("POST", "/v1/emotions", acme, {"text": "acme's text", "learner_id": learner})
        assert written.status_code == (200 if valid else 422), written.text
        for path in (f"{quoted}/trajectory", f"{quoted}/history"):
            theirs = await call("GET", path, beta)
            counts["cross_tenant_attempts"] += 1
            if theirs.status_code == 200:
                counts["cross_tenant_reads"] += 1
            assert theirs.status_code in (404, 422), theirs.text  # 404 also for a path that is no route
        erased = await call("DELETE", quoted, beta)
        counts["cross_tenant_attempts"] += 1
        if erased.status_code == 200:
            assert erased.json()["removed"] == {
                "trajectory_points": 0,
                "audit_rows": 0,
                "idempotent_responses": 0,
            }
        if valid:
            mine = await call("GET", f"{quoted}/trajectory", acme)
            assert mine.status_code == 200 and mine.json()["learner_id"] == learner
            assert (await call("DELETE", quoted, acme)).json()["removed"]["trajectory_points"] >= 1

    @fuzz(FUZZ_EXAMPLES)
    @given(learner=valid_ids.map(lambda v: (v, True)) | mixed_text(200).map(lambda v: (v, None)))
    @example(("beta:shared", True))
    @example(("acme:x", True))
    @example((".", True))
    @example(("..", True))
    def prop(learner: tuple[str, bool | None]) -> None:
        learner_id, valid = learner
        if valid is None:
            valid = _valid(learner_id)
        counts["examples"] += 1
        loop.run_until_complete(case(learner_id, valid))

    try:
        prop()
    finally:
        loop.run_until_complete(gateway.__aexit__(None, None, None))
        Path(REPO_ROOT / "build").mkdir(exist_ok=True)
        (REPO_ROOT / "build" / "tenant_fuzz.json").write_text(json.dumps(counts) + "\n")
    assert counts["cross_tenant_reads"] == 0


def _valid(learner_id: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", learner_id) is not None


def _quote(learner_id: str) -> str:
    """The id as one path segment (dots too: "." and ".." would be resolved away by the client)."""
    from urllib.parse import quote

    return quote(learner_id, safe="", errors="surrogatepass").replace(".", "%2E")
