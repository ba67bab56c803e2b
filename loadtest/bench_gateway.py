"""Gateway benchmark (``make bench-gateway``), in one run on this machine:

- gateway overhead: gateway (cache miss: every text new) vs direct Triton gRPC, 1 client, p50;
- cache hit: the gateway's own server-side time (``x-total-time``) for a repeated text, p50;
- throughput at 16 clients: gateway + Triton (cache miss) vs a naive FastAPI + transformers pipeline
  service (torch FP32) on the same model.

Same seeded test-split texts on every path, interleaved rounds, medians and spread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
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
    triton_client,
    wait_http,
)
from server.embedded import EmbeddedTriton, ServerConfig
from server.gateway_process import GatewayProcess

log = logging.getLogger("loadtest.bench_gateway")


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    # Unique texts per path and round: no cache ever sees a text twice here.
    fresh = UniqueTexts(load_split("test").texts, args.seed).take
    base = args.base_port
    triton = EmbeddedTriton(
        ServerConfig(
            repository=args.repository,
            http_port=base,
            grpc_port=base + 1,
            metrics_port=base + 2,
            cache_bytes=0,
        )
    )
    triton.start()
    work = Path("build") / "bench"
    gateway = GatewayProcess("127.0.0.1", base + 3, triton.grpc_url, work / "gateway.log")
    os.environ["GATEWAY_CACHE_BACKEND"] = "memory"
    os.environ["GATEWAY_MAX_CONCURRENCY"] = "1024"
    naive = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadtest.peer_service",
            "--backend",
            "torch",
            "--model",
            manifest.source,
            "--port",
            str(base + 4),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        gateway.start()
        wait_http(f"http://127.0.0.1:{base + 4}/healthz")
        direct = triton_client("grpc", triton, "goemotions")
        server_hit_times: list[float] = []
        gw = http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t})
        gw_hit = http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t}, server_hit_times)
        naive_client = http_client(f"http://127.0.0.1:{base + 4}/classify", lambda t: {"text": t})
        rounds = []

        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            res: dict[str, PathResult] = {}
            res["triton-grpc@1"] = closed_loop(direct, fresh(args.requests_1), 1)
            res["gateway@1"] = closed_loop(gw, fresh(args.requests_1), 1)
            server_hit_times.clear()
            res["gateway-hit@1"] = closed_loop(
                gw_hit, ["I finally understand it, thank you!"] * args.requests_1, 1
            )
            res["gateway-hit-server@1"] = PathResult.of(server_hit_times, sum(server_hit_times) or 1.0)
            res["naive@16"] = closed_loop(naive_client, fresh(args.requests_16), 16)
            res["gateway@16"] = closed_loop(gw, fresh(args.requests_16), 16)
            rounds.append(res)
    finally:
        gateway.stop()
        naive.terminate()
        naive.wait(timeout=30)
        triton.stop()
    return summarize(rounds, manifest.version, args)


def summarize(rounds: list[dict[str, PathResult]], version: str, args: argparse.Namespace) -> dict[str, Any]:
    from export.bench import machine_info

    paths = median_paths(rounds)
    overhead = [r["gateway@1"].p50_ms - r["triton-grpc@1"].p50_ms for r in rounds]
    hit = [r["gateway-hit-server@1"].p50_ms for r in rounds]
    speedup = [r["gateway@16"].texts_per_s / r["naive@16"].texts_per_s for r in rounds]
    return {
        "date": dt.date.today().isoformat(),
        "command": "make bench-gateway",
        "machine": machine_info(),
        "model_version": version,
        "rounds": args.rounds,
        "paths": paths,
        "gateway_overhead_p50_ms": spread(overhead),
        "cache_hit_server_p50_ms": spread(hit),
        "gateway_vs_naive_16": spread(speedup),
    }


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gateway_bench.json", out / "gateway_bench.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    o, h, s = (
        report["gateway_overhead_p50_ms"],
        report["cache_hit_server_p50_ms"],
        report["gateway_vs_naive_16"],
    )
    lines = [
        "# Gateway benchmark",
        "",
        f"{report['date']}, {report['machine']['cpu']} ({report['machine']['nproc']} cores), model "
        f"`{report['model_version']}` (embedded Triton, INT8, Triton cache off; gateway in-memory cache). "
        f"Command: `{report['command']}`. {report['rounds']} interleaved rounds, medians [min-max].",
        "",
        f"- Gateway overhead over direct Triton gRPC, p50, 1 client, cache miss: **{o['median']:.2f} ms** "
        f"[{o['range'][0]:.2f}-{o['range'][1]:.2f}] (goal <= 2 ms)",
        f"- Cache hit, server-side (`x-total-time`) p50: **{h['median']:.3f} ms** "
        f"[{h['range'][0]:.3f}-{h['range'][1]:.3f}] (goal < 1 ms)",
        f"- Gateway + Triton vs naive FastAPI + transformers pipeline, 16 clients: **{s['median']:.2f}x** "
        f"[{s['range'][0]:.2f}-{s['range'][1]:.2f}] (goal >= 4x)",
        "",
        *paths_table(report["paths"]),
        "",
    ]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


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
