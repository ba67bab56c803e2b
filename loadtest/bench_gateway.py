"""Gateway benchmark (``make bench-gateway``), in one run on this machine:

- gateway overhead: gateway (cache miss: every text new) vs direct Triton gRPC, 1 client, p50;
- cache hit: the gateway's own server-side time (``x-total-time``) for a repeated text, p50;
- throughput at 16 clients: gateway + Triton (cache miss) vs a naive FastAPI + transformers pipeline
  service (torch FP32) on the same model.

Same seeded test-split texts on every path, interleaved rounds, medians and spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from contract.manifest import read_installed
from export.training.data import load_split
from loadtest.common import (
    PathResult,
    UniqueTexts,
    bench_main,
    bench_report,
    closed_loop,
    http_client,
    run_rounds,
    spread,
    spread_text,
    triton_client,
    write_bench_report,
)
from loadtest.peer_service import peer_command
from server.stack import Stack

WORK = Path("build") / "bench"
HIT_TEXT = "I finally understand it, thank you!"


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    # Unique texts per path and round: no cache ever sees a text twice here.
    fresh = UniqueTexts(load_split("test").texts, args.seed).take
    n1, n16 = args.requests_1, args.requests_16
    with Stack(WORK, args.base_port) as stack:
        triton = stack.start_triton(args.repository)
        gateway = stack.start_gateway(
            settings={"GATEWAY_CACHE_BACKEND": "memory", "GATEWAY_MAX_CONCURRENCY": "1024"}, wait=False
        )
        naive = stack.start_service(
            "naive", lambda port: peer_command("torch", manifest.source, port), wait=False
        )
        stack.wait_ready()
        direct = triton_client("grpc", triton, "goemotions")
        hit_times: list[float] = []
        gw = http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t})
        gw_hit = http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t}, hit_times)
        naive_client = http_client(f"{naive.url}/classify", lambda t: {"text": t})

        def hits() -> PathResult:
            hit_times.clear()
            return closed_loop(gw_hit, [HIT_TEXT] * n1, 1)

        def hits_server_side() -> PathResult:
            return PathResult.of(hit_times, sum(hit_times) or 1.0)

        rounds = run_rounds(
            args.rounds,
            lambda _: {
                "triton-grpc@1": lambda: closed_loop(direct, fresh(n1), 1),
                "gateway@1": lambda: closed_loop(gw, fresh(n1), 1),
                "gateway-hit@1": hits,
                "gateway-hit-server@1": hits_server_side,
                "naive@16": lambda: closed_loop(naive_client, fresh(n16), 16),
                "gateway@16": lambda: closed_loop(gw, fresh(n16), 16),
            },
        )
    return summarize(rounds, manifest.version)


def summarize(rounds: list[dict[str, PathResult]], version: str) -> dict[str, Any]:
    return bench_report(
        "make bench-gateway",
        version,
        rounds,
        gateway_overhead_p50_ms=spread([r["gateway@1"].p50_ms - r["triton-grpc@1"].p50_ms for r in rounds]),
        cache_hit_server_p50_ms=spread([r["gateway-hit-server@1"].p50_ms for r in rounds]),
        gateway_vs_naive_16=spread([r["gateway@16"].texts_per_s / r["naive@16"].texts_per_s for r in rounds]),
    )


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    o, h, s = (
        report["gateway_overhead_p50_ms"],
        report["cache_hit_server_p50_ms"],
        report["gateway_vs_naive_16"],
    )
    return write_bench_report(
        report,
        out,
        "gateway_bench",
        "Gateway benchmark",
        "embedded Triton, INT8, Triton cache off; gateway in-memory cache",
        [
            "- Gateway overhead over direct Triton gRPC, p50, 1 client, cache miss: "
            f"{spread_text(o, unit=' ms')} (goal <= 2 ms)",
            f"- Cache hit, server-side (`x-total-time`) p50: {spread_text(h, '.3f', ' ms')} (goal < 1 ms)",
            "- Gateway + Triton vs naive FastAPI + transformers pipeline, 16 clients: "
            f"{spread_text(s, unit='x')} (goal >= 4x)",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "python -m loadtest.bench_gateway",
        __doc__,
        argv,
        run,
        write_report,
        requests_1=200,
        requests_16=400,
        base_port=18100,
        seed=12,
    )


if __name__ == "__main__":
    sys.exit(main())
