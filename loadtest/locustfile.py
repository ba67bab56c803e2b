"""Locust load test for capacity planning: the gateway (HTTP) and Triton's ensemble (native gRPC).

    locust -f loadtest/locustfile.py --config loadtest/locust.conf --tags gateway
    make loadtest        # starts what is missing, runs the step shape per path, writes the report

Tags pick a path: ``gateway`` (single texts and batches, a share of repeats, optional learners),
``gateway-hit`` (a small hot set: cache hits), ``grpc`` (the power-user path, tritonclient),
``stream`` (``WS /v1/emotions/stream``: one WebSocket per user, a learner's messages one by one).
Every response is checked (shape, 28 probabilities, labels, learning state): a wrong answer is a
failure, not just a transport error. SLO options set the exit code, so a run can gate a deployment.
"""

from __future__ import annotations

# gevent-friendly gRPC must be set up before any channel exists (else each call blocks the hub and
# N users act as one). See ../shared/notes/dependencies.md, "Locust + tritonclient.grpc".
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import websocket  # noqa: E402  (websocket-client: plain sockets, which gevent patches)
from locust import FastHttpUser, LoadTestShape, User, constant, events, tag, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from contract.names import GOEMOTIONS_LABELS, OUTPUT_LABELS  # noqa: E402
from gateway.api.schemas import LearningStateOut  # noqa: E402
from loadtest.payloads import PayloadPicker, load_texts  # noqa: E402
from loadtest.shapes import target  # noqa: E402
from loadtest.slo import evaluate  # noqa: E402
from loadtest.triton_metrics import MetricsRecorder  # noqa: E402

log = logging.getLogger("loadtest")
TEXTS = load_texts()
NUM_LABELS = len(GOEMOTIONS_LABELS)
OUTPUT_WIDTHS = {len(labels) for labels in OUTPUT_LABELS}  # Triton's PROBABILITIES: 28, or 28 + signals
STREAM_NAME = "/v1/emotions/stream [message]"
LEARNING_STATE_KEYS = set(LearningStateOut.model_fields)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("goemotions")
    group.add_argument("--triton-grpc", default="127.0.0.1:8001", help="Triton gRPC host:port (grpc path)")
    group.add_argument(
        "--triton-metrics",
        default="http://127.0.0.1:8002/metrics",
        help="Triton metrics URL, scraped during the run ('' to skip)",
    )
    group.add_argument("--repeat-share", type=float, default=0.2, help="share of repeated texts (gateway)")
    group.add_argument("--learner-share", type=float, default=0.3, help="share of requests with a learner_id")
    group.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY", ""), help="gateway API key")
    group.add_argument(
        "--shape", choices=["step", "soak", "constant"], default="step", help="constant: plain -u/-r/-t"
    )
    group.add_argument("--step-users", type=int, default=4, help="users added per step")
    group.add_argument("--step-seconds", type=float, default=15, help="seconds per step")
    group.add_argument("--max-users", type=int, default=32, help="last step")
    group.add_argument("--soak-users", type=int, default=8)
    group.add_argument("--soak-seconds", type=float, default=600)
    group.add_argument("--slo-p95-ms", type=float, default=None, help="fail the run if p95 exceeds this")
    group.add_argument("--slo-max-fail-ratio", type=float, default=0.01, help="fail the run above this")


def check_emotions(body: dict[str, Any], expected: int) -> str | None:
    """Why a gateway response is wrong, or None when it is right."""
    results = body.get("results")
    if not isinstance(results, list) or len(results) != expected:
        return f"expected {expected} results, got {None if results is None else len(results)}"
    for r in results:
        emotions = r.get("emotions", {})
        if len(emotions) != NUM_LABELS or not all(0.0 <= p <= 1.0 for p in emotions.values()):
            return "emotions must be 28 probabilities in [0, 1]"
        if not isinstance(r.get("labels"), list) or r.get("primary_emotion") not in emotions:
            return "missing labels or primary_emotion"
        if not set(r.get("learning_state", {})) >= LEARNING_STATE_KEYS:
            return "incomplete learning_state"
    return None


GATEWAY = "http://127.0.0.1:8080"


def user_options(environment: Environment) -> tuple[PayloadPicker, str, float]:
    """A user's text picker, API key and learner share, from the command line (or the defaults)."""
    opts = environment.parsed_options
    if opts is None:
        return PayloadPicker(TEXTS, 0.2), "", 0.3
    return PayloadPicker(TEXTS, opts.repeat_share), opts.api_key, opts.learner_share


class GatewayUser(FastHttpUser):
    """A learning platform calling the gateway."""

    wait_time = constant(0)
    host = GATEWAY

    def on_start(self) -> None:
        self.picker, api_key, self.learner_share = user_options(self.environment)
        self.hot = PayloadPicker(TEXTS, 1.0, hot_set=10)
        self.headers = {"x-api-key": api_key} if api_key else {}

    def _post(self, name: str, payload: dict[str, Any], expected: int) -> None:
        if self.picker.rng.random() < self.learner_share:
            payload["learner_id"] = f"learner-{self.picker.rng.randrange(1000)}"
        with self.client.post(
            "/v1/emotions", json=payload, name=name, headers=self.headers, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:120]}")
                return
            problem = check_emotions(response.json(), expected)
            if problem:
                response.failure(problem)

    @tag("gateway")
    @task(4)
    def single_text(self) -> None:
        self._post("/v1/emotions [text]", {"text": self.picker.next()}, 1)

    @tag("gateway")
    @task(1)
    def batch(self) -> None:
        texts = self.picker.batch()
        self._post("/v1/emotions [batch]", {"texts": texts}, len(texts))

    @tag("gateway-hit")
    @task(1)
    def cache_hit(self) -> None:
        self._post("/v1/emotions [hit]", {"text": self.hot.next()}, 1)


