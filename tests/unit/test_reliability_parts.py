"""The launcher's restart budget and the soak's growth measure."""

from __future__ import annotations

import pytest

from loadtest.soak import growth_mb
from server.__main__ import RestartBudget


def test_restart_budget_stops_a_crash_loop_and_recovers_after_the_window():
    now = [0.0]
    budget = RestartBudget(limit=3, window_s=60, clock=lambda: now[0])
    assert [budget.allow() for _ in range(3)] == [True, True, True]
    assert budget.allow() is False  # a fourth crash within the minute: give up
    now[0] = 61
    assert budget.allow() is True  # old restarts left the window


def test_growth_ignores_warmup_and_compares_start_and_end_of_steady_part():
    flat_after_warmup = [(t, 100.0 + (50.0 if t < 20 else 0.0) * (20 - t) / 20) for t in range(100)]
    assert growth_mb(flat_after_warmup) == pytest.approx(0.0)
    leaking = [(t, 100.0 + 0.5 * t) for t in range(100)]  # 0.5 MB per sample
    assert growth_mb(leaking) == pytest.approx(0.5 * (95 - 24), abs=2)
    with pytest.raises(ValueError, match="too few samples"):
        growth_mb([(0, 1.0)] * 5)
