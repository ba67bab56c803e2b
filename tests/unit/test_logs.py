"""The request id on log records: the current request's, "-" outside one."""

from __future__ import annotations

import logging

from gateway import logs


def test_a_record_carries_the_current_request_id():
    record = logging.LogRecord("gateway", logging.INFO, __file__, 1, "m", None, None)
    logs.RequestIdFilter().filter(record)
    assert record.request_id == "-"  # type: ignore[attr-defined]
    token = logs.current.set("lms-7f3a")
    try:
        logs.RequestIdFilter().filter(record)
    finally:
        logs.current.reset(token)
    assert record.request_id == "lms-7f3a"  # type: ignore[attr-defined]


def test_only_a_short_plain_id_from_outside_is_used():
    assert logs.request_id("lms-7f3a:2") == "lms-7f3a:2"
    for bad in (None, "", "a b", "x" * 129, "a\nb", "ü"):
        made = logs.request_id(bad)
        assert made != bad and len(made) == 32
