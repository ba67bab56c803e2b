"""``WS /v1/emotions/stream``: a chat or tutoring session's learner messages over one connection.

Auth (when keys are configured) by the API key in the handshake headers, or, for browsers (which cannot
set WebSocket headers), in a first frame ``{"type": "auth", "api_key": "..."}``; never in the URL. A
receiver task reads frames into a bounded queue (when it is full, the message is dropped with an error
frame); one worker answers them in order with the HTTP route's validation, errors, rate limit and
concurrency limit (the same ``deps`` and the same core pipeline). An error is a frame and the connection
stays open for the next message. A connection that sends nothing for ``stream_idle_timeout_s`` (and is
owed no answer) is closed with 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ValidationError
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from gateway.api import responses
from gateway.api.deps import (
    Principal,
    Scope,
    api_key_from,
    authenticate,
    check_rate,
    client_key,
    require_scope,
    services_of,
)
from gateway.api.schemas import (
    MessageId,
    ModelInfo,
    StreamErrorFrame,
    StreamMessage,
    StreamResultFrame,
    StreamTrajectoryFrame,
)
from gateway.core.analysis import Analysis
from gateway.errors import ErrorCode, GatewayError
from gateway.services import Services

log = logging.getLogger(__name__)

PATH = "/v1/emotions/stream"
POLICY_VIOLATION = 1008  # RFC 6455 close code for a refused client (here: the API key)
QUEUE_FULL = "queue full: wait for answers before sending more"
TRACKED_LEARNERS = 1024  # per connection, for trajectory frames; a forgotten learner is re-sent
INTERNAL_ERROR = 1011  # RFC 6455: the server hit a condition that prevents it from serving the stream
WORKER_STOPPED = "internal error: the stream worker stopped; reconnect"


@dataclass
class Job:
    """A received frame: its JSON object, or the error it already earned; answered in order."""

    id: MessageId
    payload: dict[str, Any] | None
    error: GatewayError | None
    received: float  # perf_counter


def _frame_id(payload: dict[str, Any]) -> MessageId:
    """The client's id when it can be echoed back (StreamMessage's own check reports a bad one)."""
    try:
        return StreamMessage.check_id(payload.get("id"))
    except ValueError:
        return None


def _decode(text: str) -> dict[str, Any] | GatewayError:
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return GatewayError(
            ErrorCode.INVALID_REQUEST, 'frame is not valid JSON; send an object like {"text": "..."}'
        )
    if not isinstance(payload, dict):
        return GatewayError(
            "invalid_request",
            f'a frame must be a JSON object like {{"text": "..."}}, not {type(payload).__name__}',
        )
    return payload


def _error_frame(message_id: MessageId, exc: GatewayError) -> StreamErrorFrame:
    retry = exc.headers.get("Retry-After")
    return StreamErrorFrame(
        id=message_id,
        status=exc.status,
        code=exc.code,
        message=exc.message,
        retry_after=int(retry) if retry and retry.isdigit() else None,
    )


class Connection:
    """One authenticated stream: a receiver and a worker sharing a bounded queue."""

    def __init__(self, websocket: WebSocket, services: Services, caller: Principal, client: str) -> None:
        self.websocket = websocket
        self.services = services
        self.caller = caller  # its tenant owns every learner this connection names
        self.client = client  # the rate limit's key, as HTTP has it
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(services.settings.stream_queue_size)
        self.busy = False
        self.closed = False
        self.send_lock = asyncio.Lock()
        self.trends: LRUCache[str, str] = LRUCache(TRACKED_LEARNERS)

    async def run(self) -> str:
        """Serve until the client leaves or idles out; returns which. Leaves no task behind.

        The worker only ends after the receiver has (it puts the end marker). A worker that ends first
        (a bug raised, or something cancelled it) would leave a connection whose frames queue up with
        nobody to answer them, and whose idle timeout never fires because the queue is not empty: the
        connection is closed with 1011 instead (and the run ends as ``error``)."""
        worker = asyncio.create_task(self._work(), name="stream-worker")
        receiver = asyncio.create_task(self._receive(), name="stream-receiver")
        try:
            await asyncio.wait({worker, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not worker.done():  # the receiver ended: the worker finishes the message in hand
                await asyncio.wait({worker})
        finally:  # also when this connection's own task is cancelled (server shutdown)
            receiver.cancel()
            worker.cancel()
            await asyncio.gather(worker, receiver, return_exceptions=True)
        for task in (worker, receiver):
            if task.cancelled() and task is worker:
                log.error("the stream worker was cancelled; closing the connection with 1011")
            elif not task.cancelled() and task.exception() is not None:
                log.error(
                    "the %s failed; closing the connection with 1011",
                    task.get_name(),
                    exc_info=task.exception(),
                )
            else:
                continue
            await self._close(INTERNAL_ERROR, WORKER_STOPPED)
            return "error"
        return receiver.result()

    async def _close(self, code: int, reason: str) -> None:
        async with self.send_lock:
            self.closed = True
            with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, RuntimeError):
                await self.websocket.close(code, reason)

    async def send(self, frame: BaseModel) -> None:
        if self.closed:
            return
        async with self.send_lock:
            try:
                await self.websocket.send_text(frame.model_dump_json())
            except (WebSocketDisconnect, WebSocketDisconnected):
                self.closed = True  # the client left; the receiver sees the disconnect and ends the run

    async def _receive(self) -> str:
        try:
            return await self._receive_frames()
        finally:
            # Drop what was not started; the message in hand is finished, not cancelled (a cancelled
            # Triton call would fail the other requests sharing it through the single-flight).
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    async def _receive_frames(self) -> str:
        settings = self.services.settings
        while True:
            try:
                async with asyncio.timeout(settings.stream_idle_timeout_s):
                    message = await self.websocket.receive()
            except TimeoutError:
                if self.busy or not self.queue.empty():
                    log.debug(
                        "stream quiet for %g s but owed an answer: kept open", settings.stream_idle_timeout_s
                    )
                    continue  # idle means nothing sent and nothing owed
                async with self.send_lock:
                    self.closed = True
                    with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
                        await self.websocket.close(1000, "idle timeout")
                return "idle_timeout"
            if message["type"] == "websocket.disconnect":
                self.closed = True
                return "client"
            job = self._job(message)
            if job is None:
                continue
            try:
                self.queue.put_nowait(job)
            except asyncio.QueueFull:
                self.services.metrics.stream_messages.labels("queue_full").inc()
                await self.send(_error_frame(job.id, GatewayError(ErrorCode.OVERLOADED, QUEUE_FULL)))

    def _job(self, message: Message) -> Job | None:
        """The frame as a job; None for an auth frame (the connection is authenticated already)."""
        received = time.perf_counter()
        text = message.get("text")
        if text is None:
            error = GatewayError(
                ErrorCode.INVALID_REQUEST, "binary frames are not supported; send JSON text frames"
            )
            return Job(None, None, error, received)
        limit = self.services.settings.stream_max_message_bytes
        if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
            error = GatewayError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"frame over {limit} bytes; send a shorter text"
            )
            return Job(None, None, error, received)
        payload = _decode(text)
        if isinstance(payload, GatewayError):
            return Job(None, None, payload, received)
        if payload.get("type") == "auth":
            return None
        return Job(_frame_id(payload), payload, None, received)

    async def _work(self) -> None:
        while (job := await self.queue.get()) is not None:
            self.busy = True
            try:
                await self._answer(job)
            finally:
                self.busy = False

    async def _answer(self, job: Job) -> None:
        services = self.services
        frames: list[BaseModel]
        try:
            if job.error is not None:
                raise job.error
            assert job.payload is not None
            await check_rate(services, self.client, self.caller.tenant)
            message = _validate(job.payload)
            frames = await self._result(job, message)
            code = "ok"
        except GatewayError as exc:
            code = exc.code
            frames = [_error_frame(job.id, exc)]
        except Exception:  # a bug: logged with an id; the connection carries on, as HTTP answers a 500
            request_id = uuid.uuid4().hex[:12]
            log.exception("unhandled error in a stream message (request id %s)", request_id)
            code = "internal_error"
            frames = [
                _error_frame(
                    job.id, GatewayError(ErrorCode.INTERNAL_ERROR, f"internal error; request id {request_id}")
                )
            ]
        services.metrics.stream_messages.labels(code).inc()
        services.metrics.stream_latency.observe(time.perf_counter() - job.received)
        for frame in frames:
            await self.send(frame)

    async def _result(self, job: Job, message: StreamMessage) -> list[BaseModel]:
        """The frames answering one valid message; with an idempotency key, a message sent again gets its
        first result frame back (under this message's id) instead of a second analysis."""
        services = self.services
        key = message.idempotency_key
        request = message.model_dump(mode="json", exclude={"id", "idempotency_key"})
        async with services.replays.once(
            self.caller.tenant, key, f"WS {PATH}", request, message.learner_id
        ) as once:
            if once.stored is not None:
                first = StreamResultFrame.model_validate_json(once.stored.body)
                return [first.model_copy(update={"id": job.id, "replayed": True})]
            context = message.context.model_dump() if message.context else None
            analysis = await services.pipeline.analyse(
                [message.text],
                message.learner_id,
                context,
                channel="ws",
                started=job.received,
                tenant=self.caller.tenant,
            )
            frames = self._frames(job.id, message, analysis)
            if key is not None:
                once.keep(200, frames[0].model_dump(mode="json"))
        return frames

    def _frames(self, message_id: MessageId, message: StreamMessage, analysis: Analysis) -> list[BaseModel]:
        trend = responses.trend(analysis.trend) if analysis.trend else None
        frames: list[BaseModel] = [
            StreamResultFrame(
                id=message_id,
                model=ModelInfo(name=self.services.settings.triton_model, version=analysis.model_version),
                result=responses.result(analysis, 0),
                learner_id=message.learner_id,
                trend=trend,
            )
        ]
        learner = message.learner_id
        if learner and trend is not None:
            previous = self.trends.get(learner)
            if previous != trend.label:
                self.trends[learner] = trend.label
                frames.append(
                    StreamTrajectoryFrame(id=message_id, learner_id=learner, previous=previous, trend=trend)
                )
        return frames


def _validate(payload: dict[str, Any]) -> StreamMessage:
    try:
        return StreamMessage.model_validate(payload)
    except ValidationError as exc:
        raise GatewayError(ErrorCode.INVALID_REQUEST, responses.describe(exc.errors())) from None


async def _authenticate(websocket: WebSocket, services: Services) -> Principal | None:
    """The caller once the connection may proceed (a key with the ``analyse`` scope); None after
    closing it (1008)."""
    if not services.api_keys:
        return authenticate("", services)
    given = api_key_from(websocket.headers) or await _first_frame_key(
        websocket, services.settings.stream_auth_timeout_s
    )
    if given is None:
        return None
    try:
        caller = authenticate(given, services)
    except GatewayError:  # an empty key (or a lone surrogate) is never a valid one
        await _refuse(websocket, "invalid API key")
        return None
    try:
        require_scope(caller, Scope.ANALYSE)
    except GatewayError:
        await _refuse(websocket, f"this API key lacks the '{Scope.ANALYSE}' scope")
        return None
    return caller


async def _first_frame_key(websocket: WebSocket, timeout_s: float) -> str | None:
    missing = 'missing API key: send X-API-Key or a first frame {"type": "auth", "api_key": "..."}'
    try:
        async with asyncio.timeout(timeout_s):
            message = await websocket.receive()
    except TimeoutError:
        await _refuse(websocket, f"no API key within {timeout_s:g} s")
        return None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    payload = _decode(message["text"]) if message.get("text") is not None else None
    if not isinstance(payload, dict) or payload.get("type") != "auth":
        await _refuse(websocket, missing)
        return None
    key = payload.get("api_key")
    if not isinstance(key, str):
        await _refuse(websocket, missing)
        return None
    return key


async def _refuse(websocket: WebSocket, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):  # already gone
        await websocket.close(POLICY_VIOLATION, reason)


def _origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    # Browsers do not apply CORS to WebSockets: with CORS origins configured, other pages are refused here.
    origin = websocket.headers.get("origin")
    return not allowed or origin is None or "*" in allowed or origin in allowed


router = APIRouter()


@router.websocket(PATH, name="emotions_stream")
async def emotions_stream(websocket: WebSocket) -> None:
    services = services_of(websocket)
    metrics = services.metrics
    await websocket.accept()
    metrics.stream_connections.inc()
    reason = "unauthorized"
    try:
        if not _origin_allowed(websocket, services.settings.cors_origins):
            await _refuse(websocket, "origin not allowed")
            return
        caller = await _authenticate(websocket, services)
        if caller is None:
            return
        client = client_key(caller, websocket.client.host if websocket.client else None)
        reason = "error"  # unless the run ends normally
        reason = await Connection(websocket, services, caller, client).run()
    except WebSocketDisconnect:
        reason = "client"  # left while authenticating
    finally:
        metrics.stream_connections.dec()
        metrics.stream_closes.labels(reason).inc()
