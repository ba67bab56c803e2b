"""The model version comes from Triton with every answer: the cache is keyed by it, a swap is noticed and
never mixed into one response, /readyz reports and checks it; primary_emotion follows the labels; an
invalid answer is never cached or served; failover across Triton endpoints. In-process, against the
fake Triton or fake gRPC endpoints (tests/support/fake_triton.py) under the real TritonClient."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from contract.names import GOEMOTIONS_LABELS, LABELS
from gateway.backends.triton import Prediction, TritonClient
from gateway.core.pipeline import PROBE_TEXT
from gateway.errors import GatewayError
from gateway.settings import Settings
from tests.support.fake_triton import Endpoints, FakeTriton, Outputs
from tests.support.gateway import AUTH, audit_settings, error, running, services

A, B = "triton-a:8001", "triton-b:8001"


def quiet(**overrides: Any) -> Settings:
    """Settings without the background version check (these tests decide when Triton is asked)."""
    return Settings(_env_file=None, version_check_s=0, **overrides)


async def post(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/emotions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def probs(**values: float) -> list[float]:
    return [values.get(name, 0.01) for name in GOEMOTIONS_LABELS]


def metric(app: FastAPI, name: str, **labels: str) -> float:
    return services(app).metrics.registry.get_sample_value(name, labels) or 0.0


# ---- the served version ----------------------------------------------------------------------------


async def test_the_served_version_is_learned_at_start_up_and_reported(fake):
    fake.version = "student-3f2a9c1b7d10-int8"
    async with running(quiet(), fake) as (client, app):
        assert fake.probes == 1 and fake.calls == []  # one probe at start-up, no request yet
        assert services(app).pipeline.served.version == "student-3f2a9c1b7d10-int8"
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {
            "model": "goemotions",
            "version": "student-3f2a9c1b7d10-int8",
            "circuit": "closed",
            "triton": "ready",
            "ready": True,
        }
        assert fake.probes == 2  # /readyz probes too


async def test_the_gateway_starts_while_triton_is_down_and_learns_the_version_from_an_answer(fake, caplog):
    fake.fail = GatewayError("backend_unavailable", "down", {"Retry-After": "1"})
    async with running(quiet(), fake) as (client, app):
        assert services(app).pipeline.served.version is None
        assert "could not learn the served model version" in caplog.text
        assert (await client.get("/readyz")).status_code == 200  # it answers: 503s until Triton is back
        r = await client.get("/readyz/triton")
        assert r.status_code == 503 and r.json()["version"] is None
        assert "probe inference failed" in r.json()["reason"]
        fake.fail = None
        first = await post(client, text="hello")
        assert first["model"]["version"] == "test-v1" and first["results"][0]["cached"] is False
        assert services(app).pipeline.served.version == "test-v1"
        again = await post(client, text="hello")
        assert again["results"][0]["cached"] is True and fake.calls == [["hello"]]


async def test_a_swap_is_noticed_by_the_next_miss_and_old_results_are_recomputed(fake, caplog):
    async with running(quiet(), fake) as (client, app):
        old = await post(client, text="cached before the swap")
        assert old["model"]["version"] == "test-v1"
        assert (await post(client, text="cached before the swap"))["results"][0]["cached"] is True
        fake.version = "v2"  # the launcher swapped the model; the gateway has not asked Triton since
        with caplog.at_level(logging.INFO, logger="gateway.core.versions"):
            new = await post(client, text="a new text")
            assert new["model"]["version"] == "v2"  # the answer's version, not the one the gateway knew
            assert services(app).pipeline.served.version == "v2"
            # cached under the version that answered it (not the one the lookup was made under)
            assert (await post(client, text="a new text"))["results"][0]["cached"] is True
            again = await post(client, text="cached before the swap")
            assert again["model"]["version"] == "v2" and again["results"][0]["cached"] is False
            assert fake.calls[-1] == ["cached before the swap"]  # recomputed by the new model
            third = await post(client, text="cached before the swap")
            assert third["results"][0]["cached"] is True and third["model"]["version"] == "v2"
        swaps = [r.getMessage() for r in caplog.records if "swapped" in r.getMessage()]
        assert swaps == ["model swapped from test-v1 to v2"]  # logged once


async def test_one_response_never_mixes_versions(fake):
    async with running(quiet(), fake) as (client, _):
        await post(client, text="old hit")
        fake.version = "v2"
        answer = await post(client, texts=["old hit", "new miss", "old hit"])
        assert answer["model"]["version"] == "v2"
        assert [r["cached"] for r in answer["results"]] == [False, False, False]
        assert fake.calls[-2:] == [["new miss"], ["old hit"]]  # the miss, then the stale hit again
        for text, result in zip(["old hit", "new miss", "old hit"], answer["results"], strict=True):
            assert list(result["emotions"].values()) == fake.probabilities(text)
        calls = len(fake.calls)
        both = await post(client, texts=["old hit", "new miss"])
        assert [r["cached"] for r in both["results"]] == [True, True] and len(fake.calls) == calls


async def test_audit_rows_and_trajectory_points_carry_the_version_of_their_answer(fake, tmp_path: Path):
    settings = audit_settings(
        audit_backend="sqlite", audit_sqlite_path=tmp_path / "audit.sqlite3", version_check_s=0
    )
    async with running(settings, fake) as (client, _):
        await post(client, text="first", learner_id="l-1")
        fake.version = "v2"
        answer = await post(client, texts=["first", "second"], learner_id="l-1")
        assert answer["model"]["version"] == "v2"
        history = (await client.get("/v1/learners/l-1/history", headers=AUTH)).json()["entries"]
        assert [e["model_version"] for e in history] == ["v2", "v2", "test-v1"]  # newest first
        points = (await client.get("/v1/learners/l-1/trajectory", headers=AUTH)).json()["points"]
        assert [p["model_version"] for p in points] == ["test-v1", "v2", "v2"]
        assert [p["primary_emotion"] for p in points[1:]] == [r["primary_emotion"] for r in answer["results"]]


async def test_the_background_check_follows_a_swap_and_stops_at_shutdown(fake):
    probed = asyncio.Event()

    class Signalling(FakeTriton):
        async def infer(self, texts: list[str]) -> list[Prediction]:
            out = await super().infer(texts)
            if texts == [PROBE_TEXT] and self.version == "v2":
                probed.set()
            return out

    triton = Signalling(list(GOEMOTIONS_LABELS))
    settings = Settings(_env_file=None, version_check_s=0.01)
    async with running(settings, triton) as (_, app):
        assert [t for t in asyncio.all_tasks() if t.get_name() == "model-version-check"]
        triton.version = "v2"
        await asyncio.wait_for(probed.wait(), 10)
        assert services(app).pipeline.served.version == "v2"
        assert triton.calls == []  # probes only
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "model-version-check"]
    async with running(quiet(), triton):
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "model-version-check"]  # 0 = off


async def test_readyz_checks_the_expected_version_by_prefix(fake):
    fake.version = "student-3f2a9c1b7d10-int8"
    async with running(quiet(expected_model_version="student-3f2a9c1b7d10"), fake) as (client, _):
        assert (await client.get("/readyz")).status_code == 200
        fake.version = "student-0123456789ab-int8"
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False  # the wrong model: out of the Service
        assert r.json()["version"] == "student-0123456789ab-int8" and r.json()["triton"] == "unavailable"
        assert r.json()["reason"] == (
            "serving model version student-0123456789ab-int8, expected student-3f2a9c1b7d10 "
            "(GATEWAY_EXPECTED_MODEL_VERSION)"
        )


async def test_readyz_triton_is_503_when_the_probe_answer_is_malformed(fake):
    async with running(quiet(), fake) as (client, app):
        fake.answers[PROBE_TEXT] = ([0.5] * 27, [])
        r = await client.get("/readyz/triton")
        assert r.status_code == 503 and "27 probabilities, expected 28" in r.json()["reason"]
        assert metric(app, "gateway_invalid_model_outputs_total", reason="shape") == 1
        fake.answers[PROBE_TEXT] = ([float("nan")] * 28, [])
        r = await client.get("/readyz/triton")
        assert r.status_code == 503 and "non-finite" in r.json()["reason"]
        del fake.answers[PROBE_TEXT]
        assert (await client.get("/readyz/triton")).status_code == 200


# ---- primary_emotion ---------------------------------------------------------------------------------


async def test_primary_emotion_is_the_most_probable_label_or_neutral(fake):
    # sadness is the most probable overall but under its threshold: it is not a label, so never primary
    fake.answers["mixed"] = (probs(sadness=0.9, joy=0.6, gratitude=0.7), ["joy", "gratitude"])
    fake.answers["flat"] = (probs(sadness=0.45, neutral=0.2), [])
    async with running(quiet(), fake) as (client, _):
        answer = await post(client, texts=["mixed", "flat"], learner_id="l-2")
        mixed, flat = answer["results"]
        assert (mixed["primary_emotion"], mixed["confidence"]) == ("gratitude", 0.7)
        assert mixed["labels"] == ["joy", "gratitude"]
        assert (flat["primary_emotion"], flat["confidence"]) == ("neutral", 0.2)
        assert flat["labels"] == []
        points = (await client.get("/v1/learners/l-2/trajectory")).json()["points"]
        assert [p["primary_emotion"] for p in points] == ["gratitude", "neutral"]


# ---- invalid answers ---------------------------------------------------------------------------------


@pytest.fixture
def endpoints() -> Endpoints:
    return Endpoints(A, B)


def real_client(endpoints: Endpoints, *urls: str) -> TritonClient:
    return TritonClient(list(urls), "goemotions", 2.0, connect=endpoints.connect)


async def test_a_nan_answer_is_a_502_never_cached_and_does_not_open_the_circuit(endpoints):
    endpoints[A].nan_texts.add("poison")
    settings = quiet(breaker_failures=2)
    async with running(settings, real_client(endpoints, A)) as (client, app):
        for _ in range(5):  # more than breaker_failures in a row
            r = await client.post("/v1/emotions", json={"text": "poison"})
            assert r.status_code == 502, r.text
            assert error(r) == {
                "code": "invalid_model_output",
                "message": "the model returned an invalid answer (non-finite probabilities); "
                "the text was not cached",
            }
        assert endpoints[A].calls == [["poison"]] * 5  # asked every time: nothing was cached
        batch = await client.post("/v1/emotions", json={"texts": ["fine", "poison"]})
        assert batch.status_code == 502  # one invalid row fails its request, and nothing of it is cached
        ok = await client.post("/v1/emotions", json={"text": "fine"})
        assert ok.status_code == 200 and ok.json()["results"][0]["cached"] is False
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["circuit"] == "closed"
        assert metric(app, "gateway_invalid_model_outputs_total", reason="non_finite") == 6
        assert metric(app, "gateway_circuit_state") == 0
        assert endpoints[B].calls == []


async def test_an_unknown_label_name_is_refused(endpoints):
    def rename(texts: list[str], out: Outputs) -> Outputs:
        labels = out[LABELS].copy()
        if texts == ["odd"]:
            labels[0, 0] = b"happiness"
        return {**out, LABELS: labels}

    endpoints[A].mangle = rename
    async with running(quiet(), real_client(endpoints, A)) as (client, app):
        for _ in range(2):
            r = await client.post("/v1/emotions", json={"text": "odd"})
            assert r.status_code == 502 and error(r)["code"] == "invalid_model_output"
            assert "unknown label 'happiness'" in error(r)["message"]
        assert endpoints[A].calls == [["odd"], ["odd"]]
        assert metric(app, "gateway_invalid_model_outputs_total", reason="unknown_label") == 2


async def test_a_missing_version_is_refused(endpoints):
    def unversioned(texts: list[str], out: Outputs) -> Outputs:
        if texts == [PROBE_TEXT]:
            return out
        return {**out, "MODEL_VERSION": np.array([[b""]] * len(texts), dtype=object)}

    endpoints[A].mangle = unversioned
    async with running(quiet(), real_client(endpoints, A)) as (client, _):
        r = await client.post("/v1/emotions", json={"text": "who made this?"})
        assert r.status_code == 502 and "no model version" in error(r)["message"]


# ---- failover ----------------------------------------------------------------------------------------


async def test_requests_and_readiness_fail_over_to_the_next_endpoint(endpoints):
    endpoints[B].version = "green-v2"
    async with running(quiet(), real_client(endpoints, A, B)) as (client, app):
        assert services(app).pipeline.served.version == "test-v1"  # the primary answered the start-up probe
        endpoints[A].status = "StatusCode.UNAVAILABLE"  # blue drains for the swap
        answer = await post(client, text="during the swap")
        assert answer["model"]["version"] == "green-v2"
        assert endpoints[A].calls == [["during the swap"]] and endpoints[B].calls == [["during the swap"]]
        assert (await client.get("/readyz")).json()["version"] == "green-v2"
        endpoints[B].status = "StatusCode.NOT_FOUND"
        r = await client.post("/v1/emotions", json={"text": "nobody home"})
        assert r.status_code == 503 and error(r)["code"] == "backend_unavailable"
        assert (await client.get("/readyz/triton")).status_code == 503
