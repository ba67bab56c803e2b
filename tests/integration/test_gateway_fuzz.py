"""Property-based fuzzing of the gateway API (hypothesis), in-process against the fake Triton.

The property, for any request: 200 with a correct body (one result per text, in order, the fake's
probabilities for the normalized text, labels consistent with them) or a 4xx whose body is
``{"error": {"code", "message"}}`` with a non-empty message; never a 5xx, never a hang. After each test's
fuzzing the same app must still answer a normal request.

Each test starts the app once (on a dedicated event loop in a thread, so a request that never answers
fails the test instead of hanging it) and reuses it for every example. Every example is counted; the
totals per test go to ``build/fuzz_counts.json`` (merged with other fuzz modules' totals).

Known gateway bugs (5xx on inputs pydantic accepts) are tolerated by the broad properties only for the
inputs they cover (``known_bug``; none open now), and the fixed ones are regression tests at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.api.schemas import EmotionsRequest
from gateway.settings import Settings
from tests.support.fake_triton import FakeTriton, expected_primary
from tests.support.fuzz import (
    JSON_TYPES,
    OTHER_TYPES,
    FuzzTally,
    case_name,
    content_types,
    encode,
    fuzz,
    json_values,
    letters,
    mixed_text,
    mutated_requests,
    normalized,
    raw_bodies,
    requests_like,
    valid_requests,
)
from tests.support.gateway import gateway

REQUEST_TIMEOUT_S = 20.0  # generous for a loaded 2-core machine; a real hang never answers
BODY_LIMIT = 64 * 1024  # the fuzzed app's max_body_bytes: big inputs cross it without costing much
SMALL_BODY_LIMIT = 4096  # for the over-the-limit test
READINESS = {"ready_to_learn", "engaged_struggle", "needs_support", "disengaged", "overwhelmed"}
LEVELS = {"none", "preventive", "mild", "moderate", "significant", "critical"}
TRENDS = {"improving", "stable", "declining", "volatile", "recovering", "insufficient_data"}

TALLY = FuzzTally()
CASES, KNOWN_BUG_CASES, STATUSES, SECONDS = TALLY.cases, TALLY.known_bug_cases, TALLY.statuses, TALLY.seconds


@pytest.fixture(scope="module", autouse=True)
def _fuzz_counts() -> Iterator[None]:
    yield
    TALLY.write()


# --------------------------------------------------------------------------------------------------
# The app, started once per test on its own event loop


class LiveGateway:
    """The gateway app + fake Triton, serving from a dedicated event loop thread."""

    def __init__(self, settings_: Settings, fake: FakeTriton, name: str) -> None:
        self.fake = fake
        self.statuses = STATUSES.setdefault(name, Counter())  # every fuzzed response's status
        self.client: httpx.AsyncClient | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-gateway", daemon=True)
        self.thread.start()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(settings_), self.loop)
        if not self._started.wait(30):
            raise RuntimeError("the gateway did not start within 30 s")
        if self._serving.done():
            self._serving.result()  # start-up failed: raise its error

    async def _serve(self, settings_: Settings) -> None:
        # The lifespan and the client live in one task: entered and exited in the same task.
        self._stop = asyncio.Event()
        try:
            async with gateway(settings_, self.fake) as client:
                self.client = client
                self._started.set()
                await self._stop.wait()
        finally:
            self._started.set()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = REQUEST_TIMEOUT_S) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"the gateway did not answer within {timeout:g} s (hang)") from None

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        assert self.client is not None
        response: httpx.Response = self.run(self.client.request(method, url, **kwargs))
        self.statuses[response.status_code] += 1
        return response

    def post(self, **kwargs: Any) -> httpx.Response:
        return self.request("POST", "/v1/emotions", **kwargs)

    def assert_still_serves(self, names: list[str], headers: dict[str, str] | None = None) -> None:
        """After the fuzzing: a normal request still gets a correct answer, and health is ok."""
        text = "Still here after the fuzzing? I finally get it!"
        self.statuses = Counter()  # not counted with the fuzzed requests
        r = self.post(json={"texts": [text, "and one more"], "learner_id": "after-fuzz"}, headers=headers)
        assert r.status_code == 200, r.text
        check_ok(r, {"texts": [text, "and one more"], "learner_id": "after-fuzz"}, names)
        assert self.request("GET", "/healthz").json() == {"status": "ok"}
        assert self.request("GET", "/readyz").status_code == 200

    def close(self) -> None:
        try:
            if self._stop is not None:
                self.loop.call_soon_threadsafe(self._stop.set)
            self._serving.result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


@pytest.fixture
def start_gateway(
    request: pytest.FixtureRequest, label_names: list[str]
) -> Iterator[Callable[..., LiveGateway]]:
    started: list[LiveGateway] = []

    def start(**overrides: Any) -> LiveGateway:
        options = {"max_body_bytes": BODY_LIMIT, **overrides}
        live = LiveGateway(
            Settings(_env_file=None, **options),
            FakeTriton(label_names),
            case_name(request),
        )
        started.append(live)
        return live

    yield start
    for live in started:
        live.close()


# --------------------------------------------------------------------------------------------------
# The oracle


def known_bug(payload: Any) -> str | None:
    """A known gateway bug a request can trigger (a 5xx it may get), or None. None are open: the two the
    fuzzing found (infinite time on task, a 310-digit error count) are fixed and kept as tests below."""
    return None


def model_accepts(payload: Any) -> bool:
    try:
        EmotionsRequest.model_validate(payload)
    except ValueError:
        return False
    return True


def check_error(r: httpx.Response) -> dict[str, str]:
    """A 4xx in the gateway's one error format, with a message."""
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"code", "message"}, err
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    return err


