"""WS /v1/emotions/stream under a real uvicorn (in a thread) with a real WebSocket client (`websockets`),
against the fake Triton: frames, errors that keep the connection open, auth, limits, idle close,
trajectory frames, and a clean end when the client leaves mid-message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from pydantic import SecretStr

from gateway.api.stream import QUEUE_FULL
from gateway.backends.triton import InvalidModelOutput
from gateway.errors import GatewayError
from server.probes import wait_for, wait_for_async
from tests.support.fake_triton import WAIT_S, FakeTriton, GatedTriton
from tests.support.gateway import Served, ask, closed_with, make_settings, recv, serve, ws


@pytest.fixture
def triton(label_names: list[str]) -> GatedTriton:
    return GatedTriton(label_names)


@pytest.fixture
def served(triton: GatedTriton) -> Iterator[Served]:
    with serve(make_settings(cache_backend="off"), triton) as s:
        yield s


def post(served: Served, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    import httpx

    # json.dumps, as the stream test sends it (httpx's json= refuses Infinity)
    body = json.dumps(payload)
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(f"{served.http}/v1/emotions", content=body, headers=headers, timeout=WAIT_S)


# ---- frames ------------------------------------------------------------------------------------------


def test_result_frame_is_the_http_answer_for_the_same_text(served):
    with ws(served) as conn:
        frame = ask(conn, {"id": "m-1", "text": "I finally get it!"})
    http = post(served, {"text": "I finally get it!"}).json()
    assert frame["type"] == "result" and frame["id"] == "m-1"
    assert frame["model"] == http["model"] == {"name": "goemotions", "version": "test-v1"}
    # the same answer; each request names its own result (result_id)
    assert frame["result"].pop("result_id") != http["results"][0].pop("result_id")
    assert frame["result"] == http["results"][0]
    assert frame["learner_id"] is None and frame["trend"] is None


def test_result_frames_report_the_version_that_answered(served, triton):
    with ws(served) as conn:
        assert ask(conn, {"text": "before"})["model"]["version"] == "test-v1"
        triton.version = "student-3f2a9c1b7d10-int8"  # swapped behind the gateway's back
        frame = ask(conn, {"text": "after"})
    assert frame["model"]["version"] == "student-3f2a9c1b7d10-int8"


def test_a_message_sent_again_with_its_key_after_a_reconnect_gets_the_first_result(served, triton):
    message = {"id": 1, "text": "I want to give up", "learner_id": "ada", "idempotency_key": "m-ada-1"}
    with ws(served) as conn:
        first = ask(conn, message)
    with ws(served) as conn:  # the client reconnected and resends what it never saw answered
        again = ask(conn, {**message, "id": 7})
        other = ask(conn, {**message, "id": 8, "text": "fine"})
        unkeyed = ask(conn, {"id": 9, "text": "I want to give up", "learner_id": "ada"})
    assert again["replayed"] is True and first["replayed"] is False and again["id"] == 7
    assert {**again, "id": 1, "replayed": False} == first  # the same result_id and trend: one analysis
    assert other["type"] == "error" and (other["status"], other["code"]) == (422, "idempotency_key_reused")
    assert unkeyed["trend"]["points"] == 2 and len(triton.calls) == 2
    # the stream and HTTP keep their keys apart: the same key over HTTP is another request
    http = post(served, {"text": "I want to give up", "learner_id": "ada"}, {"Idempotency-Key": "m-ada-1"})
    assert http.status_code == 422 and http.json()["error"]["code"] == "idempotency_key_reused"


def test_messages_are_answered_in_order_with_their_ids(served):
    ids = [7, "b", None, 0, "last"]
    with ws(served) as conn:
        for i, message_id in enumerate(ids):
            conn.send(json.dumps({"id": message_id, "text": f"message number {i}"}))
        frames = [recv(conn) for _ in ids]
    assert [f["id"] for f in frames] == ids
    assert all(f["type"] == "result" for f in frames)


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "   "},
        {"text": "x" * 5001},
        {"text": "a", "learner_id": "bad id!"},
        {"text": "a", "learner_id": ""},
        {"text": 5},
        {"text": "a", "context": {"recent_error_rate": 2}},
        {"text": "a", "context": {"nope": 1}},
        {"text": "a", "extra": 1},
        {"text": "a", "learner_id": "l", "context": {"time_on_task_seconds": 1e999}},
    ],
)
def test_validation_errors_match_http_and_keep_the_connection_open(served, payload):
    http = post(served, payload)
    assert http.status_code == 422
    with ws(served) as conn:
        error = ask(conn, {"id": "bad", **payload})
        assert error == {
            "type": "error",
            "id": "bad",
            "status": 422,
            "code": "invalid_request",
            "message": http.json()["error"]["message"],
            "retry_after": None,
        }
        assert ask(conn, {"id": "next", "text": "still here"})["type"] == "result"


@pytest.mark.parametrize(
    ("frame", "status", "message"),
    [
        ("{not json", 422, "frame is not valid JSON"),
        ("[1, 2]", 422, "a frame must be a JSON object"),
        ('"text"', 422, "a frame must be a JSON object"),
        (b'{"text": "hi"}', 422, "binary frames are not supported"),
        (json.dumps({"text": "a" * 70_000}), 413, "frame over 65536 bytes"),
        ("[" * 60_000, 422, "frame is not valid JSON"),
        ('{"text": "a", "type": "other"}', 422, "type: Input should be 'message'"),
        ('{"text": "a", "id": true}', 422, "id: Value error, id must be a string"),
        ('{"text": "a", "id": "\\ud800"}', 422, "id: Value error, id contains an invalid unicode character"),
        ('{"id": "x"}', 422, "text: Field required"),
        ('{"text": "\\ud800"}', 422, "invalid unicode character"),
    ],
)
def test_bad_frames_get_error_frames_and_the_connection_stays_open(served, frame, status, message):
    with ws(served) as conn:
        error = ask(conn, frame)
        assert error["type"] == "error" and error["status"] == status, error
        assert message in error["message"]
        assert error["code"] == ("payload_too_large" if status == 413 else "invalid_request")
        assert ask(conn, {"text": "still here"})["type"] == "result"
    assert served.metric("gateway_stream_messages_total", {"outcome": error["code"]}) == 1


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (GatewayError("backend_unavailable", "model server unavailable"), 503),
        (GatewayError("backend_timeout", "model server did not answer in time"), 504),
        (InvalidModelOutput("non_finite", "non-finite probabilities"), 502),
        (RuntimeError("a bug"), 500),
    ],
)
def test_backend_errors_are_frames_and_the_next_message_works(served, triton, failure, status, caplog):
    with ws(served) as conn:
        triton.fail = failure
        error = ask(conn, {"id": 1, "text": "will fail"})
        assert (error["type"], error["id"], error["status"]) == ("error", 1, status)
        if status == 502:
            assert error["code"] == "invalid_model_output" and "was not cached" in error["message"]
        if status == 500:
            assert "a bug" not in error["message"] and "request id" in error["message"]
            assert any("unhandled error in a stream message" in r.message for r in caplog.records)
        triton.fail = None
        assert ask(conn, {"id": 2, "text": "will work"})["type"] == "result"


# ---- auth --------------------------------------------------------------------------------------------


@pytest.fixture
def keyed(triton: GatedTriton) -> Iterator[Served]:
    with serve(
        make_settings(
            api_keys="k-one-0123456789abcdef0123456789abcdef,k-two-0123456789abcdef0123456789abcdef"
        ),
        triton,
    ) as s:
        yield s


@pytest.fixture
def impatient(triton: GatedTriton) -> Iterator[Served]:
    """Auth on, and a short wait for a first-frame key."""
    settings = make_settings(api_keys="k-one-0123456789abcdef0123456789abcdef", stream_auth_timeout_s=0.3)
    with serve(settings, triton) as s:
        yield s


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "k-one-0123456789abcdef0123456789abcdef"},
        {"authorization": "Bearer k-two-0123456789abcdef0123456789abcdef"},
    ],
)
def test_auth_by_handshake_header(keyed, headers):
    with ws(keyed, headers) as conn:
        assert ask(conn, {"text": "hello"})["type"] == "result"


def test_auth_by_first_frame_for_browsers(keyed):
    with ws(keyed) as conn:
        conn.send(json.dumps({"type": "auth", "api_key": "k-two-0123456789abcdef0123456789abcdef"}))
        assert ask(conn, {"id": 1, "text": "hello"})["id"] == 1


@pytest.mark.parametrize(
    ("headers", "first", "reason"),
    [
        ({"x-api-key": "wrong"}, None, "invalid API key"),
        (
            {"authorization": "Bearer k-one-0123456789abcdef0123456789abcdef-and-more"},
            None,
            "invalid API key",
        ),
        ({}, {"type": "auth", "api_key": "wrong"}, "invalid API key"),
        ({}, {"type": "auth", "api_key": "\ud800"}, "invalid API key"),
        ({}, {"type": "auth", "api_key": 5}, "missing API key"),
        ({}, {"text": "no auth first"}, "missing API key"),
        ({}, "not json", "missing API key"),
    ],
)
def test_wrong_or_missing_key_closes_with_1008(keyed, headers, first, reason):
    with ws(keyed, headers) as conn:
        if first is not None:
            conn.send(first if isinstance(first, str) else json.dumps(first))
        code, said = closed_with(conn)
    assert code == 1008 and said.startswith(reason)
    assert keyed.settled("gateway_stream_closes_total", {"reason": "unauthorized"}, 1)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "?api_key=k-one-0123456789abcdef0123456789abcdef&x-api-key=k-one-0123456789abcdef0123456789abcdef&token=k-one-0123456789abcdef0123456789abcdef",
    ],
)
def test_no_key_in_time_closes_with_1008_and_the_url_query_is_not_read(impatient, path):
    with ws(impatient, path=path) as conn:
        assert closed_with(conn) == (1008, "no API key within 0.3 s")
    assert impatient.settled("gateway_stream_closes_total", {"reason": "unauthorized"}, 1)


def test_an_auth_frame_is_ignored_once_authenticated(keyed):
    with ws(keyed, {"x-api-key": "k-one-0123456789abcdef0123456789abcdef"}) as conn:
        conn.send(json.dumps({"type": "auth", "api_key": "anything"}))
        assert ask(conn, {"id": "after", "text": "hello"})["id"] == "after"


def test_origin_outside_the_cors_list_is_refused(triton):
    settings = make_settings(cors_origins="https://app.example")
    with serve(settings, triton) as served:
        with ws(served, {"origin": "https://evil.example"}) as conn:
            assert closed_with(conn) == (1008, "origin not allowed")
        with ws(served, {"origin": "https://app.example"}) as conn:
            assert ask(conn, {"text": "hello"})["type"] == "result"


# ---- limits ------------------------------------------------------------------------------------------


def test_rate_limit_applies_per_message_and_is_shared_with_http(triton):
    settings = make_settings(api_keys="k-0123456789abcdef0123456789abcdef", rate_limit_per_minute=3)
    key = {"x-api-key": "k-0123456789abcdef0123456789abcdef"}
    with serve(settings, triton) as served, ws(served, key) as conn:
        assert [ask(conn, {"id": i, "text": f"t{i}"})["type"] for i in range(2)] == ["result"] * 2
        assert post(served, {"text": "http"}, key).status_code == 200
        error = ask(conn, {"id": "over", "text": "one too many"})
        assert (error["status"], error["code"], error["id"]) == (429, "overloaded", "over")
        assert "rate limit of 3 requests per minute" in error["message"]
        assert 1 <= error["retry_after"] <= 60
        assert ask(conn, {"id": "again", "text": "x"})["id"] == "again"  # still open (still limited)


def test_concurrency_limit_is_shared_with_http(triton):
    triton.gate.clear()
    settings = make_settings(max_concurrency=1, retry_after_s=2)
    with serve(settings, triton) as served, ws(served) as first, ws(served) as second:
        first.send(json.dumps({"id": "a", "text": "holds the only slot"}))
        assert triton.entered.wait(WAIT_S)
        error = ask(second, {"id": "b", "text": "no slot left"})
        assert (error["status"], error["retry_after"]) == (429, 2)
        assert "too many requests in flight" in error["message"]
        triton.gate.set()
        assert recv(first)["id"] == "a"
        assert ask(second, {"id": "c", "text": "a slot again"})["type"] == "result"


def test_queue_is_bounded_and_a_full_queue_drops_with_an_error(triton):
    triton.gate.clear()
    with serve(make_settings(stream_queue_size=2), triton) as served, ws(served) as conn:
        conn.send(json.dumps({"id": "a", "text": "in the worker"}))
        assert triton.entered.wait(WAIT_S)  # "a" has left the queue
        for message_id in ("b", "c", "d"):
            conn.send(json.dumps({"id": message_id, "text": f"queued {message_id}"}))
        dropped = recv(conn)  # at once, while "a" is still held
        assert dropped == {
            "type": "error",
            "id": "d",
            "status": 429,
            "code": "overloaded",
            "message": QUEUE_FULL,
            "retry_after": None,
        }
        triton.gate.set()
        assert [recv(conn)["id"] for _ in range(3)] == ["a", "b", "c"]
        assert ask(conn, {"id": "e", "text": "room again"})["id"] == "e"
    assert served.metric("gateway_stream_messages_total", {"outcome": "queue_full"}) == 1
    assert served.metric("gateway_stream_messages_total", {"outcome": "ok"}) == 4


# ---- idle timeout ------------------------------------------------------------------------------------


def test_idle_connection_is_closed_cleanly(triton):
    with serve(make_settings(stream_idle_timeout_s=1.0), triton) as served:
        with ws(served) as conn:
            assert ask(conn, {"text": "then silence"})["type"] == "result"
            assert closed_with(conn) == (1000, "idle timeout")
        assert served.settled("gateway_stream_closes_total", {"reason": "idle_timeout"}, 1)
        assert served.metric("gateway_stream_connections") == 0


def test_idle_timeout_waits_for_answers_still_owed(triton, caplog):
    caplog.set_level(logging.DEBUG, logger="gateway.api.stream")

    def quiet_periods() -> int:
        return sum("owed an answer: kept open" in r.getMessage() for r in caplog.records)

    triton.gate.clear()
    with serve(make_settings(stream_idle_timeout_s=0.2), triton) as served, ws(served) as conn:
        conn.send(json.dumps({"id": "slow", "text": "a slow answer"}))
        assert triton.entered.wait(WAIT_S)
        # two idle periods pass while the answer is owed, and the connection stays open
        assert wait_for(lambda: quiet_periods() >= 2, WAIT_S, interval_s=0.01), "the idle timer never fired"
        triton.gate.set()
        assert recv(conn)["id"] == "slow"
        assert closed_with(conn) == (1000, "idle timeout")


# ---- trajectory --------------------------------------------------------------------------------------


def test_trajectory_frames_follow_results_when_the_trend_label_changes(served):
    texts = [
        "I love this, it finally makes sense!",
        "This is so confusing and I hate it.",
        "Great, thank you so much!",
        "I give up, this is pointless.",
        "Okay, I think I see it now.",
        "Ugh, wrong again. So annoying.",
        "Wonderful, that worked!",
        "I'm nervous about the test.",
        "Yes! Got it right.",
        "Why is this so hard?",
    ]
    with ws(served) as conn:
        for i, text in enumerate(texts):
            conn.send(json.dumps({"id": i, "text": text, "learner_id": "learner-1"}))
        conn.send(json.dumps({"id": "other", "text": "hello", "learner_id": "learner-2"}))
        conn.send(json.dumps({"id": "anon", "text": "no learner"}))
        frames = []
        while not frames or frames[-1].get("id") != "anon":
            frames.append(recv(conn))
    results = [f for f in frames if f["type"] == "result"]
    assert [f["id"] for f in results] == [*range(len(texts)), "other", "anon"]
    # expected: right after each learner-1 result whose trend label differs from the one before
    expected, seen = [], None
    for r in results[: len(texts)]:
        if r["trend"]["label"] != seen:
            expected.append({"id": r["id"], "previous": seen, "trend": r["trend"]})
            seen = r["trend"]["label"]
    learner_1 = [f for f in frames if f["type"] == "trajectory" and f["learner_id"] == "learner-1"]
    assert [{k: f[k] for k in ("id", "previous", "trend")} for f in learner_1] == expected
    assert expected[0]["previous"] is None and expected[0]["trend"]["label"] == "insufficient_data"
    assert len(expected) >= 2  # the label did change once there were enough points
    for f in learner_1:
        assert frames[frames.index(f) - 1] == next(r for r in results if r["id"] == f["id"])
    other = [f for f in frames if f["type"] == "trajectory" and f["learner_id"] == "learner-2"]
    assert [(f["id"], f["previous"]) for f in other] == [("other", None)]
    assert results[-1]["trend"] is None and frames[-1]["id"] == "anon"


# ---- a client that leaves ----------------------------------------------------------------------------


def test_client_leaving_mid_message_ends_the_connection_without_leaks_or_errors(served, triton, caplog):
    caplog.set_level(logging.WARNING)
    triton.gate.clear()
    with ws(served) as conn:
        conn.send(json.dumps({"id": "a", "text": "answered to nobody"}))
        conn.send(json.dumps({"id": "b", "text": "never started"}))
        assert triton.entered.wait(WAIT_S)
        assert served.metric("gateway_stream_connections") == 1
        assert "stream-worker" in served.task_names()
    triton.gate.set()  # the client has closed: "a" completes with nobody to answer
    assert served.settled("gateway_stream_closes_total", {"reason": "client"}, 1)
    assert served.metric("gateway_stream_connections") == 0
    assert "stream-worker" not in served.task_names()
    assert triton.calls == [["answered to nobody"]]  # the queued message was dropped, not run
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_bug_that_stops_the_worker_closes_the_connection_with_1011(served, monkeypatch, caplog):
    from gateway.api.stream import Connection

    async def broken(self: Connection, job: Any) -> None:
        raise RuntimeError("worker bug")

    monkeypatch.setattr(Connection, "_answer", broken)
    with ws(served) as conn:
        conn.send(json.dumps({"text": "kills the worker"}))
        conn.send(json.dumps({"text": "finds it dead"}))
        assert closed_with(conn)[0] == 1011
    assert served.settled("gateway_stream_closes_total", {"reason": "error"}, 1)
    assert served.metric("gateway_stream_connections") == 0
    assert any("worker bug" in str(r.exc_info) for r in caplog.records if r.exc_info)


def cancel_task(served: Served, name: str) -> None:
    """Cancel the server's task called ``name`` (as a shutdown or a bug elsewhere could)."""

    async def cancel() -> None:
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == name]
        task.cancel()

    asyncio.run_coroutine_threadsafe(cancel(), served.loop).result(WAIT_S)


