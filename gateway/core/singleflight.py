"""Concurrent callers asking for the same keys share one computation per key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    async def run(
        self, keys: list[str], compute: Callable[[list[str]], Awaitable[dict[str, T]]]
    ) -> dict[str, T]:
        loop = asyncio.get_running_loop()
        mine = [k for k in dict.fromkeys(keys) if k not in self._inflight]
        waiting = {k: self._inflight[k] for k in keys if k in self._inflight and k not in mine}
        for k in mine:
            self._inflight[k] = loop.create_future()
        results: dict[str, T] = {}
        if mine:
            try:
                computed = await compute(mine)
            except BaseException as exc:
                for k in mine:
                    fut = self._inflight.pop(k)
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: waiters get it, no "never retrieved" warning
                raise
            for k in mine:
                self._inflight.pop(k).set_result(computed[k])
            results.update(computed)
        for k, fut in waiting.items():
            results[k] = await asyncio.shield(fut)
        return results
