"""Tutor alert webhooks through the in-process gateway to a real HTTP receiver on loopback: a text at the
tenant's level becomes one signed event (never the text), lower levels and other tenants none, a cool-down
keeps a learner quiet unless their level rises, a receiver that fails is retried, and an erased learner's
cool-down goes with them."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from contract.names import WITH_LEARNING_SIGNALS
from gateway.core.alerts import read_hooks
from gateway.core.tenants import Scope, create_key
from server.probes import wait_for_async
from tests.support.fake_triton import WAIT_S, FakeTriton
from tests.support.gateway import KEY, FakeClock, make_settings, running, sample, services
from tests.support.processes import redis_with

SECRET = "s" * 40
GIVE_UP = "I want to give up."
FINE = "fine, thanks"


class Receiver:
    """A webhook receiver on a free loopback port: records each POST (headers, body) and answers the next
    of ``statuses`` (then 200)."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with contextlib.closing(Receiver()) as made:
        yield made


@pytest.fixture
def triton() -> FakeTriton:
    fake = FakeTriton(list(WITH_LEARNING_SIGNALS))
    probs = dict.fromkeys(WITH_LEARNING_SIGNALS, 0.01)
    fake.answers[GIVE_UP] = (
        [
            {**probs, "giving_up": 0.97, "sadness": 0.8, "disappointment": 0.8}[n]
            for n in WITH_LEARNING_SIGNALS
        ],
        ["disappointment", "sadness", "giving_up"],
    )
    fake.answers[FINE] = ([{**probs, "neutral": 0.95}[n] for n in WITH_LEARNING_SIGNALS], ["neutral"])
    return fake


KEYS: dict[str, dict[str, str]] = {}


def settings(tmp_path: Path, receiver: Receiver, beta: Receiver | None = None, **kwargs: Any):
    """Settings with a webhook for tenant acme (for beta only when ``beta`` is given); their key headers go
    in ``KEYS``."""
    hooks = {"acme": {"url": receiver.url, "secret": SECRET, "min_level": "moderate"}}
    if beta is not None:
        hooks["beta"] = {"url": beta.url, "secret": SECRET, "min_level": "moderate"}
    (tmp_path / "alerts.json").write_text(json.dumps(hooks))
    for tenant in ("acme", "beta"):
        _, key = create_key(tmp_path / "keys.json", tenant, [s.value for s in Scope], key_id=tenant)
        KEYS[tenant] = {"X-API-Key": key}
    kwargs.setdefault("alert_retry_s", 0.01)
    return make_settings(
        api_keys_file=tmp_path / "keys.json",
        alerts_file=tmp_path / "alerts.json",
        audit_hash_key=SecretStr(KEY),
        **kwargs,
    )


async def test_a_learner_reaching_the_level_is_one_signed_alert_without_the_text(tmp_path, receiver, triton):
    clock = FakeClock()
    async with running(settings(tmp_path, receiver), triton, clock) as (client, app):
        acme, beta = KEYS["acme"], KEYS["beta"]
        fine = await client.post("/v1/emotions", json={"text": FINE, "learner_id": "ada"}, headers=acme)
        assert fine.json()["results"][0]["learning_state"]["intervention_level"] == "none"
        answer = await client.post("/v1/emotions", json={"text": GIVE_UP, "learner_id": "ada"}, headers=acme)
        result = answer.json()["results"][0]
        assert result["learning_state"]["intervention_level"] in ("moderate", "significant", "critical")
        await client.post(
            "/v1/emotions", json={"text": GIVE_UP, "learner_id": "bob"}, headers=beta
        )  # no hook
        await client.post("/v1/emotions", json={"text": GIVE_UP}, headers=acme)  # no learner: nobody to alert
        assert await wait_for_async(lambda: len(receiver.posts) >= 1, WAIT_S)
        metrics = services(app).metrics
        assert await wait_for_async(
            lambda: sample(metrics, "gateway_alerts_total", outcome="sent") == 1, WAIT_S
        )
    assert len(receiver.posts) == 1
    headers, body = receiver.posts[0]
    signed = headers["x-goemotions-timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-goemotions-signature"], expected)
    event = json.loads(body)
    assert event["type"] == "learner.intervention" and event["id"] == headers["x-goemotions-event-id"]
    assert (event["tenant"], event["learner_id"], event["result_id"]) == ("acme", "ada", result["result_id"])
    assert event["intervention_level"] == result["learning_state"]["intervention_level"]
    assert event["signal_labels"] == ["giving_up"] and event["model_version"] == "test-v1"
    assert GIVE_UP not in body.decode()


