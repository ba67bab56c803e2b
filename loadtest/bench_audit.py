"""Audit-trail cost (``make bench-audit``), in one run on this machine: two gateways on one embedded
Triton, identical but for ``GATEWAY_AUDIT_BACKEND`` (off vs SQLite), fed the same kind of fresh texts
with a learner id, interleaved rounds. Reports the p50 difference at 1 client, the throughput ratio at
16 clients, and what the audit writer wrote and dropped.

The writer runs in the gateway's process (a background task and one database thread), so on 2 cores
whatever it costs shows up here; the request itself only queues rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from contract.manifest import read_installed
from export.data import load_split
from loadtest.common import (
    PathResult,
    UniqueTexts,
    bench_main,
    closed_loop,
    http_client,
    median_paths,
    paths_table,
    spread,
)
from server.embedded import EmbeddedTriton, ServerConfig
from server.gateway_process import GatewayProcess

log = logging.getLogger("loadtest.bench_audit")

WARMUP = 50  # requests per gateway before timing
AUDIT_ENV = ("GATEWAY_AUDIT_BACKEND", "GATEWAY_AUDIT_SQLITE_PATH", "GATEWAY_AUDIT_HASH_KEY")


def audit_counts(metrics_text: str) -> dict[str, float]:
    """written / dropped (all reasons) from the gateway's Prometheus text."""
    counts = {"written": 0.0, "dropped": 0.0}
    for line in metrics_text.splitlines():
        if line.startswith("gateway_audit_written_total "):
            counts["written"] += float(line.split()[-1])
        elif line.startswith("gateway_audit_dropped_total{"):
            counts["dropped"] += float(line.split()[-1])
    return counts


def settled_counts(metrics_url: str, sent: int, timeout_s: float = 10.0) -> dict[str, float]:
    """The writer's counts once every sent row is written or dropped (it flushes in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            counts = audit_counts(resp.read().decode())
        if counts["written"] + counts["dropped"] >= sent or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    fresh = UniqueTexts(load_split("test").texts, args.seed).take
    base = args.base_port
    work = Path("build") / "bench"
    db = work / "audit-bench.sqlite3"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    triton = EmbeddedTriton(
        ServerConfig(
            repository=args.repository,
            http_port=base,
            grpc_port=base + 1,
            metrics_port=base + 2,
            cache_bytes=0,
        )
    )
    saved = {k: os.environ.get(k) for k in AUDIT_ENV}
    os.environ.update(
        GATEWAY_CACHE_BACKEND="off",
        GATEWAY_MAX_CONCURRENCY="1024",
    )
    gateways = {
        "audit-off": GatewayProcess("127.0.0.1", base + 3, triton.grpc_url, work / "gateway-audit-off.log"),
        "audit-sqlite": GatewayProcess("127.0.0.1", base + 4, triton.grpc_url, work / "gateway-audit-on.log"),
    }
    rounds: list[dict[str, PathResult]] = []
    try:
        triton.start()
        for k in AUDIT_ENV:
            os.environ.pop(k, None)
        gateways["audit-off"].start()
        os.environ.update(
            GATEWAY_AUDIT_BACKEND="sqlite",
            GATEWAY_AUDIT_SQLITE_PATH=str(db),
            GATEWAY_AUDIT_HASH_KEY="bench-audit-key-0123456789abcdef",
        )
        gateways["audit-sqlite"].start()
        clients = {
            name: http_client(
                f"{gw.url}/v1/emotions", lambda t: {"text": t, "learner_id": f"bench-{hash(t) % 200}"}
            )
            for name, gw in gateways.items()
        }
        for make in clients.values():  # warm-up: lazy loads, first database writes
            closed_loop(make, fresh(WARMUP), 4)
        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            res: dict[str, PathResult] = {}
            for clients_n, n in ((1, args.requests_1), (16, args.requests_16)):
                for name, make in clients.items():
                    res[f"{name}@{clients_n}"] = closed_loop(make, fresh(n), clients_n)
            rounds.append(res)
        # closed_loop sends one untimed "warm-up" request per client thread on top of its texts
        sent = WARMUP + 4 + args.rounds * (args.requests_1 + 1 + args.requests_16 + 16)
        counts = settled_counts(f"{gateways['audit-sqlite'].url}/metrics", sent)
        counts["sent"] = sent
    finally:
        for gw in gateways.values():
            gw.stop()
        triton.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return summarize(rounds, counts, manifest.version, args)


def summarize(
    rounds: list[dict[str, PathResult]], counts: dict[str, float], version: str, args: argparse.Namespace
) -> dict[str, Any]:
    from export.bench import machine_info

    paths = median_paths(rounds)
    delta = [r["audit-sqlite@1"].p50_ms - r["audit-off@1"].p50_ms for r in rounds]
    ratio = [r["audit-sqlite@16"].texts_per_s / r["audit-off@16"].texts_per_s for r in rounds]
    return {
        "date": dt.date.today().isoformat(),
        "command": "make bench-audit",
        "machine": machine_info(),
        "model_version": version,
        "rounds": args.rounds,
        "paths": paths,
        "p50_delta_ms_1_client": spread(delta),
        "throughput_ratio_16_clients": {
            "median": statistics.median(ratio),
            "range": [min(ratio), max(ratio)],
        },
        "audit_rows": counts,
    }


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "audit_bench.json", out / "audit_bench.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    d, q, c = report["p50_delta_ms_1_client"], report["throughput_ratio_16_clients"], report["audit_rows"]
    lines = [
        "# Audit-trail benchmark",
        "",
        f"{report['date']}, {report['machine']['cpu']} ({report['machine']['nproc']} cores), model "
        f"`{report['model_version']}` (embedded Triton, INT8, both caches off, every request with a learner "
        f"id). Command: `{report['command']}`. Two gateways on one Triton, audit off vs SQLite; "
        f"{report['rounds']} interleaved rounds, medians [min-max].",
        "",
        f"- p50 at 1 client, audit on minus off: **{d['median']:+.2f} ms** "
        f"[{d['range'][0]:+.2f} to {d['range'][1]:+.2f}]",
        f"- Throughput at 16 clients, audit on / off: **{q['median']:.2f}x** "
        f"[{q['range'][0]:.2f}-{q['range'][1]:.2f}]",
        f"- Audit rows: {c.get('sent', 0):.0f} texts sent, {c['written']:.0f} written, "
        f"{c['dropped']:.0f} dropped",
        "",
        *paths_table(report["paths"]),
        "",
    ]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "python -m loadtest.bench_audit",
        __doc__,
        argv,
        run,
        write_report,
        requests_1=500,
        requests_16=2000,
        base_port=18140,
        seed=31,
    )


if __name__ == "__main__":
    sys.exit(main())
