"""Every route dependency is ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, one
thread hop a request on the gateway's few cores (profiled on POST /v1/outcomes)."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute

from gateway.app import create_app
from tests.support.gateway import make_settings


def _calls(dependant: Dependant) -> list[object]:
    found = []
    for sub in dependant.dependencies:
        found.append(sub.call)
        found += _calls(sub)
    return found


def _routes(routes: list[Any]) -> list[APIRoute | APIWebSocketRoute]:
    """The app's API routes, through included routers (FastAPI keeps those as their own route kind)."""
    found: list[APIRoute | APIWebSocketRoute] = []
    for route in routes:
        if isinstance(route, APIRoute | APIWebSocketRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _routes(route.original_router.routes)
    return found


def test_no_route_dependency_runs_in_the_thread_pool():
    routes = _routes(create_app(make_settings()).routes)
    assert any(r.path == "/v1/outcomes" for r in routes)
    calls = [c for r in routes for c in _calls(r.dependant)]
    assert calls, "the routes have dependencies (auth, services): the walk found none"
    sync = {getattr(c, "__name__", repr(c)) for c in calls if not inspect.iscoroutinefunction(c)}
    assert not sync, f"sync dependencies run in FastAPI's thread pool: {sorted(sync)}"
