"""The embedded Triton's lock-down, without starting it: the restriction flags (the same APIs as the
containers), the admin key kept out of logs, reprs and the models' environment, and Triton's bind
address independent of the gateway's (the real server's refusals: tests/e2e/test_triton_lockdown.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from server.__main__ import build_parser
from server.embedded import (
    ADMIN_KEY_ENV,
    RESTRICTED_APIS,
    ServerConfig,
    ServerError,
    is_loopback,
    redacted,
    restriction_flags,
    server_command,
    server_env,
)
from server.probes import loopback_for

ROOT = Path(__file__).resolve().parents[2]
KEY = "k3y-0123456789abcdef"


def _restricted(flags: list[str], flag: str) -> tuple[set[str], str]:
    value = next(f for f in flags if f.startswith(flag + "=")).split("=", 1)[1]
    apis, restriction = value.split(":", 1)  # the key (or compose's ${VAR:?message}) may hold more
    return set(apis.split(",")), restriction


@pytest.mark.parametrize("flag", ["--http-restricted-api", "--grpc-restricted-protocol"])
def test_the_command_restricts_the_same_apis_as_the_containers(tmp_path: Path, flag: str):
    command = server_command(ServerConfig(work_dir=tmp_path), tmp_path / "backends", KEY)
    apis, restriction = _restricted(command, flag)
    assert restriction == f"admin-key={KEY}"
    assert apis == set(RESTRICTED_APIS)
    assert not {"inference", "health", "metadata"} & apis  # the gateway infers and checks health
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose_apis, _ = _restricted(compose["services"]["triton"]["command"], flag)
    assert compose_apis == apis


@pytest.mark.parametrize("bad", ["", "a:b", "a=b", "a,b", "a b"])
def test_a_key_that_would_break_the_flag_is_refused(bad: str):
    with pytest.raises(ServerError):
        restriction_flags(bad)


def test_the_key_stays_out_of_reprs_logs_and_the_models_environment(monkeypatch: pytest.MonkeyPatch):
    assert KEY not in repr(ServerConfig(admin_key=KEY))
    assert KEY not in redacted(["tritonserver", *restriction_flags(KEY)], KEY)
    monkeypatch.setenv(ADMIN_KEY_ENV, KEY)
    assert ADMIN_KEY_ENV not in server_env()


def test_triton_binds_loopback_whatever_the_gateway_binds():
    args = build_parser().parse_args(["--host", "0.0.0.0"])
    assert args.host == "0.0.0.0" and args.triton_host == "127.0.0.1"
    assert build_parser().parse_args(["--triton-host", "10.0.0.5"]).triton_host == "10.0.0.5"
    assert ServerConfig().host == "127.0.0.1"


def test_clients_on_this_machine_reach_a_wildcard_bind_on_loopback():
    assert loopback_for("0.0.0.0") == "127.0.0.1" and loopback_for("::") == "127.0.0.1"
    assert loopback_for("10.0.0.5") == "10.0.0.5" and loopback_for("triton") == "triton"
    assert ServerConfig(host="0.0.0.0").connect_host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")


def test_start_up_waits_for_the_metrics_endpoint_as_well_as_http_readiness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import time

    from server import embedded

    class Running:
        def poll(self) -> None:
            return None

    metrics_answers = iter([False, False, True])
    checks: list[str] = []
    monkeypatch.setattr(embedded, "is_ready", lambda config, timeout=1.0: checks.append("http") or True)
    monkeypatch.setattr(
        embedded,
        "serves_metrics",
        lambda config, timeout=1.0: checks.append("metrics") or next(metrics_answers),
    )
    triton = embedded.EmbeddedTriton(ServerConfig(work_dir=tmp_path, ready_timeout_s=30))
    triton.process = Running()  # type: ignore[assignment]
    triton._wait_ready(time.monotonic())
    assert checks.count("metrics") == 3  # HTTP said ready from the first poll; metrics only on the third
    assert triton.startup_seconds is not None
