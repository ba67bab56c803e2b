"""The launcher's restart budget and the soak's growth measure."""

from __future__ import annotations

import argparse

import pytest

from gateway.settings import Settings
from loadtest.soak import gateway_env, growth_mb, server_config, write_report
from server.__main__ import RestartBudget
from server.embedded import process_role


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


def test_process_role_names_the_server_and_each_stubs_model():
    server = b"/x/pytriton/tritonserver/bin/tritonserver\0--model-repository=/r\0"
    stub = (
        b"/b/python/triton_python_backend_stub\0/repo/classifier/1/model.py\0"
        b"triton_python_backend_shm_region_1\0001048576\0"
    )
    assert process_role(server) == "tritonserver"
    assert process_role(stub) == "stub:classifier"
    assert process_role(b"") == "?"


def test_soak_passes_its_cache_sizes_to_triton_and_the_gateway(tmp_path):
    # The first soak harness recorded small caches in its report but ran with the defaults (64 MB,
    # 100k results), so filling those caches looked like a leak.
    args = argparse.Namespace(
        repository=tmp_path, base_port=18300, triton_cache_bytes=4 * 2**20, gateway_cache_size=2000
    )
    assert server_config(args).cache_bytes == 4 * 2**20
    assert gateway_env(args)["GATEWAY_CACHE_SIZE"] == "2000"
    assert Settings(**{"cache_size": int(gateway_env(args)["GATEWAY_CACHE_SIZE"])}).cache_size == 2000


def test_soak_report_lists_growth_per_triton_part(tmp_path):
    series = [(float(t), 100.0) for t in range(0, 600, 5)]
    leaking = [(t, 50.0 + t / 10) for t, _ in series]
    report = {
        "date": "2026-11-26",
        "machine": {"cpu": "test cpu", "nproc": 2},
        "command": "make soak",
        "seconds": 600,
        "clients": 8,
        "requests": 1000,
        "bound_mb": 50.0,
        "caches": {"triton_bytes": 4 * 2**20, "gateway_entries": 2000},
        "growth_mb": {"triton": growth_mb(leaking), "gateway": 0.0},
        "part_growth_mb": {"stub:classifier": growth_mb(leaking), "tritonserver": 0.0},
        "passed": False,
        "samples": {"triton": leaking, "gateway": series},
        "parts": {"stub:classifier": leaking, "tritonserver": series},
    }
    md, png = (p for p in write_report(report, tmp_path) if p.suffix in (".md", ".png"))
    text = md.read_text()
    assert "**FAIL**" in text
    assert "| stub:classifier | 50.0 | 109.5 | +" in text
    assert "| tritonserver | 100.0 | 100.0 | +0.0 |" in text
    assert png.stat().st_size > 10_000
