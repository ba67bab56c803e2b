"""Audit-trail cost (``make bench-audit``), in one run on this machine: two gateways on one embedded
Triton, identical but for ``GATEWAY_AUDIT_BACKEND`` (off vs SQLite), fed the same kind of fresh texts
with a learner id, interleaved rounds. Reports the p50 difference at 1 client, the throughput ratio at
16 clients, and what the audit writer wrote and dropped.

The writer runs in the gateway's process (a background task and one database thread), so on 2 cores
whatever it costs shows up here; the request itself only queues rows.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from contract.manifest import read_installed
from export.training.data import load_split
from loadtest import common
from server.probes import metric, scrape, wait_for
from server.stack import Stack

WORK = Path("build") / "bench"
WARMUP = 50  # requests per gateway before timing
AUDIT_KEY = "bench-audit-key-0123456789abcdef"


def audit_counts(metrics_text: str) -> dict[str, float]:
    """written / dropped (all reasons) from the gateway's Prometheus text."""
    return {
        "written": metric(metrics_text, "gateway_audit_written_total"),
        "dropped": metric(metrics_text, "gateway_audit_dropped_total"),
    }


def settled_counts(metrics_url: str, sent: int, timeout_s: float = 10.0) -> dict[str, float]:
    """The writer's counts once every sent row is written or dropped (it flushes in the background),
    or as they are after ``timeout_s``."""

    def settled() -> bool:
        counts = audit_counts(scrape(metrics_url))
        return counts["written"] + counts["dropped"] >= sent

    wait_for(settled, timeout_s, interval_s=0.2)
    return audit_counts(scrape(metrics_url))


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    fresh = common.UniqueTexts(load_split("test").texts, args.seed).take
    db = WORK / "audit-bench.sqlite3"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    both = {"GATEWAY_CACHE_BACKEND": "off", "GATEWAY_MAX_CONCURRENCY": "1024"}
    sqlite = {
        "GATEWAY_AUDIT_BACKEND": "sqlite",
        "GATEWAY_AUDIT_SQLITE_PATH": str(db),
        "GATEWAY_AUDIT_HASH_KEY": AUDIT_KEY,
    }
    with Stack(WORK, args.base_port) as stack:
        stack.start_triton(args.repository)
        gateways = {
            "audit-off": stack.start_gateway("gateway-audit-off", both, wait=False),
            "audit-sqlite": stack.start_gateway("gateway-audit-on", {**both, **sqlite}, wait=False),
        }
        stack.wait_ready()
        clients = {
            name: common.http_client(
                f"{gw.url}/v1/emotions", lambda t: {"text": t, "learner_id": f"bench-{hash(t) % 200}"}
            )
            for name, gw in gateways.items()
        }
        for make in clients.values():  # warm-up: lazy loads, first database writes
            common.closed_loop(make, fresh(WARMUP), 4)
        rounds = common.run_rounds(
            args.rounds,
            lambda _: {
                f"{name}@{c}": partial(common.closed_loop, make, fresh(n), c)
                for c, n in ((1, args.requests_1), (16, args.requests_16))
                for name, make in clients.items()
            },
        )
        # closed_loop sends one untimed "warm-up" request per client thread on top of its texts
        sent = WARMUP + 4 + args.rounds * (args.requests_1 + 1 + args.requests_16 + 16)
        counts = {**settled_counts(f"{gateways['audit-sqlite'].url}/metrics", sent), "sent": sent}
    return summarize(rounds, counts, manifest.version)


def summarize(
    rounds: list[dict[str, common.PathResult]], counts: dict[str, float], version: str
) -> dict[str, Any]:
    return common.bench_report(
        "make bench-audit",
        version,
        rounds,
        p50_delta_ms_1_client=common.difference(rounds, "audit-sqlite@1", "audit-off@1"),
        throughput_ratio_16_clients=common.ratio(rounds, "audit-sqlite@16", "audit-off@16"),
        audit_rows=counts,
    )


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    d, q, c = report["p50_delta_ms_1_client"], report["throughput_ratio_16_clients"], report["audit_rows"]
    return common.write_bench_report(
        report,
        out,
        "audit_bench",
        "Audit-trail benchmark",
        "embedded Triton, INT8, both caches off, every request with a learner id; two gateways on one "
        "Triton, audit off vs SQLite",
        [
            f"- p50 at 1 client, audit on minus off: {common.spread_text(d, '+.2f', ' ms', ' to ')}",
            f"- Throughput at 16 clients, audit on / off: {common.spread_text(q, unit='x')}",
            f"- Audit rows: {c.get('sent', 0):.0f} texts sent, {c['written']:.0f} written, "
            f"{c['dropped']:.0f} dropped",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    return common.bench_main("loadtest.bench_audit", __doc__, argv, run, write_report, (500, 2000), 18140, 31)


if __name__ == "__main__":
    sys.exit(main())
