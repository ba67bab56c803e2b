"""The request id every log line of a request carries: the caller's ``X-Request-ID`` when it is a usable
one, else a new one; answered in the response's ``X-Request-ID`` (``gateway.api.middleware.RequestId``).
A platform that sends its own id finds the gateway's log lines (and a 500's message) under it."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

HEADER = "x-request-id"
# what an id from outside may be: short, and nothing that could forge a log line or a header
USABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
NONE = "-"

current: ContextVar[str] = ContextVar("request_id", default=NONE)


def request_id(given: str | None) -> str:
    """The caller's id when usable, else a new one (32 hex)."""
    return given if given is not None and USABLE.fullmatch(given) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record as ``request_id`` ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True


def configure(level: int = logging.INFO) -> None:
    """The gateway process's logging: one line per record, with the request id."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