def check_ok(r: httpx.Response, payload: dict[str, Any], names: list[str]) -> None:
    """A 200 whose body is right for the request's texts."""
    assert r.status_code == 200, r.text[:500]
    assert isinstance(payload, dict)
    texts = [payload["text"]] if payload.get("text") is not None else payload["texts"]
    body = r.json()
    assert body["model"] == {"name": "goemotions", "version": "test-v1"}
    results = body["results"]
    assert len(results) == len(texts)
    fake = FakeTriton(names)
    for i, (text, result) in enumerate(zip(texts, results, strict=True)):
        assert result["text_index"] == i
        probs = fake.probabilities(normalized(text))
        assert list(result["emotions"]) == names
        assert list(result["emotions"].values()) == probs
        assert all(0.0 <= p <= 1.0 for p in result["emotions"].values())
        assert result["labels"] == [n for n, p in zip(names, probs, strict=True) if p >= 0.5]
        primary, confidence = expected_primary(names, probs, result["labels"])
        assert result["primary_emotion"] == primary and result["confidence"] == confidence
        assert isinstance(result["cached"], bool)
        state = result["learning_state"]
        assert all(0.0 <= v <= 1.0 for v in state["learning_emotions"].values())
        for dim in ("valence", "arousal", "dominance"):
            assert 0.0 <= state[dim] <= 1.0
        assert state["readiness"]["state"] in READINESS
        assert 0.0 <= state["readiness"]["score"] <= 1.0
        assert state["intervention_level"] in LEVELS
        assert isinstance(state["reasons"], list)
    # one answer per distinct normalized text: duplicates agree on `cached` too
    by_text: dict[str, bool] = {}
    for text, result in zip(texts, results, strict=True):
        assert by_text.setdefault(normalized(text), result["cached"]) == result["cached"]
    assert r.headers["x-cache"] == ("hit" if all(x["cached"] for x in results) else "miss")
    assert body["learner_id"] == payload.get("learner_id")
    if payload.get("learner_id") is None:
        assert body["trend"] is None
    else:
        assert body["trend"]["label"] in TRENDS


def check_any(
    r: httpx.Response, payload: Any, names: list[str], fake: FakeTriton, calls_before: int, name: str
) -> None:
    """The property for any request: a correct 200 or a well-formed 4xx; a 5xx only for a known bug."""
    if r.status_code >= 500:
        bug = known_bug(payload)
        assert bug is not None, f"{r.status_code} for {payload!r:.300}: {r.text[:300]}"
        assert r.status_code == 500 and check_500(r)
        KNOWN_BUG_CASES[name] += 1
        return
    if r.status_code == 200:
        check_ok(r, payload, names)
        for call in fake.calls[calls_before:]:  # Triton gets normalized texts, each once per call
            assert all(t == normalized(t) and t for t in call)
            assert len(set(call)) == len(call)
    else:
        check_error(r)
        assert fake.calls[calls_before:] == []  # invalid input never reaches Triton


def check_500(r: httpx.Response) -> bool:
    body = r.json()
    return body["error"]["code"] == "internal_error" and "request id" in body["error"]["message"]