def test_a_cancelled_worker_closes_the_connection_instead_of_queueing_frames_forever(served, triton):
    triton.gate.clear()
    with ws(served) as conn:
        conn.send(json.dumps({"id": "a", "text": "in hand when the worker is cancelled"}))
        assert triton.entered.wait(WAIT_S)
        conn.send(json.dumps({"id": "b", "text": "queued behind it"}))
        cancel_task(served, "stream-worker")
        code, reason = closed_with(conn)  # not silence: nobody would ever answer "b"
    triton.gate.set()
    assert code == 1011 and "stopped" in reason
    assert served.settled("gateway_stream_closes_total", {"reason": "error"}, 1)
    assert served.metric("gateway_stream_connections") == 0
    assert wait_for(lambda: "stream-receiver" not in served.task_names(), WAIT_S)


def test_each_stream_message_is_recorded_in_the_audit_trail(triton, tmp_path):
    settings = make_settings(audit_backend="sqlite", audit_sqlite_path=tmp_path / "audit.sqlite3")
    settings = settings.model_copy(update={"audit_hash_key": SecretStr("stream-test-audit-key")})
    with serve(settings, triton) as s:
        with ws(s) as conn:
            assert ask(conn, {"text": "I am lost", "learner_id": "l-ws"})["type"] == "result"
            assert recv(conn)["type"] == "trajectory"  # the learner's first trend
            assert ask(conn, {"text": ""})["type"] == "error"  # not answered, so not recorded
            assert ask(conn, {"text": "got it now", "learner_id": "l-ws"})["type"] == "result"
        import httpx

        history = httpx.get(f"{s.http}/v1/learners/l-ws/history", timeout=WAIT_S).json()
    entries = history["entries"]
    assert [e["channel"] for e in entries] == ["ws", "ws"]
    assert all(e["text_hash"] and e["text"] is None for e in entries)


