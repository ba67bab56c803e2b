"""A real Prometheus (2.42, Debian's binary) scraping the real stack: the embedded tritonserver and the
gateway under uvicorn, with the shipped alert rules loaded. Both targets are up, a request through the
gateway shows in its series, and every rule evaluates without error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from server.probes import wait_for
from tests.support.gateway import serve
from tests.support.processes import free_port, stop_process
from tests.unit.test_alerts import ALERTS, PROMETHEUS

pytestmark = pytest.mark.e2e
WAIT_S = 60


def prometheus_binary() -> str:
    found = Path(sys.executable).with_name("prometheus")
    if not found.exists():
        pytest.skip("prometheus not installed (make install-dev fetches it from Debian's prometheus package)")
    return str(found)


@pytest.fixture
def prometheus(tmp_path: Path, triton: Any, redis_settings: Any) -> Iterator[tuple[str, Any]]:
    """Prometheus on a free port, scraping the session's Triton and a gateway on it every second, with
    alerts.yml: its API URL and the served gateway."""
    binary = prometheus_binary()
    with serve(redis_settings) as gateway:
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        jobs["gateway"]["static_configs"] = [{"targets": [gateway.http.removeprefix("http://")]}]
        jobs["gateway"]["authorization"]["credentials_file"] = str(PROMETHEUS / "gateway-metrics.key")
        jobs["triton"]["static_configs"] = [{"targets": [triton.metrics_url.split("/")[2]]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}/api/v1", gateway
        finally:
            stop_process(proc)
            log.close()


def api(url: str, path: str, **params: str) -> Any:
    try:
        response = httpx.get(f"{url}/{path}", params=params, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json()["data"] if response.status_code == 200 else None


def test_prometheus_scrapes_the_stack_and_evaluates_every_rule(prometheus):
    url, gateway = prometheus

    def targets_up() -> bool:
        data = api(url, "targets")
        health = {t["labels"]["job"]: t["health"] for t in (data or {}).get("activeTargets", [])}
        return health == {"gateway": "up", "triton": "up"}

    assert wait_for(targets_up, WAIT_S, interval_s=0.5), api(url, "targets")
    answered = httpx.post(f"{gateway.http}/v1/emotions", json={"text": "I want to give up"}, timeout=30)
    assert answered.status_code == 200

    def counted() -> bool:
        query = 'gateway_requests_total{route="/v1/emotions", status="200"}'
        data = api(url, "query", query=query)
        return bool(data and data["result"] and float(data["result"][0]["value"][1]) >= 1)

    assert wait_for(counted, WAIT_S, interval_s=0.5)

    def evaluated() -> list[dict[str, Any]] | None:
        data = api(url, "rules")
        rules = [r for g in (data or {}).get("groups", []) for r in g["rules"]]
        done = len(rules) == len(ALERTS) and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
        return rules if done and all(r["health"] != "unknown" for r in rules) else None

    assert wait_for(lambda: evaluated() is not None, WAIT_S, interval_s=0.5)
    rules = evaluated() or []
    assert {r["name"] for r in rules} == {a["alert"] for a in ALERTS}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert firing == [], firing  # a healthy stack pages nobody