async def test_a_cool_down_keeps_a_learner_quiet_until_it_passes_or_the_learner_is_erased(
    tmp_path, receiver, triton
):
    clock = FakeClock()
    async with running(settings(tmp_path, receiver, alert_cooldown_s=600), triton, clock) as (client, app):
        acme = KEYS["acme"]
        metrics = services(app).metrics

        async def give_up() -> None:
            body = {"text": GIVE_UP, "learner_id": "ada"}
            assert (await client.post("/v1/emotions", json=body, headers=acme)).status_code == 200

        def sent(n: int) -> Any:
            return wait_for_async(
                lambda: sample(metrics, "gateway_alerts_total", outcome="sent") == n, WAIT_S
            )

        await give_up()
        assert await sent(1)
        await give_up()  # the same level within the cool-down: quiet
        assert await wait_for_async(
            lambda: sample(metrics, "gateway_alerts_total", outcome="suppressed") == 1, WAIT_S
        )
        clock.advance(601)
        await give_up()
        assert await sent(2)
        assert (await client.delete("/v1/learners/ada", headers=acme)).status_code == 200
        await give_up()  # erased: the learner starts afresh
        assert await sent(3)
    assert len(receiver.events()) == 3


async def test_a_failing_receiver_is_retried_then_counted(tmp_path, receiver, triton):
    receiver.statuses = [500, 503]  # then 200
    async with running(settings(tmp_path, receiver), triton, FakeClock()) as (client, app):
        acme = KEYS["acme"]
        await client.post("/v1/emotions", json={"text": GIVE_UP, "learner_id": "ada"}, headers=acme)
        metrics = services(app).metrics
        assert await wait_for_async(
            lambda: sample(metrics, "gateway_alerts_total", outcome="sent") == 1, WAIT_S
        )
        receiver.statuses = [500] * 4  # every attempt fails
        await client.post("/v1/emotions", json={"text": GIVE_UP, "learner_id": "bea"}, headers=acme)
        assert await wait_for_async(
            lambda: sample(metrics, "gateway_alerts_total", outcome="failed") == 1, WAIT_S
        )
    ids = [e["id"] for e in receiver.events()]
    assert len(ids) == 3 + 4 and len(set(ids)) == 2  # each retry is the same event


async def test_one_tenants_failing_receiver_does_not_hold_up_anothers_alerts(tmp_path, receiver, triton):
    receiver.statuses = [500] * 4  # acme's receiver fails every try (waits of 0.5, 1 and 2 s between)
    with contextlib.closing(Receiver()) as other:
        hooked = settings(tmp_path, receiver, beta=other, alert_retry_s=0.5)
        async with running(hooked, triton, FakeClock()) as (client, app):
            metrics = services(app).metrics
            await client.post("/v1/emotions", json={"text": GIVE_UP, "learner_id": "a"}, headers=KEYS["acme"])
            assert await wait_for_async(lambda: len(receiver.posts) == 1, WAIT_S)
            await client.post("/v1/emotions", json={"text": GIVE_UP, "learner_id": "b"}, headers=KEYS["beta"])
            assert await wait_for_async(lambda: len(other.posts) == 1, WAIT_S)
            assert sample(metrics, "gateway_alerts_total", outcome="failed") == 0  # acme's still retrying
            assert await wait_for_async(
                lambda: sample(metrics, "gateway_alerts_total", outcome="failed") == 1, WAIT_S
            )


