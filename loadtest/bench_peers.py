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
import datetime as dt
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import read_installed
from contract.spec import SPEC_FILE, ServingSpec
from export.data import load_split
from export.source import EXPORTS_DIR, STUDENT_DIR
from loadtest.bench_triton import run_raw
from loadtest.common import (
    PathResult,
    UniqueTexts,
    bench_main,
    closed_loop,
    http_client,
    median_paths,
    triton_client,
    wait_http,
)
from server.embedded import EmbeddedTriton, ServerConfig
from server.gateway_process import GatewayProcess

log = logging.getLogger("loadtest.bench_peers")

GOALS = (
    ("triton-grpc@16 / ort-raw@16", "ratio", 0.90, ">="),
    ("gateway@16 / naive@16", "ratio", 4.0, ">="),
    ("gateway@1 p50 - triton-grpc@1 p50 (ms)", "overhead", 2.0, "<="),
)


def _peer(backend: str, model: str, port: int, onnx_file: str | None = None) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "loadtest.peer_service",
        "--backend",
        backend,
        "--model",
        model,
        "--port",
        str(port),
    ]
    if onnx_file:
        cmd += ["--onnx-file", onnx_file]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    spec = ServingSpec.read(args.repository / SPEC_FILE)
    source = Path(manifest.source)
    export_dir = EXPORTS_DIR / ("student" if source == STUDENT_DIR else source.name)
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
    os.environ.update(
        GATEWAY_CACHE_BACKEND="memory",
        GATEWAY_MAX_CONCURRENCY="1024",
    )
    gateway = GatewayProcess(
        "127.0.0.1", base + 3, f"127.0.0.1:{base + 1}", Path("build/bench/peers_gateway.log")
    )
    peers = {
        "naive": (_peer("torch", manifest.source, base + 4), base + 4),
        "ort-inproc-fp32": (_peer("onnx", str(export_dir), base + 5, "model.fp32.onnx"), base + 5),
        "ort-inproc-int8": (_peer("onnx", str(export_dir), base + 6, "model.int8.onnx"), base + 6),
    }

    rounds: list[dict[str, PathResult]] = []
    try:
        triton.start()
        gateway.start()
        for _, port in peers.values():
            wait_http(f"http://127.0.0.1:{port}/healthz")
        clients = {
            name: http_client(f"http://127.0.0.1:{port}/classify", lambda t: {"text": t})
            for name, (_, port) in peers.items()
        }
        clients["triton-grpc"] = triton_client("grpc", triton, spec.ensemble_name)
        clients["gateway"] = http_client(f"{gateway.url}/v1/emotions", lambda t: {"text": t})
        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            res: dict[str, PathResult] = {}
            for c, n in ((1, args.requests_1), (16, args.requests_16)):
                for name, make in clients.items():
                    res[f"{name}@{c}"] = closed_loop(make, fresh(n), c)
                res[f"gateway-hit@{c}"] = closed_loop(
                    clients["gateway"], ["I finally get it, thank you!"] * n, c
                )
                res[f"ort-raw@{c}"] = run_raw(
                    args.repository, spec, fresh(n), processes=1 if c == 1 else 2, batch=1
                )
            rounds.append(res)
    finally:
        gateway.stop()
        for proc, _ in peers.values():
            proc.terminate()
            proc.wait(timeout=30)
        triton.stop()
    return summarize(rounds, manifest.served_version(spec.cpu_variant), spec, args)


def summarize(
    rounds: list[dict[str, PathResult]], version: str, spec: ServingSpec, args: argparse.Namespace
) -> dict[str, Any]:
    from export.bench import machine_info

    paths = median_paths(rounds)
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
        goals[name] = {
            "median": statistics.median(values),
            "range": [min(values), max(values)],
            "goal": f"{op} {goal:g}",
            "met": met,
        }
    return {
        "date": dt.date.today().isoformat(),
        "command": "make bench-peers",
        "machine": machine_info(),
        "model_version": version,
        "served": (
            f"Triton: classifier {spec.cpu_variant}, {spec.cpu_instances} x {spec.cpu_threads_per_instance} "
            "thread, cache off; peers: 2 ORT/torch threads in one process"
        ),
        "rounds": args.rounds,
        "paths": paths,
        "goals": goals,
    }


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out / "peers.json", out / "peers.md", out / "peers.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    names = [
        "naive",
        "ort-inproc-fp32",
        "ort-inproc-int8",
        "ort-raw",
        "triton-grpc",
        "gateway",
        "gateway-hit",
    ]
    p = report["paths"]
    lines = [
        "# Peer benchmark: the same texts through every way of serving the model",
        "",
        f"{report['date']}, {report['machine']['cpu']} ({report['machine']['nproc']} cores), model "
        f"`{report['model_version']}`. {report['served']}. Command: `{report['command']}`. "
        f"{report['rounds']} interleaved rounds, medians; ratios per round, median [min-max]; a goal whose "
        "spread crosses it is not met. The load generator shares the 2 cores.",
        "",
        "| path | texts/s @16 | p50 ms @16 | p95 ms @16 | texts/s @1 | p50 ms @1 | p95 ms @1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        a, b = p[f"{n}@16"], p[f"{n}@1"]
        lines.append(
            f"| {n} | {a['texts_per_s']:.0f} | {a['p50_ms']:.2f} | {a['p95_ms']:.2f} | "
            f"{b['texts_per_s']:.0f} | {b['p50_ms']:.2f} | {b['p95_ms']:.2f} |"
        )
    lines += ["", "| goal | result | target | met |", "|---|---|---|---|"]
    for name, g in report["goals"].items():
        lines.append(
            f"| {name} | {g['median']:.2f} [{g['range'][0]:.2f}-{g['range'][1]:.2f}] | {g['goal']} | "
            f"{'yes' if g['met'] else 'no'} |"
        )
    lines += ["", "![peers](peers.png)", ""]
    md_path.write_text("\n".join(lines))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(names))
    ax1.bar(x, [p[f"{n}@16"]["texts_per_s"] for n in names], color="tab:blue")
    ax1.set_title("throughput, 16 clients (texts/s)")
    ax2.bar(x, [p[f"{n}@1"]["p50_ms"] for n in names], color="tab:orange")
    ax2.set_title("p50 latency, 1 client (ms)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=30, ha="right")
    fig.suptitle(f"GoEmotions serving peers on {report['machine']['nproc']} CPU cores ({report['date']})")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return [json_path, md_path, png_path]


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "python -m loadtest.bench_peers",
        __doc__,
        argv,
        run,
        write_report,
        requests_1=150,
        requests_16=400,
        base_port=18200,
        seed=13,
    )


if __name__ == "__main__":
    sys.exit(main())
