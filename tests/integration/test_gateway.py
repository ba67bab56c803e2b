"""Every gateway route and error status, in-process (httpx + ASGI) against a fake Triton."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.api.schemas import LearningStateOut
from gateway.errors import GatewayError
from gateway.learning.policy import PolicyError
from gateway.settings import Settings
from tests.support.fake_triton import FakeTriton, expected_primary
from tests.support.gateway import FakeClock, error, gateway, running, services


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)


@pytest.fixture
async def client(settings: Settings, fake: FakeTriton) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(settings, fake) as c:
        yield c


async def test_single_text_full_response(client, fake, label_names):
    r = await client.post("/v1/emotions", json={"text": "I finally get it!"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "goemotions", "version": "test-v1"}
    [result] = body["results"]
    probs = fake.probabilities("I finally get it!")
    assert result["emotions"] == dict(zip(label_names, probs, strict=True))
    assert result["labels"] == [n for n, p in zip(label_names, probs, strict=True) if p >= 0.5]
    primary, confidence = expected_primary(label_names, probs, result["labels"])
    assert result["primary_emotion"] == primary and result["confidence"] == confidence
    state = result["learning_state"]
    assert set(LearningStateOut.model_fields) <= set(state)
    assert 0 <= state["readiness"]["score"] <= 1
    assert r.headers["x-cache"] == "miss"
    assert float(r.headers["x-inference-time"]) >= 0 and float(r.headers["x-total-time"]) > 0


async def test_cache_hit_returns_the_same_result_without_calling_triton(client, fake):
    first = await client.post("/v1/emotions", json={"text": "Same text"})
    second = await client.post("/v1/emotions", json={"text": "  Same text  "})  # outer spaces normalized
    assert second.headers["x-cache"] == "hit"
    assert len(fake.calls) == 1
    a, b = first.json()["results"][0], second.json()["results"][0]
    assert b["cached"] is True and a["cached"] is False
    # the same answer; only the cache flag and the result id (each request names its own results) differ
    same = {k: v for k, v in a.items() if k not in ("cached", "result_id")}
    assert same == {k: v for k, v in b.items() if k not in ("cached", "result_id")}
    assert a["result_id"] != b["result_id"]


async def test_batch_is_one_triton_call_in_order(client, fake):
    texts = ["one", "two", "three", "two"]
    r = await client.post("/v1/emotions", json={"texts": texts})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["text_index"] for x in results] == [0, 1, 2, 3]
    assert fake.calls == [["one", "two", "three"]]  # misses deduplicated, one call
    for text, result in zip(texts, results, strict=True):
        assert list(result["emotions"].values()) == fake.probabilities(text)  # each answer is its own text's
    partial = await client.post("/v1/emotions", json={"texts": ["one", "four"]})
    assert partial.headers["x-cache"] == "miss" and fake.calls[-1] == ["four"]


async def test_concurrent_identical_misses_call_triton_once(settings, fake):
    fake.hold = asyncio.Event()
    async with running(settings, fake) as (client, app):
        posts = [asyncio.create_task(client.post("/v1/emotions", json={"text": "hot"})) for _ in range(10)]
        pipeline = services(app).pipeline
        async with asyncio.timeout(10):
            await fake.entered.wait()
            while pipeline.inflight < 10:  # all in the pipeline: one at Triton, nine waiting for its answer
                await asyncio.sleep(0)
        fake.hold.set()
        responses = await asyncio.gather(*posts)
    assert all(r.status_code == 200 for r in responses)
    assert fake.calls == [["hot"]]
    assert len({json.dumps(r.json()["results"][0]["emotions"]) for r in responses}) == 1


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"text": ""}, "text is empty"),
        ({"text": "   \n\t"}, "text is empty"),
        ({"texts": ["ok", ""]}, "texts[1] is empty"),
        ({"text": "x" * 5001}, "5001 characters; the limit is 5000"),
        ({"texts": ["a"] * 33}, "too many texts: 33; send at most 32"),
        ({"texts": []}, "at least one text"),
        ({"text": "a", "texts": ["b"]}, "exactly one of 'text'"),
        ({}, "exactly one of 'text'"),
        ({"text": 5}, "text: Input should be a valid string"),
        ({"texts": "not a list"}, "texts: Input should be a valid list"),
        ({"text": "a", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"text": "a", "learner_id": "bad id!"}, "learner_id"),
        ({"text": "a", "context": {"recent_error_rate": 2}}, "recent_error_rate"),
    ],
)
async def test_bad_input_is_a_422_saying_what_to_fix(client, fake, payload, needle):
    r = await client.post("/v1/emotions", json=payload)
    assert r.status_code == 422, r.text
    assert error(r)["code"] == "invalid_request"
    assert needle in error(r)["message"]
    assert fake.calls == []


async def test_malformed_json_and_lone_surrogates(client):
    r = await client.post(
        "/v1/emotions", content=b'{"text": "unterminated', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "not valid JSON" in error(r)["message"]
    r = await client.post(
        "/v1/emotions", content=b'{"text": "\\ud800 x"}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "unpaired surrogate" in error(r)["message"]


async def test_oversized_body_is_413(fake):
    async with gateway(Settings(max_body_bytes=2048, _env_file=None), fake) as client:
        r = await client.post("/v1/emotions", json={"texts": ["x" * 1000] * 3})
        assert r.status_code == 413 and error(r)["code"] == "payload_too_large"

        async def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(4):
                yield b" " * 1000

        r = await client.post("/v1/emotions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (
            GatewayError("backend_unavailable", "the model server is unavailable", {"Retry-After": "1"}),
            503,
            "backend_unavailable",
        ),
        (
            GatewayError("backend_timeout", "did not answer within 5 s", {"Retry-After": "1"}),
            504,
            "backend_timeout",
        ),
        (GatewayError("invalid_request", "TEXT row 0 is not valid UTF-8"), 422, "invalid_request"),
    ],
)
async def test_triton_failures_map_to_statuses(client, fake, failure, status, code):
    fake.fail = failure
    r = await client.post("/v1/emotions", json={"text": "hello"})
    assert r.status_code == status and error(r)["code"] == code
    if status in (503, 504):
        assert r.headers["retry-after"] == "1"
    fake.fail = None
    assert (await client.post("/v1/emotions", json={"text": "hello"})).status_code == 200  # nothing cached


async def test_unexpected_error_is_a_500_without_details(client, fake, caplog):
    fake.fail = RuntimeError("secret internals /etc/passwd")
    r = await client.post("/v1/emotions", json={"text": "hello"}, headers={"x-request-id": "lms-7f3a"})
    assert r.status_code == 500
    assert "secret" not in r.text and "request id lms-7f3a" in error(r)["message"]
    # the caller's own id names the request in the answer and in the log line a support engineer greps
    assert r.headers["x-request-id"] == "lms-7f3a"
    logged = [rec for rec in caplog.records if rec.getMessage() == "unhandled error (request id lms-7f3a)"]
    assert len(logged) == 1


@pytest.mark.parametrize("given", [None, "has space", "x" * 129, "line\r\nbreak", "ok"])
async def test_every_answer_carries_a_request_id_the_callers_when_usable(client, given):
    headers = {"x-request-id": given} if given is not None else {}
    for path in ("/healthz", "/v1/learners/nobody/trajectory"):
        r = await client.get(path, headers=headers)
        rid = r.headers["x-request-id"]
        if given == "ok":
            assert rid == "ok"
        else:
            assert len(rid) == 32 and int(rid, 16) >= 0  # a new one: the given one could forge a log line


async def test_overload_is_429_with_retry_after(fake):
    fake.hold = asyncio.Event()
    async with gateway(Settings(max_concurrency=1, _env_file=None), fake) as client:
        slow = asyncio.create_task(client.post("/v1/emotions", json={"text": "slow"}))
        await asyncio.wait_for(fake.entered.wait(), 10)  # "slow" holds the only slot
        r = await client.post("/v1/emotions", json={"text": "fast"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        fake.hold.set()
        assert (await slow).status_code == 200
        assert (await client.post("/v1/emotions", json={"text": "fast"})).status_code == 200


async def test_api_key_auth(fake):
    settings = Settings(
        api_keys="k-one-0123456789abcdef0123456789abcdef,k-two-0123456789abcdef0123456789abcdef",
        _env_file=None,
    )
    async with gateway(settings, fake) as client:
        assert (await client.post("/v1/emotions", json={"text": "a"})).status_code == 401
        assert (
            await client.post("/v1/emotions", json={"text": "a"}, headers={"x-api-key": "wrong"})
        ).status_code == 401
        assert (
            await client.post(
                "/v1/emotions",
                json={"text": "a"},
                headers={"x-api-key": "k-two-0123456789abcdef0123456789abcdef"},
            )
        ).status_code == 200
        ok = await client.get(
            "/v1/learners/l1/trajectory",
            headers={"authorization": "Bearer k-one-0123456789abcdef0123456789abcdef"},
        )
        assert ok.status_code == 404 and error(ok)["code"] == "not_found"  # let in; nothing recorded for l1
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_health_and_readiness(client, fake):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    for path in ("/readyz", "/readyz/triton"):
        r = await client.get(path)
        assert r.status_code == 200 and r.json()["ready"] is True and r.json()["version"] == "test-v1"
        assert r.json()["triton"] == "ready" and "reason" not in r.json()
    fake.is_ready = False
    # Triton down: this replica still answers (503 with Retry-After at once), so it stays in its Service
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert r.json()["triton"] == "unavailable" and r.json()["reason"] == "Triton or the model is not ready"
    r = await client.get("/readyz/triton")
    assert r.status_code == 503 and r.json()["ready"] is False and r.json()["triton"] == "unavailable"
    assert r.headers["retry-after"] == "1"


async def test_circuit_opens_after_repeated_triton_failures_and_closes_when_triton_is_back(fake):
    settings = Settings(breaker_failures=3, breaker_reset_s=5, _env_file=None)
    clock = FakeClock()
    async with gateway(settings, fake, clock) as client:
        fake.fail = GatewayError("backend_timeout", "the model did not answer", {"Retry-After": "1"})
        for i in range(3):
            assert (await client.post("/v1/emotions", json={"text": f"t{i}"})).status_code == 504
        calls = len(fake.calls)
        r = await client.post("/v1/emotions", json={"text": "t9"})
        assert r.status_code == 503 and "circuit open" in error(r)["message"]
        assert r.headers["retry-after"] == "5"
        assert len(fake.calls) == calls  # an open circuit does not call Triton
        assert (await client.get("/readyz")).status_code == 200  # and answers 503s: it stays in its Service
        ready = await client.get("/readyz/triton")
        assert ready.status_code == 503 and ready.json()["circuit"] == "open"
        metrics = (await client.get("/metrics")).text
        assert "gateway_circuit_state 2.0" in metrics and "gateway_circuit_rejections_total 1.0" in metrics
        fake.fail = None
        clock.advance(4.9)
        assert (await client.post("/v1/emotions", json={"text": "t9"})).headers["retry-after"] == "1"
        clock.advance(0.1)  # past the cool-down: the next request is the probe
        assert (await client.post("/v1/emotions", json={"text": "t10"})).status_code == 200
        ready = await client.get("/readyz/triton")
        assert ready.status_code == 200 and ready.json()["circuit"] == "closed"
        assert "gateway_circuit_state 0.0" in (await client.get("/metrics")).text
        # Without traffic (a replica out of its Service gets none), a ready Triton closes it too.
        fake.fail = GatewayError("backend_unavailable", "down", {"Retry-After": "1"})
        for i in range(3):
            assert (await client.post("/v1/emotions", json={"text": f"u{i}"})).status_code == 503
        fake.is_ready = False
        clock.advance(5)
        ready = await client.get("/readyz/triton")
        assert ready.status_code == 503 and ready.json()["circuit"] == "half-open"
        fake.is_ready = True
        ready = await client.get("/readyz/triton")  # ready, but its probe inference still fails
        assert ready.status_code == 503 and "probe inference failed" in ready.json()["reason"]
        assert ready.json()["circuit"] == "closed"
        fake.fail = None
        ready = await client.get("/readyz/triton")
        assert ready.status_code == 200 and ready.json()["circuit"] == "closed"


async def test_metrics_count_requests_cache_and_triton(client):
    await client.post("/v1/emotions", json={"text": "m"})
    await client.post("/v1/emotions", json={"text": "m"})
    await client.post("/v1/emotions", json={"text": ""})
    text = (await client.get("/metrics")).text
    assert 'gateway_requests_total{method="POST",route="/v1/emotions",status="200"} 2.0' in text
    assert 'gateway_requests_total{method="POST",route="/v1/emotions",status="422"} 1.0' in text
    assert 'gateway_cache_lookups_total{result="hit"} 1.0' in text
    assert 'gateway_cache_lookups_total{result="miss"} 1.0' in text
    assert "gateway_triton_duration_seconds_count 1.0" in text
    assert "gateway_triton_batch_size_bucket" in text


async def test_learner_trajectory(client):
    empty = await client.get("/v1/learners/learner-1/trajectory")
    assert empty.status_code == 404 and error(empty)["code"] == "not_found"  # nothing recorded yet
    for i in range(6):
        r = await client.post(
            "/v1/emotions",
            json={"text": f"message {i}", "learner_id": "learner-1", "context": {"recent_error_rate": 0.2}},
        )
        assert r.status_code == 200 and r.json()["trend"] is not None
    body = (await client.get("/v1/learners/learner-1/trajectory")).json()
    assert len(body["points"]) == 6
    assert body["trend"]["points"] == 6
    assert body["trend"]["label"] in {"improving", "stable", "declining", "volatile", "recovering"}
    other = await client.get("/v1/learners/learner-2/trajectory")
    assert other.status_code == 404  # histories are per learner


async def test_unknown_route_and_method(client):
    assert error(await client.get("/v1/nope"))["code"] == "not_found"
    r = await client.get("/v1/emotions")
    assert r.status_code == 405 and error(r)["code"] == "method_not_allowed"


async def test_invalid_policy_file_fails_at_startup(fake, tmp_path):
    bad = tmp_path / "policy.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(PolicyError, match=r"policy\.toml"):
        async with gateway(Settings(policy_file=bad, _env_file=None), fake):
            pass


async def test_openapi_docs_have_examples(client):
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/emotions" in spec["paths"]
    schema = spec["components"]["schemas"]["EmotionsRequest"]
    assert schema["examples"][0] == {"text": "I finally get it, thank you!"}
    assert (await client.get("/docs")).status_code == 200


async def test_rate_limit_per_key_is_429_with_retry_after(fake):
    settings = Settings(
        api_keys="key-a-0123456789abcdef0123456789abcdef,key-b-0123456789abcdef0123456789abcdef",
        rate_limit_per_minute=2,
        _env_file=None,
    )
    async with gateway(settings, fake) as client:
        a = {"x-api-key": "key-a-0123456789abcdef0123456789abcdef"}
        for _ in range(2):
            assert (await client.post("/v1/emotions", json={"text": "hi"}, headers=a)).status_code == 200
        r = await client.post("/v1/emotions", json={"text": "hi"}, headers=a)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert "rate limit of 2 requests per minute" in error(r)["message"]
        b = await client.post(
            "/v1/emotions",
            json={"text": "hi"},
            headers={"x-api-key": "key-b-0123456789abcdef0123456789abcdef"},
        )
        assert b.status_code == 200  # another key has its own window
        metrics = (
            await client.get("/metrics", headers={"x-api-key": "key-b-0123456789abcdef0123456789abcdef"})
        ).text
        assert "gateway_rate_limited_total 1.0" in metrics


async def test_cors_is_off_by_default_and_on_when_configured(client, fake):
    preflight = {"origin": "https://lms.example", "access-control-request-method": "POST"}
    r = await client.options("/v1/emotions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    settings = Settings(cors_origins="https://lms.example", _env_file=None)
    async with gateway(settings, fake) as cors_client:
        r = await cors_client.options("/v1/emotions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://lms.example"
        # a page may send a retry-safe request (the preflight allows the key) and read the replay mark
        keyed = await cors_client.options(
            "/v1/emotions",
            headers={**preflight, "access-control-request-headers": "content-type,idempotency-key"},
        )
        assert keyed.status_code == 200, keyed.text
        sent = {"origin": "https://lms.example", "idempotency-key": "k-1"}
        for _ in range(2):
            answer = await cors_client.post("/v1/emotions", json={"text": "hi"}, headers=sent)
        assert answer.headers["idempotent-replayed"] == "true"
        exposed = answer.headers["access-control-expose-headers"]
        assert "idempotent-replayed" in exposed and "x-request-id" in exposed
        other = await cors_client.options(
            "/v1/emotions", headers={**preflight, "origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


# --- learning signals: a model with giving_up / boredom / stuck outputs after the 28 labels ---


async def test_learning_signals_are_reported_apart_from_the_emotions(settings, label_names):
    from contract.names import LEARNING_SIGNALS, WITH_LEARNING_SIGNALS

    fake = FakeTriton(list(WITH_LEARNING_SIGNALS))
    text = "I want to give up."
    probs = [0.01] * len(WITH_LEARNING_SIGNALS)
    probs[WITH_LEARNING_SIGNALS.index("desire")] = 0.6
    probs[WITH_LEARNING_SIGNALS.index("giving_up")] = 0.93
    fake.answers[text] = (probs, ["desire", "giving_up"])
    async with gateway(settings, fake) as client:
        r = await client.post("/v1/emotions", json={"text": text})
        other = (await client.post("/v1/emotions", json={"text": "hello"})).json()["results"][0]
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["emotions"] == dict(zip(label_names, probs[:28], strict=True))
    assert result["labels"] == ["desire"] and result["primary_emotion"] == "desire"
    assert result["learning_signals"] == {"giving_up": 0.93, "boredom": 0.01, "stuck": 0.01}
    assert result["signal_labels"] == ["giving_up"]
    state = result["learning_state"]
    assert state["learning_emotions"]["giving_up"] == pytest.approx(0.93)
    assert state["intervention_level"] in ("moderate", "significant", "critical")
    assert state["readiness"]["state"] == "needs_support"
    assert set(other["learning_signals"]) == set(LEARNING_SIGNALS)


async def test_the_policy_acts_on_the_signals_the_answer_reports(settings):
    # giving_up's threshold is fitted for recall, well under 0.5: what Triton labelled giving_up is what the
    # floor and readiness act on, not a fixed probability
    from contract.names import WITH_LEARNING_SIGNALS

    fake = FakeTriton(list(WITH_LEARNING_SIGNALS))
    probs = [0.01] * len(WITH_LEARNING_SIGNALS)
    probs[WITH_LEARNING_SIGNALS.index("giving_up")] = 0.41
    fake.answers["i'm too stupid for this"] = (probs, ["giving_up"])
    fake.answers["not labelled"] = (probs, [])
    async with gateway(settings, fake) as client:
        r = await client.post("/v1/emotions", json={"texts": ["i'm too stupid for this", "not labelled"]})
    assert r.status_code == 200, r.text
    labelled, unlabelled = (x["learning_state"] for x in r.json()["results"])
    assert labelled["intervention_level"] == "moderate" and labelled["readiness"]["state"] == "needs_support"
    assert any("giving_up detected (0.41" in reason for reason in labelled["reasons"])
    assert unlabelled["intervention_level"] not in ("moderate", "significant", "critical")
    assert unlabelled["readiness"]["state"] != "needs_support"


async def test_a_model_without_signals_answers_null_signals_and_says_why(client):
    [result] = (await client.post("/v1/emotions", json={"text": "I want to give up."})).json()["results"]
    assert result["learning_signals"] is None and result["signal_labels"] == []
    assert any("unavailable" in reason for reason in result["learning_state"]["reasons"])


async def test_while_draining_readiness_fails_and_requests_are_still_answered_on_closing_connections(fake):
    async with running(Settings(retry_after_s=3, _env_file=None), fake) as (client, app):
        r = await client.post("/v1/emotions", json={"text": "before"})
        assert r.status_code == 200 and "connection" not in r.headers
        app.state.drain.begin()  # what the server does on SIGTERM (gateway/draining.py)
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False and r.headers["retry-after"] == "3"
        assert r.json()["reason"].startswith("draining")
        r = await client.post("/v1/emotions", json={"text": "during"})
        assert r.status_code == 200 and r.json()["results"][0]["labels"] is not None
        assert r.headers["connection"] == "close"  # keep-alive clients reconnect, to another replica
        assert (await client.get("/healthz")).status_code == 200  # alive: no restart wanted