async def test_what_is_still_queued_for_an_erased_learner_is_not_sent(tmp_path, receiver, triton):
    receiver.statuses = [500] * 4
    async with running(settings(tmp_path, receiver, alert_retry_s=0.5), triton, FakeClock()) as (client, app):
        acme = KEYS["acme"]
        await client.post("/v1/emotions", json={"text": GIVE_UP, "learner_id": "cat"}, headers=acme)
        assert await wait_for_async(lambda: len(receiver.posts) == 1, WAIT_S)  # first try failed
        assert (await client.delete("/v1/learners/cat", headers=acme)).status_code == 200
        metrics = services(app).metrics
        assert await wait_for_async(
            lambda: sample(metrics, "gateway_alerts_total", outcome="erased") == 1, WAIT_S
        )
    assert len(receiver.posts) == 1  # not tried again


async def test_with_the_learner_store_in_redis_two_replicas_alert_a_learner_once(tmp_path, receiver, triton):
    with redis_with(tmp_path, "maxmemory-policy", "noeviction") as url:
        shared = settings(tmp_path, receiver, trajectory_backend="redis", learner_redis_url=url)
        async with running(shared, triton) as (one, app_one), running(shared, triton) as (two, app_two):
            body = {"text": GIVE_UP, "learner_id": "ada"}
            await one.post("/v1/emotions", json=body, headers=KEYS["acme"])
            await two.post("/v1/emotions", json=body, headers=KEYS["acme"])

            def counted(outcome: str) -> float:
                return sum(
                    sample(services(app).metrics, "gateway_alerts_total", outcome=outcome)
                    for app in (app_one, app_two)
                )

            assert await wait_for_async(lambda: counted("sent") + counted("suppressed") == 2, WAIT_S)
            assert (counted("sent"), counted("suppressed")) == (1, 1)
            assert (await two.delete("/v1/learners/ada", headers=KEYS["acme"])).status_code == 200
            await one.post("/v1/emotions", json=body, headers=KEYS["acme"])  # erased: alerted afresh
            assert await wait_for_async(lambda: counted("sent") == 2, WAIT_S)
    assert len(receiver.posts) == 2


async def test_with_its_redis_down_the_cool_down_fails_open(tmp_path, receiver, triton):
    import redis

    with redis_with(tmp_path) as url:
        shared = settings(tmp_path, receiver, trajectory_backend="redis", learner_redis_url=url)
        async with running(shared, triton) as (client, app):
            redis.Redis.from_url(url).shutdown(nosave=True)
            body = {"text": GIVE_UP, "learner_id": "ada"}
            answer = await client.post("/v1/emotions", json=body, headers=KEYS["acme"])
            assert answer.status_code == 200  # without the trend: the learner store is down
            metrics = services(app).metrics
            assert await wait_for_async(
                lambda: sample(metrics, "gateway_alerts_total", outcome="sent") == 1, WAIT_S
            )  # a tutor paged without the cool-down beats one not paged


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"url": "http://lms.example/h", "secret": SECRET}, "https"),
        ({"url": "ftp://x/h", "secret": SECRET}, r"http\(s\) URL"),
        ({"url": "https://lms.example/h", "secret": "short"}, "at least 32"),
        ({"url": "https://lms.example/h", "secret": SECRET, "min_level": "none"}, "min_level"),
        ({"url": "https://lms.example/h", "secret": SECRET, "extra": 1}, "nothing else"),
    ],
)
def test_an_alerts_file_that_is_wrong_says_what(tmp_path, entry, error):
    (tmp_path / "alerts.json").write_text(json.dumps({"acme": entry}))
    with pytest.raises(ValueError, match=error):
        read_hooks(tmp_path / "alerts.json")
    good = {"url": "https://lms.example/h", "secret": SECRET}
    (tmp_path / "alerts.json").write_text(json.dumps({"acme": good}))
    assert read_hooks(tmp_path / "alerts.json")["acme"].min_level == "significant"
    assert make_settings(alerts_file="").alerts_file is None  # an empty variable: no alerts
