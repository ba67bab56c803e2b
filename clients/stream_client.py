"""A chat session over the gateway's WebSocket stream: send a learner's messages, print every frame.

    python clients/stream_client.py --learner learner-42 "I don't get fractions." "Oh wait, now it clicks!"
    python clients/stream_client.py --url wss://emotions.example.org/v1/emotions/stream --api-key "$KEY" "..."

One JSON line per frame the gateway sends: ``result`` (emotions, labels, learning state, trend) for each
message, ``trajectory`` when the learner's trend label changes, ``error`` for a message that failed (the
connection stays open for the next one). The key goes in the X-API-Key handshake header.

Each message carries an ``idempotency_key``. When the connection drops before every message is answered,
the session reconnects and sends the unanswered ones again with the same keys: one the gateway had
already analysed comes back as its first result (``replayed: true``), never as a second analysis. An
error frame the gateway asks to retry (409, 429, 503, 504, with ``retry_after``) is logged and its message
sent again after that wait; the other error frames are answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({409, 429, 503, 504})
TRAILING_FRAMES_S = 0.2  # how long to wait for a trajectory frame after the last answer


async def session(
    url: str,
    texts: list[str],
    learner_id: str,
    api_key: str | None,
    *,
    attempts: int = 5,
    connect: Callable[..., Any] = websockets.connect,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[dict[str, Any]]:
    """Every frame the gateway sent for these messages, in order (transient error frames aside), after at
    most ``attempts`` connections and as many resends per message."""
    headers = {"X-API-Key": api_key} if api_key else None
    messages = {
        i: {"id": i, "text": text, "learner_id": learner_id, "idempotency_key": uuid.uuid4().hex}
        for i, text in enumerate(texts)
    }
    frames: list[dict[str, Any]] = []
    answered: set[int] = set()
    connections = 0
    while len(answered) < len(messages):
        connections += 1
        try:
            async with connect(url, additional_headers=headers, proxy=None) as ws:
                # the gateway answers in order: send every unanswered message, then read
                for i in sorted(set(messages) - answered):
                    await ws.send(json.dumps(messages[i]))
                await _read(ws, messages, answered, frames, attempts, sleep)
        except (ConnectionClosed, OSError) as exc:
            if len(answered) == len(messages):  # lost while waiting for trailing frames: nothing owed
                break
            if connections >= attempts:
                raise
            wait = min(0.2 * 2**connections, 5.0)
            log.info(
                "connection lost (%s); %d unanswered, reconnecting in %.1f s",
                exc,
                len(messages) - len(answered),
                wait,
            )
            await sleep(wait)
    return frames


async def _read(
    ws: Any,
    messages: dict[int, dict[str, Any]],
    answered: set[int],
    frames: list[dict[str, Any]],
    attempts: int,
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    resent: dict[int, int] = {}
    while len(answered) < len(messages):
        frame = json.loads(await ws.recv())
        message_id = frame.get("id")
        if (
            frame["type"] == "error"
            and frame["status"] in RETRIED_STATUSES
            and message_id in messages
            and resent.get(message_id, 0) < attempts - 1
        ):
            resent[message_id] = resent.get(message_id, 0) + 1
            log.info("message %s: %s %s; sending it again", message_id, frame["status"], frame["code"])
            await sleep(float(frame.get("retry_after") or 1))
            await ws.send(json.dumps(messages[message_id]))
            continue
        frames.append(frame)
        if frame["type"] in ("result", "error") and message_id in messages:
            answered.add(message_id)
    # A trajectory update follows its result at once; collect it if the server is sending one.
    while True:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), TRAILING_FRAMES_S)))
        except TimeoutError:
            break


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="ws://127.0.0.1:8080/v1/emotions/stream")
    parser.add_argument("--learner", default="learner-42")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for frame in asyncio.run(session(args.url, args.texts, args.learner, args.api_key)):
        sys.stdout.write(json.dumps(frame, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
