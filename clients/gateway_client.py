"""A Python client of the gateway's HTTP API that retries safely: what a learning platform's backend calls.

    python clients/gateway_client.py --learner learner-42 "I don't get fractions." "Oh wait, now it clicks!"
    python clients/gateway_client.py --url https://emotions.example.org --api-key "$KEY" "..."
    python clients/gateway_client.py --file posts.txt > answers.jsonl  # one text a line, 32 a request

    from clients.gateway_client import GatewayClient
    with GatewayClient("http://127.0.0.1:8080", api_key=key) as gateway:
        answer = gateway.analyse(["I want to give up"], learner_id="learner-42")

Every POST carries an ``Idempotency-Key`` (a new UUID per call, the same on each of its retries), so a
retry after a timeout or a dropped connection gets the first answer instead of a second trajectory point,
audit row or outcome (docs/api.md, "Retries and Idempotency-Key"). Retried: 409 ``request_in_progress``,
429, 502, 503 and 504 (waiting ``Retry-After`` when the gateway sends one, else an exponential back-off with
jitter) and transport errors (connect, read timeout, connection closed), within ``Retry.attempts`` tries
and ``Retry.deadline_s`` seconds. Any other 4xx is the caller's to fix: raised at once as ``GatewayError``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({409, 429, 502, 503, 504})
MAX_TEXTS = 32  # the gateway's default GATEWAY_MAX_TEXTS


@dataclass(frozen=True)
class Retry:
    """How long to keep trying: ``attempts`` tries in all, none started after ``deadline_s``; waits of
    ``Retry-After`` (at most ``max_wait_s``) or a jittered ``base_s * 2**n`` (at most ``max_wait_s``)."""

    attempts: int = 5
    deadline_s: float = 30.0
    base_s: float = 0.2
    max_wait_s: float = 10.0

    def wait_s(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_wait_s)
        return rng.uniform(0, min(self.base_s * 2**attempt, self.max_wait_s))  # "full jitter"


class GatewayError(Exception):
    """An error answer (``status``, the gateway's ``code`` and ``message``), or no answer at all (``status``
    0, ``code`` ``"unreachable"``) once the retries are spent."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            f"{status} {code}: {message}" + (f" (request id {request_id})" if request_id else "")
        )
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id  # the gateway's X-Request-ID: what its logs are searched by

    @classmethod
    def of(cls, response: httpx.Response) -> GatewayError:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "unexpected_response", response.text[:200]
        headers = response.headers
        return cls(
            response.status_code, code, message, headers.get("retry-after"), headers.get("x-request-id")
        )


class GatewayClient:
    """One connection pool to one gateway. ``transport``, ``sleep``, ``clock`` and ``rng`` are for tests."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        retry: Retry | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)
        self.retry = retry or Retry()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the routes -------------------------------------------------------------------------------

    def analyse(
        self,
        texts: str | Sequence[str],
        learner_id: str | None = None,
        context: Mapping[str, float | int] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/emotions`` for one text or up to the gateway's limit (32 by default): its answer."""
        body: dict[str, Any] = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
        if learner_id is not None:
            body["learner_id"] = learner_id
        if context:
            body["context"] = dict(context)
        return self._call("POST", "/v1/emotions", body)

    def analyse_in_batches(
        self,
        texts: Sequence[str],
        learner_id: str | None = None,
        context: Mapping[str, float | int] | None = None,
        batch_size: int = MAX_TEXTS,
    ) -> Iterator[dict[str, Any]]:
        """Any number of texts, ``batch_size`` per request, in order: each request's answer (each names
        the model that produced it: a model swap between two batches shows)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(texts), batch_size):
            yield self.analyse(texts[start : start + batch_size], learner_id, context)

    def report_outcome(
        self, result_id: str, learner_id: str, outcome: str, label: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/outcomes``: what happened after the analysed text ``result_id``."""
        body = {"result_id": result_id, "learner_id": learner_id, "outcome": outcome}
        if label is not None:
            body["label"] = label
        return self._call("POST", "/v1/outcomes", body)

    def trajectory(self, learner_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/learners/{learner_id}/trajectory")

    def erase(self, learner_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/learners/{learner_id}")

    # --- one call, retried ------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # one key for every try of this call: the gateway answers a retry with the first answer
        headers = {"Idempotency-Key": uuid.uuid4().hex} if method == "POST" else {}
        give_up_at = self._clock() + self.retry.deadline_s
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self._http.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                failure = GatewayError(0, "unreachable", f"{type(exc).__name__}: {exc}")
                retry_after = None
            else:
                if response.is_success:
                    answer: dict[str, Any] = response.json()
                    return answer
                failure = GatewayError.of(response)
                if response.status_code not in RETRIED_STATUSES:
                    raise failure
                retry_after = failure.retry_after
            wait = self.retry.wait_s(attempt, retry_after, self._rng)
            if last or self._clock() + wait > give_up_at:
                raise failure
            log.info("%s %s: %s; retrying in %.2f s", method, path, failure, wait)
            self._sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="*", help="texts to analyse (or --file)")
    parser.add_argument(
        "--file", type=argparse.FileType("r", encoding="utf-8"), help="one text per line ('-': stdin)"
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--learner", default=None, help="the learner id (extends their trajectory)")
    parser.add_argument("--attempts", type=int, default=Retry.attempts)
    args = parser.parse_args()
    texts = list(args.texts)
    if args.file is not None:
        texts += [line.rstrip("\r\n") for line in args.file if line.strip()]
    if not texts:
        parser.error("give texts, or --file")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with GatewayClient(args.url, args.api_key, retry=Retry(attempts=args.attempts)) as gateway:
        try:
            for answer in gateway.analyse_in_batches(texts, args.learner):
                sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
        except GatewayError as exc:
            log.error("%s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