def parsed(body: bytes) -> Any:
    """The JSON the gateway sees (Starlette parses bytes with json.loads), or None when not JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


# --------------------------------------------------------------------------------------------------
# Strategies

# --------------------------------------------------------------------------------------------------
# Properties


def test_valid_requests_get_correct_answers(request, start_gateway, label_names):
    """Every valid request (texts with emoji, RTL, combining marks, NUL and other control characters,
    outer whitespace, up to 5,000 characters; 1..32 texts; optional learner and context) is a 200 whose
    results are the fake's probabilities for each normalized text, in order."""
    name = case_name(request)
    live = start_gateway(max_body_bytes=1_000_000)
    started = time.perf_counter()

    @fuzz(400)
    @given(payload=valid_requests, ascii_only=st.booleans())
    def prop(payload, ascii_only):
        CASES[name] += 1
        calls_before = len(live.fake.calls)
        r = live.post(content=encode(payload, ascii_only), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text[:500]
        check_any(r, payload, label_names, live.fake, calls_before, name)

    prop()
    SECONDS[name] = time.perf_counter() - started
    live.assert_still_serves(label_names)


def test_any_json_request_is_a_correct_200_or_a_clean_4xx(request, start_gateway, label_names):
    """Arbitrary JSON values and request-shaped objects with wrong types for text/texts/learner_id/context
    (huge ints, floats, lone surrogates, 0..100 texts, 20k-character strings, extra keys)."""
    name = case_name(request)
    live = start_gateway()
    started = time.perf_counter()

    @fuzz(1500)
    @given(payload=st.one_of(json_values, requests_like, mutated_requests()), ascii_only=st.booleans())
    def prop(payload, ascii_only):
        CASES[name] += 1
        calls_before = len(live.fake.calls)
        body = encode(payload, ascii_only)
        r = live.post(content=body, headers={"content-type": "application/json"})
        if len(body) > BODY_LIMIT:
            assert r.status_code == 413
        check_any(r, parsed(body), label_names, live.fake, calls_before, name)

    prop()
    SECONDS[name] = time.perf_counter() - started
    live.assert_still_serves(label_names)


def test_raw_bodies_are_a_correct_200_or_a_clean_4xx(request, start_gateway, label_names):
    """Raw bytes: invalid UTF-8, deep nesting (50..5000 levels), NaN/Infinity/huge numbers, escaped and
    surrogate-pass lone surrogates, corrupted and truncated JSON, UTF-16/32 and BOM encodings."""
    name = case_name(request)
    live = start_gateway()
    started = time.perf_counter()

    @fuzz(1500)
    @given(body=raw_bodies)
    def prop(body):
        CASES[name] += 1
        calls_before = len(live.fake.calls)
        r = live.post(content=body, headers={"content-type": "application/json"})
        payload = parsed(body)
        if payload is None:
            assert r.status_code != 200, "the gateway accepted a body json.loads rejects"
        check_any(r, payload, label_names, live.fake, calls_before, name)

    prop()
    SECONDS[name] = time.perf_counter() - started
    live.assert_still_serves(label_names)


def test_content_types_and_empty_bodies(request, start_gateway, label_names):
    """Any content-type header (or none) with a valid, empty or arbitrary body."""
    name = case_name(request)
    live = start_gateway()
    started = time.perf_counter()

    @fuzz(300)
    @given(
        content_type=content_types,
        body=st.one_of(
            st.builds(encode, valid_requests, st.booleans()),
            st.just(b""),
            st.binary(max_size=100),
            raw_bodies,
        ),
    )
    def prop(content_type, body):
        CASES[name] += 1
        calls_before = len(live.fake.calls)
        headers = {} if content_type is None else {"content-type": content_type}
        r = live.post(content=body, headers=headers)
        payload = parsed(body)
        if len(body) > BODY_LIMIT:
            assert r.status_code == 413
        elif not body or content_type in OTHER_TYPES:
            assert r.status_code == 422  # nothing, or not JSON: the body is never read as a request
        elif (
            (content_type in JSON_TYPES or content_type is None)
            and payload is not None
            and not known_bug(payload)
        ):
            # the model rejects it: 422; it accepts it: 200, or 422 for a text over the limits
            assert r.status_code in ((200, 422) if model_accepts(payload) else (422,))
        if r.status_code == 200:
            assert content_type is None or content_type in JSON_TYPES or "json" in content_type.lower()
        check_any(r, payload, label_names, live.fake, calls_before, name)

    prop()
    SECONDS[name] = time.perf_counter() - started
    live.assert_still_serves(label_names)


def test_bodies_around_the_size_limit(request, start_gateway, label_names):
    """Bodies on both sides of max_body_bytes, with Content-Length or streamed in chunks: over the limit
    is a 413 in the error format, at or under it is answered normally."""
    name = case_name(request)
    live = start_gateway(max_body_bytes=SMALL_BODY_LIMIT)
    started = time.perf_counter()

    @fuzz(200)
    @given(
        size=st.integers(0, 3 * SMALL_BODY_LIMIT) | st.integers(SMALL_BODY_LIMIT - 8, SMALL_BODY_LIMIT + 8),
        unit=st.sampled_from(["x", "é", "😀", "ab ", "\x00"]),
        chunk=st.none() | st.integers(1, 3000),
    )
    def prop(size, unit, chunk):
        CASES[name] += 1
        calls_before = len(live.fake.calls)
        prefix, suffix = b'{"text":"', b'"}'
        fill = json.dumps(unit * size)[1:-1].encode()
        body = (prefix + fill)[: max(size, len(prefix))] + suffix if size else prefix + suffix
        if chunk is None:
            r = live.post(content=body, headers={"content-type": "application/json"})
        else:
            pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]

            async def stream() -> AsyncIterator[bytes]:
                for piece in pieces:
                    yield piece

            r = live.post(content=stream(), headers={"content-type": "application/json"})
        if len(body) > SMALL_BODY_LIMIT:
            assert r.status_code == 413 and check_error(r)["code"] == "payload_too_large"
        else:
            assert r.status_code != 413
        check_any(r, parsed(body), label_names, live.fake, calls_before, name)

    prop()
    SECONDS[name] = time.perf_counter() - started
    live.assert_still_serves(label_names)


