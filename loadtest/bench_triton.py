"""Triton-served throughput vs the raw ONNX Runtime session, in one run (``make bench-triton``).

Protocol (../shared/notes/benchmarks.md): the same seeded test-split texts on every path, text in ->
28 probabilities out (tokenization counted everywhere), same model variant and threads as served
(the spec's CPU variant, 1 ORT thread per instance), closed loop with 1 and 16 clients, paths
interleaved over rounds, medians and spread. Triton's response cache is off (cache-off figures are
the headline). The load generator shares the 2 cores with the server, as it would on one node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing as mp
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import read_installed
from contract.spec import SPEC_FILE, ServingSpec
from export.arrays import Array
from export.data import load_split
from loadtest.common import PathResult, bench_main, closed_loop, triton_client
from server.embedded import EmbeddedTriton, ServerConfig

log = logging.getLogger("loadtest.bench_triton")

RESULTS = Path("results")


# ---- raw ONNX Runtime: tokenizer + session in-process, no server (the limit) -------------------------


def _encode(tokenizer: Any, texts: list[str], names: list[str], pad_id: int) -> dict[str, Array]:
    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(texts), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: arrays[n] for n in names}


def _raw_worker(args: tuple[str, str, list[str], int, list[str], int, int, Any]) -> tuple[list[float], float]:
    model_file, tokenizer_file, names, max_length, texts, batch, threads, barrier = args
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]") or tokenizer.token_to_id("<pad>") or 0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_file, opts, providers=["CPUExecutionProvider"])
    for i in range(0, min(len(texts), 64), batch):  # warm-up
        session.run(["logits"], _encode(tokenizer, texts[i : i + batch], names, pad_id))
    barrier.wait()
    latencies, start = [], time.perf_counter()
    for i in range(0, len(texts), batch):
        t0 = time.perf_counter()
        logits = session.run(["logits"], _encode(tokenizer, texts[i : i + batch], names, pad_id))[0]
        _ = 1.0 / (1.0 + np.exp(-logits))  # text in -> probabilities out, like the ensemble
        latencies.extend([time.perf_counter() - t0] * len(texts[i : i + batch]))
    return latencies, time.perf_counter() - start


def run_raw(repo: Path, spec: ServingSpec, texts: list[str], processes: int, batch: int) -> PathResult:
    model = str(repo / "classifier" / "1" / f"model.{spec.cpu_variant}.onnx")
    tok = str(repo / "tokenizer" / "1" / "tokenizer.json")
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        shares = [texts[i::processes] for i in range(processes)]
        args = [
            (
                model,
                tok,
                spec.input_names,
                spec.max_length,
                share,
                batch,
                spec.cpu_threads_per_instance,
                barrier,
            )
            for share in shares
        ]
        with ctx.Pool(processes) as pool:
            out = pool.map(_raw_worker, args)
    latencies = [x for lat, _ in out for x in lat]
    return PathResult.of(latencies, max(wall for _, wall in out))


# ---- Triton: the goemotions ensemble over gRPC or HTTP, closed loop --------------------------------


def scrape(metrics_url: str, model: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out = {}
    for name in (
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


# ---- the run -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    repo = args.repository
    spec = ServingSpec.read(repo / SPEC_FILE)
    manifest = read_installed(repo)
    if manifest is None:
        raise SystemExit(f"no model installed in {repo}; run `make prepare` first")
    rng = np.random.default_rng(args.seed)
    test = load_split("test").texts
    sample = [test[i] for i in rng.permutation(len(test))]
    n1, n16 = args.requests_1, args.requests_16

    config = ServerConfig(
        repository=repo,
        http_port=args.base_port,
        grpc_port=args.base_port + 1,
        metrics_port=args.base_port + 2,
        cache_bytes=0,
    )
    server = EmbeddedTriton(config)
    server.start()
    try:
        cold_start = server.startup_seconds
        rss_loaded = server.rss_bytes()
        clients = {p: triton_client(p, server, spec.ensemble_name) for p in ("grpc", "http")}
        rounds: list[dict[str, Any]] = []
        batch_sizes: list[float] = []
        for r in range(args.rounds):
            log.info("round %d/%d", r + 1, args.rounds)
            res: dict[str, Any] = {}
            # Each round uses its own slice of texts: no path sees a text twice within a round.
            off = (r * (n1 + n16)) % max(1, len(sample) - n1 - n16)
            t1, t16 = sample[off : off + n1], sample[off + n1 : off + n1 + n16]
            res["ort-raw@1"] = run_raw(repo, spec, t1, processes=1, batch=1)
            res["triton-grpc@1"] = closed_loop(clients["grpc"], t1, 1)
            res["triton-http@1"] = closed_loop(clients["http"], t1, 1)
            # The raw ceiling at 16: best of the layouts that fit 2 cores (measured: 2 x 1 thread, batch 1).
            candidates = {
                f"{p}proc-bs{b}": run_raw(repo, spec, t16, processes=p, batch=b)
                for p, b in ((spec.cpu_instances, 1), (spec.cpu_instances, 8))
            }
            best = max(candidates, key=lambda k: candidates[k].texts_per_s)
            res["ort-raw@16"] = candidates[best]
            res["ort-raw@16-layout"] = best
            before = scrape(server.metrics_url, "classifier")
            res["triton-grpc@16"] = closed_loop(clients["grpc"], t16, 16)
            after = scrape(server.metrics_url, "classifier")
            executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
            batch_sizes.append(
                (after["nv_inference_count"] - before["nv_inference_count"]) / max(executions, 1)
            )
            res["triton-http@16"] = closed_loop(clients["http"], t16, 16)
            rounds.append(res)
        rss_after = server.rss_bytes()
        totals = {m: scrape(server.metrics_url, m) for m in ("tokenizer", "classifier", "postprocess")}
    finally:
        server.stop()
    return summarize(
        rounds,
        batch_sizes,
        cold_start,
        rss_loaded,
        rss_after,
        totals,
        spec,
        manifest.served_version(spec.cpu_variant),
        args,
    )


def summarize(
    rounds: list[dict[str, Any]],
    batch_sizes: list[float],
    cold_start: float | None,
    rss_loaded: int,
    rss_after: int,
    totals: dict[str, dict[str, float]],
    spec: ServingSpec,
    version: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from export.bench import machine_info

    paths = [k for k in rounds[0] if isinstance(rounds[0][k], PathResult)]
    table: dict[str, Any] = {}
    for p in paths:
        rs = [r[p] for r in rounds]
        table[p] = {
            f: statistics.median(getattr(x, f) for x in rs)
            for f in ("texts_per_s", "p50_ms", "p95_ms", "p99_ms")
        }
        table[p]["rounds"] = [x.__dict__ for x in rs]
    ratios = {}
    for c in (1, 16):
        for proto in ("grpc", "http"):
            per_round = [r[f"triton-{proto}@{c}"].texts_per_s / r[f"ort-raw@{c}"].texts_per_s for r in rounds]
            ratios[f"triton-{proto}@{c}"] = {
                "median": statistics.median(per_round),
                "range": [min(per_round), max(per_round)],
            }
    where_time = {
        m: {
            "avg_batch": t["nv_inference_count"] / max(t["nv_inference_exec_count"], 1),
            "queue_us_per_request": t["nv_inference_queue_duration_us"] / max(t["nv_inference_count"], 1),
            "compute_us_per_request": t["nv_inference_compute_infer_duration_us"]
            / max(t["nv_inference_count"], 1),
        }
        for m, t in totals.items()
    }
    return {
        "date": dt.date.today().isoformat(),
        "command": "make bench-triton",
        "machine": machine_info(),
        "model_version": version,
        "variant": spec.cpu_variant,
        "served_as": (
            f"classifier {spec.cpu_instances} instances x {spec.cpu_threads_per_instance} ORT thread, "
            f"queue delay {spec.max_queue_delay_us} us, response cache off"
        ),
        "rounds": args.rounds,
        "requests": {"clients_1": args.requests_1, "clients_16": args.requests_16},
        "cold_start_s": cold_start,
        "rss_mb_loaded": rss_loaded / 1e6,
        "rss_mb_after": rss_after / 1e6,
        "avg_classifier_batch_at_16_grpc": {
            "median": statistics.median(batch_sizes),
            "per_round": batch_sizes,
        },
        "ort_raw_16_layouts_chosen": [r["ort-raw@16-layout"] for r in rounds],
        "paths": table,
        "ratio_vs_raw": ratios,
        "where_time_goes": where_time,
    }


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (
        out / "triton_bench.json",
        out / "triton_bench.md",
        out / "triton_bench.png",
    )
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    t, ratio = report["paths"], report["ratio_vs_raw"]
    lines = [
        "# Triton vs raw ONNX Runtime (embedded CPU server)",
        "",
        f"{report['date']}, {report['machine']['cpu']} ({report['machine']['nproc']} cores), model "
        f"`{report['model_version']}` ({report['variant']}), {report['served_as']}. "
        f"Command: `{report['command']}`. {report['rounds']} interleaved rounds, medians; "
        f"{report['requests']['clients_1']} / {report['requests']['clients_16']} single-text requests "
        "per path at 1 / 16 clients; text in -> probabilities out on every path.",
        "",
        "| path | clients | texts/s | p50 ms | p95 ms | p99 ms | vs ort-raw (median [min-max]) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in t.items():
        path, clients = name.split("@")
        r = ratio.get(name)
        rs = f"{r['median']:.2f} [{r['range'][0]:.2f}-{r['range'][1]:.2f}]" if r else "1.00 (baseline)"
        lines.append(
            f"| {path} | {clients} | {row['texts_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {rs} |"
        )
    b = report["avg_classifier_batch_at_16_grpc"]
    lines += [
        "",
        f"- Cold start to ready: {report['cold_start_s']:.1f} s. Server RSS (tritonserver + python stubs) "
        f"with the model loaded: {report['rss_mb_loaded']:.0f} MB ({report['rss_mb_after']:.0f} MB after "
        "the run).",
        f"- Dynamic batching at 16 gRPC clients: {b['median']:.2f} requests per classifier execution "
        f"(per round: {', '.join(f'{x:.2f}' for x in b['per_round'])}).",
        f"- ort-raw@16 layout per round: {', '.join(report['ort_raw_16_layouts_chosen'])}.",
        "",
        "Where time goes (whole run, per request, from Triton's metrics):",
        "",
        "| model | avg batch | queue us | compute us |",
        "|---|---:|---:|---:|",
    ]
    for m, w in report["where_time_goes"].items():
        lines.append(
            f"| {m} | {w['avg_batch']:.2f} | {w['queue_us_per_request']:.0f} | "
            f"{w['compute_us_per_request']:.0f} |"
        )
    lines += ["", "![throughput and p95](triton_bench.png)", ""]
    md_path.write_text("\n".join(lines))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["ort-raw", "triton-grpc", "triton-http"]
    x = np.arange(len(names))
    for i, c in enumerate((1, 16)):
        ax1.bar(x + i * 0.4, [t[f"{n}@{c}"]["texts_per_s"] for n in names], 0.4, label=f"{c} client(s)")
        ax2.bar(x + i * 0.4, [t[f"{n}@{c}"]["p95_ms"] for n in names], 0.4, label=f"{c} client(s)")
    for ax, title in ((ax1, "throughput (texts/s)"), (ax2, "p95 latency (ms)")):
        ax.set_xticks(x + 0.2, names)
        ax.set_title(title)
        ax.legend()
    fig.suptitle(
        f"GoEmotions {report['variant']} on {report['machine']['nproc']} CPU cores ({report['date']})"
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return json_path, md_path, png_path


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "python -m loadtest.bench_triton",
        __doc__,
        argv,
        run,
        write_report,
        requests_1=300,
        requests_16=1500,
        base_port=18000,
        seed=11,
    )


if __name__ == "__main__":
    sys.exit(main())
