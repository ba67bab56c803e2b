"""Peer benchmark (``make bench-peers``): the same texts at the same concurrency through every way of
serving this model, in one run on this machine.

Paths: naive (FastAPI + transformers pipeline, torch FP32), ort-inproc-fp32 / ort-inproc-int8 (FastAPI
+ optimum ONNX Runtime in-process), ort-raw (tokenizer + session, no server: the limit), triton-grpc
(the goemotions ensemble), gateway (cache miss: every text new) and gateway-hit (a repeated text).
Text in -> probabilities out on every path; Triton's response cache off; 1 and 16 closed-loop clients;
paths interleaved over rounds; medians and spread of the per-round ratios.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from contract.manifest import read_installed
from contract.spec import SPEC_FILE, ServingSpec
from export.source import EXPORTS_DIR, STUDENT_DIR
from export.training.data import load_split
from loadtest import common
from loadtest.bench_triton import run_raw
from loadtest.peer_service import peer_command
from server.stack import Stack

WORK = Path("build") / "bench" / "peers"
HIT_TEXT = "I finally get it, thank you!"
GOALS = (
    ("triton-grpc@16 / ort-raw@16", "ratio", 0.90, ">="),
    ("gateway@16 / naive@16", "ratio", 4.0, ">="),
    ("gateway@1 p50 - triton-grpc@1 p50 (ms)", "overhead", 2.0, "<="),
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    spec = ServingSpec.read(args.repository / SPEC_FILE)
    source = Path(manifest.source)
    export_dir = str(EXPORTS_DIR / ("student" if source == STUDENT_DIR else source.name))
    # Unique texts per path and round: no cache ever sees a text twice here.
    fresh = common.UniqueTexts(load_split("test").texts, args.seed).take
    peers = {
        "naive": ("torch", manifest.source, None),
        "ort-inproc-fp32": ("onnx", export_dir, "model.fp32.onnx"),
        "ort-inproc-int8": ("onnx", export_dir, "model.int8.onnx"),
    }
    with Stack(WORK, args.base_port) as stack:
        triton = stack.start_triton(args.repository)
        gateway = stack.start_gateway(
            settings={"GATEWAY_CACHE_BACKEND": "memory", "GATEWAY_MAX_CONCURRENCY": "1024"}, wait=False
        )
        services = {
            name: stack.start_service(name, partial(peer_command, backend, model, onnx_file=file), wait=False)
            for name, (backend, model, file) in peers.items()
        }
        stack.wait_ready()
        clients = {
            name: common.http_client(f"{service.url}/classify", lambda t: {"text": t})
            for name, service in services.items()
        }
        clients["triton-grpc"] = common.triton_client("grpc", triton, spec.ensemble_name)
        clients["gateway"] = common.http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t})

        def paths(_: int) -> dict[str, Callable[[], common.PathResult]]:
            measures: dict[str, Callable[[], common.PathResult]] = {}
            for c, n in ((1, args.requests_1), (16, args.requests_16)):
                for name, make in clients.items():
                    measures[f"{name}@{c}"] = partial(common.closed_loop, make, fresh(n), c)
                measures[f"gateway-hit@{c}"] = partial(
                    common.closed_loop, clients["gateway"], [HIT_TEXT] * n, c
                )
                measures[f"ort-raw@{c}"] = partial(
                    run_raw, args.repository, spec, fresh(n), processes=1 if c == 1 else 2, batch=1
                )
            return measures

        rounds = common.run_rounds(args.rounds, paths)
    return summarize(rounds, manifest.served_version(spec.cpu_variant), spec)


def summarize(rounds: list[dict[str, common.PathResult]], version: str, spec: ServingSpec) -> dict[str, Any]:
    per_round = {
        GOALS[0][0]: [r["triton-grpc@16"].texts_per_s / r["ort-raw@16"].texts_per_s for r in rounds],
        GOALS[1][0]: [r["gateway@16"].texts_per_s / r["naive@16"].texts_per_s for r in rounds],
        GOALS[2][0]: [r["gateway@1"].p50_ms - r["triton-grpc@1"].p50_ms for r in rounds],
    }
    goals = {}
    for name, _, goal, op in GOALS:
        values = per_round[name]
        worst = min(values) if op == ">=" else max(values)
        met = worst >= goal if op == ">=" else worst <= goal  # a spread that crosses the goal is no pass
        goals[name] = {**common.spread(values), "goal": f"{op} {goal:g}", "met": met}
    return common.bench_report(
        "make bench-peers",
        version,
        rounds,
        served=(
            f"Triton: classifier {spec.cpu_variant}, {spec.cpu_instances} x {spec.cpu_threads_per_instance} "
            "thread, cache off; peers: 2 ORT/torch threads in one process"
        ),
        goals=goals,
    )


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    lines = [
        "Ratios per round, median [min-max]; a goal whose spread crosses it is not met. The load generator "
        "shares the cores.",
        "",
        "| goal | result | target | met |",
        "|---|---|---|---|",
    ]
    for name, g in report["goals"].items():
        lines.append(
            f"| {name} | {g['median']:.2f} [{g['range'][0]:.2f}-{g['range'][1]:.2f}] | {g['goal']} | "
            f"{'yes' if g['met'] else 'no'} |"
        )
    return common.write_bench_report(
        report,
        out,
        "peers",
        "Peer benchmark: the same texts through every way of serving the model",
        report["served"],
        lines,
    )


def main(argv: list[str] | None = None) -> int:
    return common.bench_main("loadtest.bench_peers", __doc__, argv, run, write_report, (150, 400), 18200, 13)


if __name__ == "__main__":
    sys.exit(main())
