"""A chat session over the gateway's WebSocket stream: send a learner's messages, print every frame.

    python clients/stream_client.py --learner learner-42 "I don't get fractions." "Oh wait, now it clicks!"
    python clients/stream_client.py --url wss://emotions.example.org/v1/emotions/stream --api-key "$KEY" "..."

One JSON line per frame the gateway sends: ``result`` (emotions, labels, learning state, trend) for each
message, ``trajectory`` when the learner's trend label changes, ``error`` for a message that failed (the
connection stays open for the next one). The key goes in the X-API-Key handshake header.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import websockets


async def session(url: str, texts: list[str], learner_id: str, api_key: str | None) -> list[dict[str, Any]]:
    """Every frame the gateway sent for these messages, in order."""
    headers = {"X-API-Key": api_key} if api_key else None
    frames: list[dict[str, Any]] = []
    async with websockets.connect(url, additional_headers=headers, proxy=None) as ws:
        for i, text in enumerate(texts):  # the gateway answers in order: send them all, then read
            await ws.send(json.dumps({"id": i, "text": text, "learner_id": learner_id}))
        answered = 0
        while answered < len(texts):
            frame = json.loads(await ws.recv())
            frames.append(frame)
            answered += frame["type"] in ("result", "error")
        # A trajectory update follows its result at once; collect it if the server is sending one.
        while True:
            try:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
            except TimeoutError:
                break
    return frames


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="ws://127.0.0.1:8080/v1/emotions/stream")
    parser.add_argument("--learner", default="learner-42")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    for frame in asyncio.run(session(args.url, args.texts, args.learner, args.api_key)):
        sys.stdout.write(json.dumps(frame, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
