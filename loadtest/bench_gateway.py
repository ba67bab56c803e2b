"""Gateway benchmark (``make bench-gateway``), in one run on this machine:

- gateway overhead: gateway (cache miss: every text new) vs direct Triton gRPC, 1 client, p50;
- cache hit: the gateway's own server-side time (``x-total-time``) for a repeated text, p50, without API
  keys and with a tenant's key (authentication, scope check; the difference is what auth costs a hit),
  and with a new ``Idempotency-Key`` per request (claimed, then its answer kept: what making requests
  retry-safe costs a hit), in process and, on a gateway whose learner store is a real redis-server, in
  Redis;
- throughput at 16 clients: gateway + Triton (cache miss) vs a naive FastAPI + transformers pipeline
  service (torch FP32) on the same model.

Same seeded test-split texts on every path, interleaved rounds, medians and spread.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

from contract.manifest import read_installed
from export.training.data import load_split
from gateway.core.tenants import create_key
from loadtest import common
from loadtest.peer_service import peer_command
from loadtest.redis_server import redis_server
from server.stack import Stack

WORK = Path("build") / "bench"
HIT_TEXT = "I finally understand it, thank you!"


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    # Unique texts per path and round: no cache ever sees a text twice here.
    fresh = common.UniqueTexts(load_split("test").texts, args.seed).take
    n1, n16 = args.requests_1, args.requests_16
    with Stack(WORK, args.base_port) as stack, redis_server(WORK / "learners-redis.log") as learners_url:
        triton = stack.start_triton(args.repository)
        gateway = stack.start_gateway(
            settings={"GATEWAY_CACHE_BACKEND": "memory", "GATEWAY_MAX_CONCURRENCY": "1024"}, wait=False
        )
        keys_file = stack.work_dir / "keys.json"
        keys_file.unlink(missing_ok=True)  # one fresh key per run
        key = create_key(keys_file, "bench", ["analyse"], key_id="bench")[1]
        keyed = stack.start_gateway(
            "keyed",
            settings={
                "GATEWAY_CACHE_BACKEND": "memory",
                "GATEWAY_MAX_CONCURRENCY": "1024",
                "GATEWAY_API_KEYS_FILE": str(keys_file),
            },
            wait=False,
        )
        in_redis = stack.start_gateway(
            "learners-redis",
            settings={
                "GATEWAY_CACHE_BACKEND": "memory",
                "GATEWAY_MAX_CONCURRENCY": "1024",
                "GATEWAY_TRAJECTORY_BACKEND": "redis",
                "GATEWAY_LEARNER_REDIS_URL": learners_url,
            },
            wait=False,
        )
        naive = stack.start_service(
            "naive", lambda port: peer_command("torch", manifest.source, port), wait=False
        )
        stack.wait_ready()
        direct = common.triton_client("grpc", triton, "goemotions")
        hit_times: list[float] = []
        gw = common.http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t})
        gw_hit = common.http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t}, hit_times)
        keyed_times: list[float] = []
        keyed_hit = common.http_client(
            f"{keyed.url}/v1/emotions", lambda t: {"text": t}, keyed_times, headers={"x-api-key": key}
        )

        def with_new_keys(url: str, times: list[float]) -> Any:
            """A client sending a new Idempotency-Key with every request."""
            return common.http_client(
                url,
                lambda t: {"text": t},
                times,
                request_headers=lambda: {"Idempotency-Key": uuid.uuid4().hex},
            )

        once_times: list[float] = []
        once_hit = with_new_keys(f"{gateway.url}/v1/emotions", once_times)
        redis_times: list[float] = []
        redis_hit = common.http_client(f"{in_redis.url}/v1/emotions", lambda t: {"text": t}, redis_times)
        redis_once_times: list[float] = []
        redis_once_hit = with_new_keys(f"{in_redis.url}/v1/emotions", redis_once_times)
        naive_client = common.http_client(f"{naive.url}/classify", lambda t: {"text": t})

        def hits(client: Any, times: list[float]) -> Any:
            def run_hits() -> common.PathResult:
                times.clear()
                return common.closed_loop(client, [HIT_TEXT] * n1, 1)

            return run_hits

        def server_side(times: list[float]) -> Any:
            return lambda: common.PathResult.of(times, sum(times) or 1.0)

        rounds = common.run_rounds(
            args.rounds,
            lambda _: {
                "triton-grpc@1": lambda: common.closed_loop(direct, fresh(n1), 1),
                "gateway@1": lambda: common.closed_loop(gw, fresh(n1), 1),
                "gateway-hit@1": hits(gw_hit, hit_times),
                "gateway-hit-server@1": server_side(hit_times),
                "keyed-hit@1": hits(keyed_hit, keyed_times),
                "keyed-hit-server@1": server_side(keyed_times),
                "idempotent-hit@1": hits(once_hit, once_times),
                "idempotent-hit-server@1": server_side(once_times),
                "redis-hit@1": hits(redis_hit, redis_times),
                "redis-hit-server@1": server_side(redis_times),
                "redis-idempotent-hit@1": hits(redis_once_hit, redis_once_times),
                "redis-idempotent-hit-server@1": server_side(redis_once_times),
                "naive@16": lambda: common.closed_loop(naive_client, fresh(n16), 16),
                "gateway@16": lambda: common.closed_loop(gw, fresh(n16), 16),
            },
        )
    return summarize(rounds, manifest.version)


def summarize(rounds: list[dict[str, common.PathResult]], version: str) -> dict[str, Any]:
    return common.bench_report(
        "make bench-gateway",
        version,
        rounds,
        gateway_overhead_p50_ms=common.difference(rounds, "gateway@1", "triton-grpc@1"),
        cache_hit_server_p50_ms=common.spread([r["gateway-hit-server@1"].p50_ms for r in rounds]),
        auth_on_cache_hit_p50_ms=common.difference(rounds, "keyed-hit-server@1", "gateway-hit-server@1"),
        idempotency_key_on_cache_hit_p50_ms=common.difference(
            rounds, "idempotent-hit-server@1", "gateway-hit-server@1"
        ),
        idempotency_key_in_redis_on_cache_hit_p50_ms=common.difference(
            rounds, "redis-idempotent-hit-server@1", "redis-hit-server@1"
        ),
        gateway_vs_naive_16=common.ratio(rounds, "gateway@16", "naive@16"),
    )


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    o, h, a, i, r, s = (
        report["gateway_overhead_p50_ms"],
        report["cache_hit_server_p50_ms"],
        report["auth_on_cache_hit_p50_ms"],
        report["idempotency_key_on_cache_hit_p50_ms"],
        report["idempotency_key_in_redis_on_cache_hit_p50_ms"],
        report["gateway_vs_naive_16"],
    )
    return common.write_bench_report(
        report,
        out,
        "gateway_bench",
        "Gateway benchmark",
        "embedded Triton, INT8, Triton cache off; gateway in-memory cache",
        [
            "- Gateway overhead over direct Triton gRPC, p50, 1 client, cache miss: "
            f"{common.spread_text(o, unit=' ms')} (goal <= 2 ms)",
            "- Cache hit, server-side (`x-total-time`) p50: "
            f"{common.spread_text(h, '.3f', ' ms')} (goal < 1 ms)",
            "- What a tenant's API key (authentication + scope check) adds to that cache hit, p50: "
            f"{common.spread_text(a, '.3f', ' ms')} (goal <= 0.2 ms)",
            "- What a new `Idempotency-Key` (claimed, answer kept in process) adds to that cache hit, p50: "
            f"{common.spread_text(i, '.3f', ' ms')} (goal <= 0.2 ms)",
            "- The same with the answers kept in the learner store's Redis (a redis-server on this machine), "
            f"p50: {common.spread_text(r, '.3f', ' ms')} (goal <= 0.5 ms)",
            "- Gateway + Triton vs naive FastAPI + transformers pipeline, 16 clients: "
            f"{common.spread_text(s, unit='x')} (goal >= 4x)",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(
        "loadtest.bench_gateway", __doc__, argv, run, write_report, (200, 400), 18100, 12
    )


if __name__ == "__main__":
    sys.exit(main())
