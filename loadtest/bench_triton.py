"""Triton-served throughput vs the raw ONNX Runtime session, in one run (``make bench-triton``).

Protocol (../shared/notes/benchmarks.md): the same seeded test-split texts on every path, text in ->
28 probabilities out (tokenization counted everywhere), same model variant and threads as served
(the spec's CPU variant, 1 ORT thread per instance), closed loop with 1 and 16 clients, paths
interleaved over rounds, medians and spread. Triton's response cache is off (cache-off figures are
the headline). The load generator shares the 2 cores with the server, as it would on one node.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import read_installed
from contract.spec import SPEC_FILE, ServingSpec
from export.arrays import Array
from export.training.data import load_split
from loadtest import common
from server.probes import per_label, scrape
from server.stack import Stack

WORK = Path("build") / "bench"


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


def run_raw(repo: Path, spec: ServingSpec, texts: list[str], processes: int, batch: int) -> common.PathResult:
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
    return common.PathResult.of(latencies, max(wall for _, wall in out))


# ---- Triton: the goemotions ensemble over gRPC or HTTP, closed loop --------------------------------

PIPELINE = ("tokenizer", "classifier", "postprocess")  # the ensemble's steps, in order
COUNTERS = (
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def scrape_models(metrics_url: str) -> dict[str, dict[str, float]]:
    """model -> Triton counter -> value."""
    return per_label(scrape(metrics_url), COUNTERS, "model")


def batch_size(before: dict[str, float], after: dict[str, float]) -> float:
    """Requests per execution between two scrapes of one model's counters."""
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    return (after["nv_inference_count"] - before["nv_inference_count"]) / max(executions, 1)


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
    layouts: list[str] = []
    batch_sizes: list[float] = []

    def texts(r: int) -> tuple[list[str], list[str]]:
        """Round r's own slice: no path sees a text twice within a round, every path the same texts."""
        off = (r * (n1 + n16)) % max(1, len(sample) - n1 - n16)
        return sample[off : off + n1], sample[off + n1 : off + n1 + n16]

    def raw_16(t16: list[str]) -> common.PathResult:
        # The raw ceiling at 16: best of the layouts that fit 2 cores (measured: 2 x 1 thread, batch 1).
        candidates = {
            f"{p}proc-bs{b}": run_raw(repo, spec, t16, processes=p, batch=b)
            for p, b in ((spec.cpu_instances, 1), (spec.cpu_instances, 8))
        }
        best = max(candidates, key=lambda k: candidates[k].texts_per_s)
        layouts.append(best)
        return candidates[best]

    with Stack(WORK, args.base_port) as stack:
        server = stack.start_triton(repo)
        cold_start = server.startup_seconds
        rss_loaded = server.rss_bytes()
        grpc, http = (common.triton_client(p, server, spec.ensemble_name) for p in ("grpc", "http"))

        def grpc_16(t16: list[str]) -> common.PathResult:
            before = scrape_models(server.metrics_url)["classifier"]
            result = common.closed_loop(grpc, t16, 16)
            batch_sizes.append(batch_size(before, scrape_models(server.metrics_url)["classifier"]))
            return result

        def paths(r: int) -> dict[str, Callable[[], common.PathResult]]:
            t1, t16 = texts(r)
            return {
                "ort-raw@1": lambda: run_raw(repo, spec, t1, processes=1, batch=1),
                "triton-grpc@1": lambda: common.closed_loop(grpc, t1, 1),
                "triton-http@1": lambda: common.closed_loop(http, t1, 1),
                "ort-raw@16": lambda: raw_16(t16),
                "triton-grpc@16": lambda: grpc_16(t16),
                "triton-http@16": lambda: common.closed_loop(http, t16, 16),
            }

        rounds = common.run_rounds(args.rounds, paths)
        rss_after = server.rss_bytes()
        totals = scrape_models(server.metrics_url)
    where_time = {
        m: {
            "avg_batch": t["nv_inference_count"] / max(t["nv_inference_exec_count"], 1),
            "queue_us_per_request": t["nv_inference_queue_duration_us"] / max(t["nv_inference_count"], 1),
            "compute_us_per_request": t["nv_inference_compute_infer_duration_us"]
            / max(t["nv_inference_count"], 1),
        }
        for m, t in ((m, totals.get(m, dict.fromkeys(COUNTERS, 0.0))) for m in PIPELINE)
    }
    return common.bench_report(
        "make bench-triton",
        manifest.served_version(spec.cpu_variant),
        rounds,
        variant=spec.cpu_variant,
        served_as=(
            f"classifier {spec.cpu_instances} instances x {spec.cpu_threads_per_instance} ORT thread, "
            f"queue delay {spec.max_queue_delay_us} us, response cache off"
        ),
        requests={"clients_1": n1, "clients_16": n16},
        cold_start_s=cold_start,
        rss_mb_loaded=rss_loaded / 1e6,
        rss_mb_after=rss_after / 1e6,
        avg_classifier_batch_at_16_grpc={"median": statistics.median(batch_sizes), "per_round": batch_sizes},
        ort_raw_16_layouts_chosen=layouts,
        ratio_vs_raw={
            f"triton-{proto}@{c}": common.ratio(rounds, f"triton-{proto}@{c}", f"ort-raw@{c}")
            for c in (1, 16)
            for proto in ("grpc", "http")
        },
        where_time_goes=where_time,
    )


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    b = report["avg_classifier_batch_at_16_grpc"]
    lines = [
        f"{report['requests']['clients_1']} / {report['requests']['clients_16']} single-text requests per "
        "path at 1 / 16 clients; text in -> probabilities out on every path.",
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
        *(
            f"| {m} | {w['avg_batch']:.2f} | {w['queue_us_per_request']:.0f} | "
            f"{w['compute_us_per_request']:.0f} |"
            for m, w in report["where_time_goes"].items()
        ),
    ]
    ratios = {
        name: f"{r['median']:.2f} [{r['range'][0]:.2f}-{r['range'][1]:.2f}]"
        for name, r in report["ratio_vs_raw"].items()
    }
    ratios.update({name: "1.00 (baseline)" for name in report["paths"] if name.startswith("ort-raw")})
    return common.write_bench_report(
        report,
        out,
        "triton_bench",
        "Triton vs raw ONNX Runtime (embedded CPU server)",
        f"{report['variant']}, {report['served_as']}",
        lines,
        extra=("vs ort-raw (median [min-max])", ratios),
    )


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(
        "loadtest.bench_triton", __doc__, argv, run, write_report, (300, 1500), 18000, 11
    )


if __name__ == "__main__":
    sys.exit(main())
