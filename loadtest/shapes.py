"""Load shapes as a pure function of the options and elapsed time (testable without importing Locust,
which monkey-patches the process it is imported into)."""

from __future__ import annotations

from typing import Any


def target(opts: Any, elapsed: float) -> tuple[int, float] | None:
    """(users, spawn rate) at ``elapsed`` seconds, or None to stop.

    step: add ``step_users`` every ``step_seconds`` until ``max_users`` has run one step;
    soak: ``soak_users`` for ``soak_seconds``; constant: Locust's own -u / -r / -t. (A shape class in
    the locustfile always drives the run, so the plain options are honoured here.)
    """
    if opts.shape == "constant":
        run_time = getattr(opts, "run_time", None)
        if run_time and elapsed >= float(run_time):
            return None
        return int(opts.num_users or 1), float(opts.spawn_rate or 1)
    if opts.shape == "soak":
        return (opts.soak_users, float(opts.soak_users)) if elapsed < opts.soak_seconds else None
    steps = max(1, opts.max_users // opts.step_users)
    step = int(elapsed // opts.step_seconds)
    if step >= steps:
        return None
    return (step + 1) * opts.step_users, float(opts.step_users)
