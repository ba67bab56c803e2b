"""The gateway against a real embedded Triton and a real Redis; and `python -m server` running both."""

from __future__ import annotations

import json
import signal
import sqlite3
import urllib.request

import httpx
import numpy as np
import pytest
import redis

from contract.manifest import Manifest
from contract.names import LEARNING_SIGNALS
from gateway.app import create_app
from gateway.settings import Settings
from tests.support.processes import free_port
from tests.support.stack import TEXTS, as_triton_row, grpc_infer, labels_of, launcher, log_text

pytestmark = pytest.mark.e2e


@pytest.fixture
async def gateway_client(redis_settings):
    app = create_app(redis_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


async def test_gateway_answers_what_triton_answers(gateway_client, triton, repository):
    r = await gateway_client.post("/v1/emotions", json={"texts": TEXTS, "learner_id": "e2e-learner"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["version"] == Manifest.read(repository / "manifest.json").served_version("fp32")
    direct = grpc_infer(triton, TEXTS)
    probs = direct.as_numpy("PROBABILITIES")
    for i, result in enumerate(body["results"]):
        served_probs, served_labels = as_triton_row(result)
        assert list(result["learning_signals"]) == list(LEARNING_SIGNALS)
        np.testing.assert_allclose(served_probs, probs[i], atol=1e-6)
        assert served_labels == labels_of(direct)[i]
        assert set(result["signal_labels"]) <= set(LEARNING_SIGNALS)
    assert r.headers["x-cache"] == "miss"


async def test_a_native_request_for_some_outputs_does_not_break_the_gateway(gateway_client, triton):
    """Cache poisoning: a power user's native call asks for PROBABILITIES only; the same text through
    the gateway still gets every output (and the circuit stays closed)."""
    import tritonclient.grpc as grpcclient

    text = "poisoned? I hope not"
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    client.infer("goemotions", [inp], outputs=[grpcclient.InferRequestedOutput("PROBABILITIES")])
    for _ in range(6):  # more than the breaker's threshold
        r = await gateway_client.post("/v1/emotions", json={"text": text})
        assert r.status_code == 200, r.text
        assert as_triton_row(r.json()["results"][0])[1] == labels_of(grpc_infer(triton, [text]))[0]
    assert (await gateway_client.get("/readyz")).status_code == 200


async def test_redis_cache_and_trajectory(gateway_client, redis_url):
    first = await gateway_client.post(
        "/v1/emotions", json={"text": "Redis should remember this", "learner_id": "r1"}
    )
    second = await gateway_client.post(
        "/v1/emotions", json={"text": "Redis should remember this", "learner_id": "r1"}
    )
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert first.json()["results"][0]["emotions"] == second.json()["results"][0]["emotions"]
    keys = redis.Redis.from_url(redis_url).keys("*")
    assert any(k.startswith(b"goemotions:result:") for k in keys)
    # histories live in the learner store's own Redis (GATEWAY_LEARNER_REDIS_URL), never the cache's
    assert not any(k.startswith((b"goemotions:learner:", b"goemotions:trajectory:")) for k in keys)
    trajectory = (await gateway_client.get("/v1/learners/r1/trajectory")).json()
    assert len(trajectory["points"]) == 2


async def test_readiness_and_bad_input_through_the_stack(gateway_client):
    assert (await gateway_client.get("/readyz")).json()["ready"] is True
    r = await gateway_client.post("/v1/emotions", json={"text": "   "})
    assert r.status_code == 422


def test_the_gateway_client_runs_through_the_real_stack(redis_settings, repository):
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.gateway import serve

    script = Path(__file__).resolve().parents[2] / "clients" / "gateway_client.py"
    with serve(redis_settings) as served:
        out = subprocess.run(
            [sys.executable, str(script), "--url", served.http, "--learner", "e2e-cli", *TEXTS[:2]],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        answer = json.loads(out)
        assert answer["model"]["version"] == Manifest.read(repository / "manifest.json").served_version(
            "fp32"
        )
        assert [r["text_index"] for r in answer["results"]] == [0, 1]
        assert answer["learner_id"] == "e2e-cli" and answer["trend"]["points"] == 2
        assert served.metric("gateway_idempotent_requests_total", {"outcome": "first"}) == 1


async def test_triton_down_is_503(repository, redis_url):
    settings = Settings(
        triton_url=f"127.0.0.1:{free_port()}",
        triton_timeout_s=1.0,
        _env_file=None,
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        r = await client.post("/v1/emotions", json={"text": "anyone there?"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        ready = await client.get("/readyz")  # still answering (503s), so it stays in its Service
        assert ready.status_code == 200 and ready.json()["triton"] == "unavailable"
        assert (await client.get("/readyz/triton")).status_code == 503


def test_launcher_runs_triton_and_gateway_and_stops_both(repository, tmp_path):
    # With the audit trail on (SQLite), so the real process also records and serves history.
    audit_db = tmp_path / "audit.sqlite3"
    with launcher(
        repository,
        tmp_path,
        GATEWAY_AUDIT_BACKEND="sqlite",
        GATEWAY_AUDIT_SQLITE_PATH=str(audit_db),
        GATEWAY_AUDIT_HASH_KEY="e2e-audit-key-0123456789",
    ) as proc:
        url = proc.url
        req = urllib.request.Request(
            f"{url}/v1/emotions",
            data=b'{"text": "I get it now", "learner_id": "e2e-audit"}',
            headers={"content-type": "application/json"},
        )
        body = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert len(body["results"][0]["emotions"]) == 28 and len(body["results"][0]["learning_signals"]) == 3
        history = json.loads(urllib.request.urlopen(f"{url}/v1/learners/e2e-audit/history", timeout=5).read())
        (entry,) = history["entries"]
        assert (
            entry["model_version"] == body["model"]["version"]
            # the audit row keeps every label the model gave: emotions, then learning signals
            and entry["labels"] == body["results"][0]["labels"] + body["results"][0]["signal_labels"]
        )
        assert entry["text"] is None and len(entry["text_hash"]) == 64
        code = proc.stop(timeout=60, sig=signal.SIGINT)
        out = log_text(proc)
        assert code == 0, out
        assert "gateway stopped" in out and "tritonserver stopped (exit code 0)" in out
        assert f"Gateway {url}" in out
        with sqlite3.connect(audit_db) as db:  # written to disk, text not stored
            assert db.execute("SELECT learner_id, text FROM audit_log").fetchall() == [("e2e-audit", None)]
