"""Rate limits across replicas (``python -m loadtest.bench_ratelimit``): two gateways on one embedded
Triton and one Redis, one API key, a limit of N per minute per key, and clients sending as fast as they
can to both gateways in turn for less than one window. Counted in Redis, the two admit N together; the
control run counts in each process's memory (``GATEWAY_RATE_LIMIT_BACKEND=memory``), which admits up to
N per replica.

The moving window admits a request when fewer than N were admitted in the last minute, so over a run
shorter than the window the admitted count is the limit itself: what is measured is how close to N the
replicas together stay (target: within 5 %).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from contract.manifest import read_installed
from export.pipeline import MODEL_REPOSITORY
from loadtest import common
from loadtest.redis_server import redis_server
from server.stack import Stack

WORK = Path("build") / "bench"
KEY = "bench-ratelimit-key-0123456789abcdef"
TARGET = 0.05  # admitted within 5 % of the limit


def drive(urls: list[str], duration_s: float, clients: int) -> Counter[int]:
    """``clients`` threads posting fresh texts to ``urls`` in turn for ``duration_s``: statuses counted."""
    import httpx

    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    turn = itertools.count()
    deadline = time.monotonic() + duration_s

    def client() -> None:
        with httpx.Client(timeout=30, headers={"x-api-key": KEY}) as http:
            while time.monotonic() < deadline:
                i = next(turn)
                status = http.post(
                    f"{urls[i % len(urls)]}/v1/emotions", json={"text": f"text {i}"}
                ).status_code
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    runs: dict[str, dict[str, Any]] = {}
    with Stack(WORK, args.base_port) as stack, redis_server(WORK / "ratelimit-redis.log") as redis_url:
        stack.start_triton(args.repository)
        for backend in ("redis", "memory"):
            settings = {
                "GATEWAY_API_KEYS": KEY,
                "GATEWAY_CACHE_BACKEND": "off",
                "GATEWAY_REDIS_URL": redis_url,
                "GATEWAY_RATE_LIMIT": f"{args.limit}/minute",
                "GATEWAY_RATE_LIMIT_BACKEND": backend,
            }
            gateways = [stack.start_gateway(f"gateway-{backend}-{i}", settings, wait=False) for i in range(2)]
            for g in gateways:
                g.wait_ready()
            statuses = drive([g.url for g in gateways], args.duration, args.clients)
            for g in gateways:
                g.stop()
            admitted = statuses[200]
            runs[backend] = {
                "admitted": admitted,
                "refused_429": statuses[429],
                "other": sum(n for s, n in statuses.items() if s not in (200, 429)),
                "admitted_over_limit": round(admitted / args.limit, 4),
            }
    from export.bench import machine_info

    return {
        "date": dt.date.today().isoformat(),
        "command": "python -m loadtest.bench_ratelimit " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "model_version": manifest.version,
        "limit_per_minute": args.limit,
        "replicas": 2,
        "duration_s": args.duration,
        "clients": args.clients,
        "runs": runs,
        "target": f"redis: admitted within {TARGET:.0%} of the limit",
        "passed": abs(runs["redis"]["admitted"] - args.limit) <= TARGET * args.limit,
    }


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    limit, runs = report["limit_per_minute"], report["runs"]
    rows = [
        f"| {name} | {r['admitted']} | {r['admitted_over_limit']:.3f} | {r['refused_429']} | {r['other']} |"
        for name, r in runs.items()
    ]
    markdown = [
        "# Rate limits across replicas",
        "",
        common.header(
            report,
            f"two gateways, one Redis, {limit}/minute per key, {report['clients']} clients "
            f"for {report['duration_s']:g} s, result cache off",
        ),
        "",
        "| counted in | admitted | admitted / limit | 429 | other |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Target ({report['target']}): {'met' if report['passed'] else 'NOT met'}.",
        "",
    ]
    return common.write_results(out, "ratelimit_bench", report, markdown)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_ratelimit", description=__doc__)
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--limit", type=int, default=300, help="requests per minute per key")
    p.add_argument("--duration", type=float, default=50.0, help="seconds of load (under one window)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--base-port", type=int, default=18160)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    for path in write_report(run(args), args.out):
        print(f"wrote {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
