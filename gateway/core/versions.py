"""The model version Triton serves now, as its answers report it."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ServedVersion:
    """The latest version Triton answered with (None until its first answer): the cache is read under
    it. ``changes`` counts how often it changed: an answer to a call started before the latest change
    cannot undo it (during a swap, the old model's last in-flight answers arrive after the new one's
    first)."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.changes = 0

    def note(self, version: str, since: int) -> bool:
        """Record the version Triton answered a call with, made when ``changes`` was ``since``; True when
        it became the served version. A call older than the latest change does not count."""
        old = self.version
        if version == old or since != self.changes:
            return False
        self.version = version
        self.changes += 1
        if old is None:
            log.info("serving model version %s", version)
        else:
            log.info("model swapped from %s to %s", old, version)
        return True
