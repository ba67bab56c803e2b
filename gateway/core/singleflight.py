"""Concurrent callers asking for the same keys share one computation per key.

The first caller for a key (its leader) computes it; later callers wait for that result. The leader's
failure is every waiter's failure (the same call to Triton failed for all of them), but the leader's
cancellation is not: when its caller goes away (a client disconnects, a stream closes), the waiters
did not, so they take the keys over and compute them themselves instead of raising a CancelledError
that is not theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Abandoned(Exception):
    """Set on a key's future when its leader was cancelled: its waiters compute the key themselves."""


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    async def run(
        self, keys: list[str], compute: Callable[[list[str]], Awaitable[dict[str, T]]]
    ) -> dict[str, T]:
        results: dict[str, T] = {}
        pending = list(dict.fromkeys(keys))
        while pending:  # again only for keys whose leader was cancelled while this caller waited
            mine = [k for k in pending if k not in self._inflight]
            waiting = {k: self._inflight[k] for k in pending if k in self._inflight}
            if mine:
                results.update(await self._lead(mine, compute))
            pending = []
            for k, fut in waiting.items():
                try:
                    results[k] = await asyncio.shield(fut)
                except _Abandoned:
                    pending.append(k)
        return results

    async def _lead(
        self, keys: list[str], compute: Callable[[list[str]], Awaitable[dict[str, T]]]
    ) -> dict[str, T]:
        loop = asyncio.get_running_loop()
        for k in keys:
            self._inflight[k] = loop.create_future()
        try:
            computed = await compute(keys)
            values = {k: computed[k] for k in keys}
        except Exception as exc:
            self._settle(keys, exc)
            raise
        except BaseException:  # cancelled: the waiters were not, they compute the keys themselves
            self._settle(keys, _Abandoned())
            raise
        for k in keys:
            self._inflight.pop(k).set_result(values[k])
        return values

    def _settle(self, keys: list[str], exc: BaseException) -> None:
        for k in keys:
            fut = self._inflight.pop(k)
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters get it, no "never retrieved" warning