def test_the_stream_client_example_runs(triton):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "clients" / "stream_client.py"
    settings = make_settings(api_keys="client-key-0123456789abcdef0123456789abcdef")
    with serve(settings, triton) as s:
        out = subprocess.run(
            [
                *(
                    sys.executable,
                    str(script),
                    "--url",
                    s.url,
                    "--api-key",
                    "client-key-0123456789abcdef0123456789abcdef",
                ),
                *("--learner", "l-cli", "I don't get fractions.", "", "Oh wait, now it clicks!"),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    frames = [json.loads(line) for line in out.splitlines()]
    answers = [f for f in frames if f["type"] != "trajectory"]
    assert [(f["type"], f["id"]) for f in answers] == [("result", 0), ("error", 1), ("result", 2)]
    assert answers[1]["status"] == 422
    trajectory = [f for f in frames if f["type"] == "trajectory"]
    assert trajectory and trajectory[0]["previous"] is None and trajectory[0]["learner_id"] == "l-cli"


class SecondHeld(FakeTriton):
    """Answers at once, except ``second``: that call waits (in a thread, the gateway's loop runs on) until
    ``release`` is set, after setting ``entered``."""

    def __init__(self, names: list[str], second: str) -> None:
        super().__init__(names)
        self.second = second
        self.entered_second = threading.Event()
        self.release = threading.Event()

    async def infer(self, texts: list[str]) -> list[Any]:
        if texts == [self.second]:
            self.entered_second.set()
            await asyncio.to_thread(self.release.wait, WAIT_S)
        return await super().infer(texts)


def test_the_stream_client_resends_what_a_dropped_connection_left_unanswered(label_names):
    """The connection drops while the gateway analyses the second message: the client reconnects and
    sends it again with its key, and gets the first analysis back, not a second one."""
    from clients.stream_client import session

    texts = ["I don't get fractions.", "I want to give up"]
    triton = SecondHeld(label_names, texts[1])
    connections: list[int] = []

    @contextlib.asynccontextmanager
    async def connect(url: str, **kwargs: Any) -> AsyncIterator[Any]:
        async with websockets.connect(url, **kwargs) as ws:
            connections.append(1)
            if len(connections) > 1:
                yield ws
                return
            real_recv = ws.recv

            async def recv() -> Any:  # the first connection drops once the second message is in Triton
                raw = await real_recv()
                if json.loads(raw)["type"] == "result":
                    await asyncio.to_thread(triton.entered_second.wait, WAIT_S)
                    await ws.close()
                    triton.release.set()
                return raw

            ws.recv = recv
            yield ws

    with serve(make_settings(cache_backend="off"), triton) as s:

        async def sleep(_: float) -> None:  # back-off: until the lost answer is kept (both keyed: 2)
            kept = {"outcome": "first"}
            assert await wait_for_async(
                lambda: s.metric("gateway_idempotent_requests_total", kept) == 2, WAIT_S
            )

        frames = asyncio.run(session(s.url, texts, "l-drop", None, connect=connect, sleep=sleep))
        replayed = s.metric("gateway_idempotent_requests_total", {"outcome": "replayed"})
    results = [f for f in frames if f["type"] == "result"]
    assert [(f["id"], f["replayed"]) for f in results] == [(0, False), (1, True)]
    assert len(connections) == 2 and replayed == 1
    assert results[1]["trend"]["points"] == 2  # the learner's second point: analysed once
    assert [t for t in triton.calls if t == [texts[1]]] == [[texts[1]]]
