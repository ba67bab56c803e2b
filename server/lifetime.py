"""Children that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(prctl: Callable[..., int], parent: int) -> None:
    # Runs in the child between fork and exec: only calls resolved in the parent, no imports, no locks.
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return  # refused: the child simply lives on, as without this
    if os.getppid() != parent:  # the parent died before the call above: act as if signalled
        os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when its parent dies, SIGKILL included:
    a launcher killed with -9 (an OOM kill, a CI timeout) otherwise left tritonserver holding its ports
    and shared memory, and the next `make serve` could not start. Linux only (None elsewhere). Start
    children from a thread that lives as long as they should: the signal follows the starting thread."""
    if not sys.platform.startswith("linux"):
        return None
    return functools.partial(_die_with, ctypes.CDLL(None, use_errno=True).prctl, os.getpid())