class StreamUser(User):
    """A chat or tutoring session: one WebSocket per user, its learner's messages sent one by one."""

    wait_time = constant(0)
    host = GATEWAY

    def on_start(self) -> None:
        self.picker, self.api_key, _ = user_options(self.environment)
        self.learner = f"learner-{self.picker.rng.randrange(1_000_000)}"
        self.url = (self.host or GATEWAY).replace("http", "ws", 1) + "/v1/emotions/stream"
        self.ws: websocket.WebSocket | None = None
        self.sent = 0

    def on_stop(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def _connect(self) -> websocket.WebSocket:
        headers = [f"X-API-Key: {self.api_key}"] if self.api_key else []
        # no Origin header: this is not a browser (the gateway checks origins against its CORS list)
        return websocket.create_connection(self.url, timeout=30, header=headers, suppress_origin=True)

    def _answer(self, ws: websocket.WebSocket, message_id: int) -> tuple[dict[str, Any], int]:
        """This message's result or error frame (and bytes received); trajectory frames are checked."""
        length = 0
        while True:
            raw = ws.recv()
            if not isinstance(raw, str):
                raise ValueError("binary frame from the gateway")
            length += len(raw)
            frame = json.loads(raw)
            if not isinstance(frame, dict):
                raise ValueError(f"frame is not an object: {raw[:120]}")
            if frame.get("type") == "trajectory":
                if frame.get("learner_id") != self.learner or "label" not in (frame.get("trend") or {}):
                    raise ValueError(f"bad trajectory frame: {raw[:120]}")
                continue
            if frame.get("id") != message_id:
                raise ValueError(f"answer out of order: expected id {message_id}, got {frame.get('id')!r}")
            return frame, length

    @tag("stream")
    @task
    def message(self) -> None:
        self.sent += 1
        payload = {"id": self.sent, "text": self.picker.next(), "learner_id": self.learner}
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            if self.ws is None:
                self.ws = self._connect()  # first task, or after a dropped connection
            self.ws.send(json.dumps(payload))
            frame, length = self._answer(self.ws, self.sent)
            if frame.get("type") == "error":
                raise ValueError(f"{frame.get('status')} {frame.get('code')}: {frame.get('message')}")
            problem = check_emotions({"results": [frame.get("result")]}, 1)
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError, websocket.WebSocketException) as exc:  # this message's failure
            exception = exc
            if not isinstance(exc, ValueError) or "out of order" in str(exc):
                self._drop()
        self.environment.events.request.fire(
            request_type="WS",
            name=STREAM_NAME,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    def _drop(self) -> None:
        """Forget a broken connection (the next message reconnects), so one failure does not cascade."""
        if self.ws is not None:
            self.ws.close()
        self.ws = None


class TritonGrpcUser(User):
    """A power user calling Triton's goemotions ensemble directly over gRPC."""

    wait_time = constant(0)
    host = "127.0.0.1:8001"

    def on_start(self) -> None:
        import tritonclient.grpc as triton

        opts = self.environment.parsed_options
        self.triton = triton
        self.client = triton.InferenceServerClient(opts.triton_grpc if opts else self.host)
        self.picker = PayloadPicker(TEXTS, opts.repeat_share if opts else 0.2)

    @tag("grpc")
    @task
    def infer(self) -> None:
        text = self.picker.next()
        inp = self.triton.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(__import__("numpy").array([[text.encode()]], dtype=object))
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            result = self.client.infer("goemotions", [inp])
            probs = result.as_numpy("PROBABILITIES")
            if probs is None or probs.ndim != 2 or probs.shape[0] != 1 or probs.shape[1] not in OUTPUT_WIDTHS:
                raise ValueError(f"PROBABILITIES shape {None if probs is None else probs.shape}")
            length = probs.nbytes
        except Exception as exc:  # reported to Locust as this request's failure
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="goemotions",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )


class ConfiguredShape(LoadTestShape):
    """``--shape step`` / ``soak`` / ``constant`` (see loadtest/shapes.py)."""

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        return target(opts, self.get_run_time()) if opts is not None else None


_recorder: MetricsRecorder | None = None


@events.test_start.add_listener
def _start_metrics(environment: Environment, **_: Any) -> None:
    global _recorder
    opts = environment.parsed_options
    csv_prefix = getattr(opts, "csv_prefix", None) if opts else None
    if opts and opts.triton_metrics and csv_prefix:
        _recorder = MetricsRecorder(opts.triton_metrics, f"{csv_prefix}_triton_metrics.csv")
        gevent.spawn(_recorder.run)


@events.test_stop.add_listener
def _stop_metrics(**_: Any) -> None:
    if _recorder is not None:
        _recorder.stop()


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    total = environment.stats.total
    p95 = total.get_response_time_percentile(0.95) if total.num_requests else None
    result = evaluate(
        total.num_requests,
        total.num_failures,
        p95,
        opts.slo_max_fail_ratio if opts else None,
        opts.slo_p95_ms if opts else None,
    )
    if result.ok:
        log.info("SLO met: %d requests, %d failures, p95 %s ms", total.num_requests, total.num_failures, p95)
    else:
        log.error("SLO missed: %s", "; ".join(result.reasons))
    environment.process_exit_code = result.exit_code


@events.quit.add_listener
def _exit(exit_code: int, **_: Any) -> None:
    # With gevent-patched gRPC, Locust otherwise never exits after "Shutting down" (measured here).
    os._exit(exit_code)
