"""Per-client sliding-window rate limit (per API key, or per client address when auth is off)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from cachetools import TTLCache


class SlidingWindowLimiter:
    """At most ``limit`` requests in any ``window_s`` seconds per key.

    Keeps each key's request times (bounded by ``limit``), so the window slides exactly instead of
    resetting at fixed boundaries where a client could send 2x the limit across the edge. Idle keys
    expire; at most ``max_keys`` are tracked.
    """

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._hits: TTLCache[str, deque[float]] = TTLCache(maxsize=max_keys, ttl=window_s, timer=clock)

    def check(self, key: str) -> float | None:
        """None when the request may pass (and count it), else seconds until it would."""
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            hits = deque()
        while hits and now - hits[0] >= self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            self._hits[key] = hits
            return max(0.0, self.window_s - (now - hits[0]))
        hits.append(now)
        self._hits[key] = hits  # re-set: refreshes the key's expiry
        return None


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