def test_trajectory_for_any_learner_id(request, start_gateway, label_names):
    """GET /v1/learners/{id}/trajectory with any id (percent-encoded, surrogates, slashes, dots, NUL)."""
    name = case_name(request)
    live = start_gateway()
    started = time.perf_counter()

    @fuzz(300)
    @given(learner=mixed_text(300) | st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True))
    @example(learner="0" * 128)  # the longest valid id
    @example(learner="0" * 129)  # one too long: 422, not a lookup
    def prop(learner):
        CASES[name] += 1
        r = live.request("GET", f"/v1/learners/{quote(learner, safe='', errors='surrogatepass')}/trajectory")
        assert r.status_code < 500, r.text[:300]
        if r.status_code == 200:
            body = r.json()
            assert isinstance(body["learner_id"], str) and isinstance(body["points"], list)
            assert body["trend"]["label"] in TRENDS
        else:
            check_error(r)
        if 0 < len(learner) <= 128 and all(c.isascii() and (c.isalnum() or c in "_-") for c in learner):
            # a valid id (1-128 characters of the learner-id rule) with nothing recorded (this gateway's one tenant)
            assert r.status_code == 404 and check_error(r)["code"] == "not_found", r.text[:300]

    prop()
    SECONDS[name] = time.perf_counter() - started
    live.assert_still_serves(label_names)


def test_api_key_headers(request, start_gateway, label_names):
    """With API keys configured: any X-API-Key / Authorization header is a 200 or a clean 401."""
    name = case_name(request)
    keys = ["k-one-0123456789abcdef0123456789abcdef", "k-two-0123456789abcdef0123456789abcdef"]
    live = start_gateway(api_keys=",".join(keys))
    started = time.perf_counter()
    header_value = st.one_of(
        st.sampled_from(keys),
        st.sampled_from(keys).map(lambda k: f"Bearer {k}"),
        st.sampled_from(keys).map(lambda k: f"bEaReR   {k}  "),
        st.text(letters, max_size=40),
        st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
    )

    @fuzz(200)
    @given(api_key=st.none() | header_value, auth=st.none() | header_value)
    def prop(api_key, auth):
        CASES[name] += 1
        headers = {k: v for k, v in (("x-api-key", api_key), ("authorization", auth)) if v is not None}
        r = live.post(json={"text": "who am I?"}, headers=headers)
        assert r.status_code in (200, 401), r.text[:300]
        if api_key in keys or (not api_key and auth in [f"Bearer {k}" for k in keys]):
            assert r.status_code == 200
        if not any(
            k.encode() in (v if isinstance(v, bytes) else v.encode()) for v in headers.values() for k in keys
        ):
            assert r.status_code == 401 and check_error(r)["code"] == "unauthorized"
        if r.status_code == 200:
            check_ok(r, {"text": "who am I?"}, label_names)

    prop()
    SECONDS[name] = time.perf_counter() - started
    live.assert_still_serves(label_names, headers={"x-api-key": keys[0]})


# --------------------------------------------------------------------------------------------------
# Bugs the fuzzing found (minimal inputs that used to get a 500), kept as regression tests.


@pytest.mark.parametrize(
    "body",
    [
        b'{"text":"a","context":{"time_on_task_seconds":1e999}}',
        b'{"text":"a","context":{"time_on_task_seconds":Infinity}}',
        b'{"text":"a","context":{"time_on_task_seconds":"inf"}}',
    ],
)
def test_bug_infinite_time_on_task_is_a_422(start_gateway, body):
    r = start_gateway().post(content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, f"{r.status_code} {r.text}"
    assert "time_on_task_seconds" in check_error(r)["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"text":"a","context":{"consecutive_errors":1' + b"0" * 309 + b"}}",
        b'{"text":"a","context":{"consecutive_errors":"1' + b"0" * 309 + b'"}}',
    ],
)
def test_bug_huge_consecutive_errors_is_a_422(start_gateway, body):
    r = start_gateway().post(content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, f"{r.status_code} {r.text}"
    assert "consecutive_errors" in check_error(r)["message"]
