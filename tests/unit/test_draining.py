"""The drain before a shutdown (gateway/draining.py): uvicorn's exit waits for the drain period, a second
signal cuts it short, and 0 keeps uvicorn's own behaviour. A fake clock moves time."""

from __future__ import annotations

import asyncio
import signal

import pytest
import uvicorn

from gateway.draining import Drain, DrainingServer
from gateway.settings import Settings
from server.gateway_process import DRAIN_ENV
from tests.support.gateway import FakeClock


async def app(scope, receive, send):  # never called: the server is not started
    raise AssertionError


def server(drain_s: float, clock: FakeClock) -> DrainingServer:
    return DrainingServer(uvicorn.Config(app), Drain(), drain_s, clock)


def tick(s: DrainingServer) -> bool:
    # counter 1: uvicorn's own once-a-second work (date header) needs a started server; it is skipped
    return asyncio.run(s.on_tick(1))


def test_the_first_signal_drains_and_the_shutdown_waits_for_the_period():
    clock = FakeClock()
    s = server(30, clock)
    assert not s.drain.active and not tick(s)
    s.handle_exit(signal.SIGTERM, None)
    assert s.drain.active and not s.should_exit
    clock.advance(29.9)
    assert not tick(s)  # still serving
    clock.advance(0.1)
    assert tick(s) and s.should_exit


def test_a_second_signal_ends_the_drain_at_once():
    clock = FakeClock()
    s = server(30, clock)
    s.handle_exit(signal.SIGTERM, None)
    assert not tick(s)
    s.handle_exit(signal.SIGTERM, None)
    assert s.should_exit and tick(s)


def test_no_drain_period_stops_at_the_first_signal():
    s = server(0, FakeClock())
    s.handle_exit(signal.SIGINT, None)
    assert s.should_exit and not s.drain.active


def test_the_launcher_sets_the_gateways_drain_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(DRAIN_ENV, "7.5")
    assert Settings(_env_file=None).shutdown_drain_s == 7.5
