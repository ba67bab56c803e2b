"""Property-based fuzzing of WS /v1/emotions/stream (hypothesis), one real connection under uvicorn
against the fake Triton: any frame (arbitrary JSON, request-shaped objects with wrong types, raw bytes,
invalid UTF-8 as binary frames) gets a result frame or an error frame with a 4xx status and a reason,
never a 5xx, and the same connection stays open for the next frame. Counts go to
``build/fuzz_counts.json`` with the HTTP fuzzers' totals."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fake_triton import FakeTriton
from tests.support.fuzz import (
    FuzzTally,
    case_name,
    encode,
    fuzz,
    json_values,
    mutated_requests,
    raw_bodies,
    requests_like,
    valid_context,
    valid_text,
)
from tests.support.gateway import make_settings, recv, serve, ws

TALLY = FuzzTally()
CASES, STATUSES, SECONDS = TALLY.cases, TALLY.statuses, TALLY.seconds


@pytest.fixture(scope="module", autouse=True)
def _fuzz_counts() -> Iterator[None]:
    yield
    TALLY.write()


class Valid(str):
    """A frame that must get a result."""


def as_frame(body: bytes) -> str | bytes:
    """A text frame when the bytes are UTF-8 (as a client would send them), else a binary frame."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


frames = st.one_of(
    st.builds(encode, st.one_of(json_values, requests_like, mutated_requests()), st.booleans()),
    raw_bodies,
).map(as_frame)


# Messages the stream must answer with a result: one valid text (emoji, RTL, control characters, up to
# 5,000 characters), optional learner, context and id.
valid_messages = st.builds(
    lambda text, extra: {"text": text, **extra},
    valid_text(5000),
    st.fixed_dictionaries(
        {},
        optional={
            "learner_id": st.from_regex(r"[A-Za-z0-9_.:@-]{1,128}", fullmatch=True),
            "context": valid_context,
            "id": st.text(max_size=40) | st.integers(-(2**53), 2**53),
        },
    ),
)


def answer(conn: Any) -> dict[str, Any]:
    """The next result or error frame (trajectory frames follow results; skip them)."""
    while True:
        frame = recv(conn)
        if frame["type"] != "trajectory":
            return frame


def test_any_frame_is_a_result_or_a_clean_4xx_and_the_connection_stays_open(request, label_names):
    name = case_name(request)
    statuses = STATUSES.setdefault(name, Counter())
    started = time.perf_counter()
    # The default frame limit (64 KiB) holds any valid message: 5,000 characters escaped as at most
    # 12 bytes each (an astral character as two \u escapes) plus the other fields.
    settings = make_settings(cache_backend="off")
    with serve(settings, FakeTriton(label_names)) as served, ws(served) as conn:

        @fuzz(1000)
        @given(frame=frames | st.builds(encode, valid_messages, st.booleans()).map(as_frame).map(Valid))
        def prop(frame: str | bytes) -> None:
            CASES[name] += 1
            conn.send(str(frame) if isinstance(frame, Valid) else frame)
            reply = answer(conn)
            if isinstance(frame, Valid):
                assert reply["type"] == "result", reply
            if reply["type"] == "result":
                statuses[200] += 1
                assert len(reply["result"]["emotions"]) == 28
                return
            statuses[reply["status"]] += 1
            assert reply["type"] == "error", reply
            assert 400 <= reply["status"] < 500 and reply["message"], reply
            if isinstance(frame, bytes):
                assert reply["status"] == 422 and "binary frames" in reply["message"]
            elif len(frame.encode()) > settings.stream_max_message_bytes:
                assert reply["status"] == 413

        prop()
        conn.send(json.dumps({"id": "after", "text": "still there?"}))
        final = answer(conn)
        assert final["type"] == "result" and final["id"] == "after"
    SECONDS[name] = time.perf_counter() - started
    assert sum(statuses.values()) == CASES[name]
