"""The Prometheus alerts (deploy/prometheus/alerts.yml) and the compose Prometheus, checked without
Prometheus: every expression parses (promql-parser, the Rust PromQL parser), every gateway metric and label
it names is one the gateway exports, every Triton metric is one an embedded Triton was seen exporting, and
the compose service scrapes what the stack serves and loads these rules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
ALERTS = [rule for group in RULES for rule in group["rules"]]
# Triton 2.51's inference metrics the rules may name (seen on the embedded server's :8002/metrics by
# loadtest/bench_triton.py), with their labels; `up` is Prometheus's own, per job.
TRITON = {
    name: {"model", "version"}
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    )
}
# what every series gets from the scrape (target labels)
SCRAPE_LABELS = {"instance", "job"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def gateway_series() -> dict[str, set[str]]:
    """Each series name the gateway exports, with its label names (``le`` on histogram buckets)."""
    series: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, kind, labels = metric._name, metric._type, set(metric._labelnames)
        for suffix in SUFFIXES[kind]:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """The metric name and matched label names of every selector in ``expr`` (which must parse)."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_every_alert_is_complete():
    names = [a["alert"] for a in ALERTS]
    assert len(names) == len(set(names)) and len(names) >= 10
    for alert in ALERTS:
        assert alert["labels"]["severity"] in ("page", "ticket"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_each_expression_parses_and_names_only_what_is_exported(alert):
    exported = {**gateway_series(), **TRITON, "up": set()}
    found = selectors(alert["expr"])
    assert found, alert["expr"]
    for name, labels in found:
        assert name in exported, f"{alert['alert']}: no metric {name}"
        unknown = labels - exported[name] - SCRAPE_LABELS
        assert not unknown, f"{alert['alert']}: {name} has no label {sorted(unknown)}"


def test_the_metric_check_catches_a_misspelt_metric_and_label():
    exported = gateway_series()
    assert "gateway_requests_total" in exported and "status" in exported["gateway_requests_total"]
    assert selectors('rate(gateway_request_total{staus="500"}[5m])') == [("gateway_request_total", {"staus"})]
    assert "gateway_request_total" not in exported
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(gateway_requests_total[5m])")


def test_compose_prometheus_scrapes_the_stack_and_loads_the_rules():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    service = compose["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if v.startswith("./")}
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["gateway:8080"]
    assert "8080:8080" in compose["gateway"]["ports"]
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    assert any(p.endswith(":8002:8002") for p in compose["triton"]["ports"])
    key_file = jobs["gateway"]["authorization"]["credentials_file"]
    assert (ROOT / mounts[key_file]).exists()  # the placeholder for a metrics-scoped key
    # every `up{job=...}` alert names a job that is scraped
    for alert in ALERTS:
        if alert["expr"].startswith("up{"):
            assert alert["expr"].split('"')[1] in jobs


def promtool() -> str:
    """Prometheus's own rule checker (``make install-dev`` puts it beside the venv's python)."""
    found = Path(sys.executable).with_name("promtool")
    tool = str(found) if found.exists() else shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (make install-dev fetches it from Debian's prometheus package)")
    return tool


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    """Prometheus's own rule engine: the rules load, and alerts_test.yml's synthetic series fire (or do
    not fire) each tested alert at the times and with the labels and annotations it expects."""
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout
    tested = subprocess.run(
        [tool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_accepts_the_prometheus_config(tmp_path):
    """The config as the container reads it: its /etc/prometheus paths point at this repository's files."""
    tool = promtool()
    text = (PROMETHEUS / "prometheus.yml").read_text()
    for name in ("alerts.yml", "gateway-metrics.key"):
        text = text.replace(f"/etc/prometheus/{name}", str(PROMETHEUS / name))
    (tmp_path / "prometheus.yml").write_text(text)
    checked = subprocess.run(
        [tool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
