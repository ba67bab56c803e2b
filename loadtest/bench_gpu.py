"""The embedded server on a GPU, measured (``make bench-gpu``; on the GPU host: deploy/gpu-host/run.sh).

One run, one report (results/gpu_bench.json, .md, .png):
1. **in-process limit**: the tokenizer (``tokenizers``) + the torch runtime on the torch_fp16 variant, batch
   sizes 1..512, texts/s and the time per batch (tokenize + infer, synchronised);
2. **Triton on the GPU**: the ensemble over gRPC with configs/embedded-gpu.pbtxt at 1, 16, 64, 256
   concurrent clients (one text a request, closed loop, Triton's response cache off): texts/s,
   p50/p95/p99, the classifier's average batch and the GPU utilisation from Triton's metrics, and the
   ratio to the in-process limit at the nearest batch size;
3. **the CPU path on the same host**: configs/embedded.pbtxt with instances x threads from a grid, 16
   clients: how throughput grows with cores.

It imports only the standard library, numpy, torch, tokenizers, tritonclient, psutil and prometheus_client
(through server.*), the contract and torch_classifier: the GPU host has none of the project's pins. With
``--device cpu`` it runs everywhere (a smoke test runs it so on a tiny model); ``--render`` redraws the
report from its JSON where matplotlib exists.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import Manifest
from contract.names import ENSEMBLE, PROBABILITIES, TEXT
from contract.spec import SPEC_FILE, ServingSpec
from server.probes import metric, samples, scrape
from server.stack import Stack

log = logging.getLogger("loadtest.bench_gpu")

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONCURRENCY = (1, 16, 64, 256)
CPU_GRID = ((1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (4, 4))  # (instances, threads per instance)
TEXTS = [
    "I finally understand recursion, thank you so much!",
    "This is so confusing. I have tried five times and I still don't get why it fails.",
    "ok",
    "I want to give up on this assignment, nothing works and I am tired.",
    "wait, so the base case is what stops it?",
    "this is so boring, when does the lesson end",
    "Can you check my answer for number 4? I think the sign is wrong but I am not sure where.",
    "I'm stuck on the second loop again",
]


def _texts(n: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{TEXTS[int(i) % len(TEXTS)]} #{k}" for k, i in enumerate(rng.integers(0, len(TEXTS), n))]


def _percentiles(latencies: list[float]) -> dict[str, float]:
    a = np.asarray(latencies) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)}


# ---- 1. in-process limit -----------------------------------------------------------------------------


def inprocess_limit(
    repository: Path, device: str, batch_sizes: tuple[int, ...], seconds: float
) -> list[dict[str, Any]]:
    import torch
    from tokenizers import Tokenizer

    from torch_classifier.encoder import load_classifier

    manifest = Manifest.read(repository / "manifest.json")
    spec = ServingSpec.read(repository / SPEC_FILE)
    weights = repository / "classifier" / "1" / manifest.variants[spec.embedded_gpu_variant].file
    model = load_classifier(weights, device)
    tokenizer = Tokenizer.from_file(str(repository / "tokenizer" / "1" / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=manifest.max_length)
    tokenizer.enable_padding()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def step(texts: list[str]) -> None:
        enc = tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        model(**{k: v.to(device, non_blocking=True) for k, v in feed.items() if k in manifest.input_names})
        sync()

    rows = []
    for batch in batch_sizes:
        texts = _texts(batch)
        step(texts)  # warm-up (kernels, allocator)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            t0 = time.perf_counter()
            step(texts)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "batch": batch,
                "texts_per_s": round(batch * len(times) / sum(times), 1),
                "batch_ms_p50": round(statistics.median(times) * 1000, 3),
            }
        )
        log.info("in-process batch %d: %.0f texts/s", batch, rows[-1]["texts_per_s"])
    return rows


# ---- 2. and 3. Triton over gRPC ---------------------------------------------------------------------


def closed_loop(url: str, clients: int, seconds: float) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    stop = threading.Event()

    def loop(index: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        texts = _texts(64, seed=index)
        inp = grpcclient.InferInput(TEXT, [1, 1], "BYTES")
        ready.wait()
        k = 0
        while not stop.is_set():
            inp.set_data_from_numpy(np.array([[f"{texts[k % 64]} {index}-{k}".encode()]], dtype=object))
            t0 = time.perf_counter()
            try:
                client.infer(ENSEMBLE, [inp], outputs=[grpcclient.InferRequestedOutput(PROBABILITIES)])
            except BaseException as exc:  # a run with errors is void: recorded and raised below
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - t0)
            k += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]!r}")
    return {
        "clients": clients,
        "requests": len(latencies),
        "texts_per_s": round(len(latencies) / wall, 1),
    } | (_percentiles(latencies))


def _counter(metrics_url: str, name: str, model: str) -> float:
    return metric(scrape(metrics_url), name, model=model)


def _gpu_utilisation(metrics_url: str) -> float | None:
    values = [s.value for s in samples(scrape(metrics_url)) if s.name == "nv_gpu_utilization"]
    return round(float(np.mean(values)), 3) if values else None


def _sample_gpu(metrics_url: str, done: threading.Event, into: list[float]) -> None:
    while not done.wait(0.5):
        value = _gpu_utilisation(metrics_url)
        if value is not None:
            into.append(value)


def triton_runs(
    repository: Path, work: Path, config_name: str, concurrency: tuple[int, ...], seconds: float
) -> list[dict[str, Any]]:
    # the stack picks ports below the ephemeral range (client sockets never take them) and stops the
    # server however the run ends; cache off: the headline is cache-off
    rows = []
    with Stack(work) as stack:
        server = stack.start_triton(repository, config_name=config_name, ready_timeout_s=300)
        metrics = server.metrics_url
        for clients in concurrency:
            before = (
                _counter(metrics, "nv_inference_count", "classifier"),
                _counter(metrics, "nv_inference_exec_count", "classifier"),
            )
            utilisation: list[float] = []
            done = threading.Event()
            sampler = threading.Thread(target=_sample_gpu, args=(metrics, done, utilisation), daemon=True)
            sampler.start()
            row = closed_loop(server.grpc_url, clients, seconds)
            done.set()
            sampler.join()
            inferences = _counter(metrics, "nv_inference_count", "classifier") - before[0]
            executions = _counter(metrics, "nv_inference_exec_count", "classifier") - before[1]
            row["avg_batch"] = round(inferences / executions, 2) if executions else None
            row["gpu_utilisation"] = round(float(np.mean(utilisation)), 3) if utilisation else None
            rows.append(row)
            log.info(
                "%s, %d clients: %.0f texts/s, p95 %.1f ms",
                config_name,
                clients,
                row["texts_per_s"],
                row["p95_ms"],
            )
    return rows


def cpu_repository(repository: Path, target: Path, instances: int, threads: int) -> Path:
    """A copy of ``repository`` whose CPU classifier has ``instances`` x ``threads`` (weights hard-linked
    or copied; only classifier/configs/embedded.pbtxt differs)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(repository, target, copy_function=_link_or_copy)
    path = target / "classifier" / "configs" / "embedded.pbtxt"
    text = path.read_text()
    text = re.sub(r"(instance_group \{\n  kind: KIND_CPU\n  count: )\d+", rf"\g<1>{instances}", text)
    text = re.sub(r'(key: "intra_op_threads"\n  value \{\n    string_value: ")\d+', rf"\g<1>{threads}", text)
    path.write_text(text)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def nearest(rows: list[dict[str, Any]], batch: float) -> dict[str, Any]:
    return min(rows, key=lambda r: abs(r["batch"] - batch))


# ---- report -----------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# The embedded server on a GPU",
        "",
        f"Command: `{report['command']}`, {report['date']}. Machine: {m['gpu'] or 'no GPU'}; "
        f"{m['cpus']} CPUs; "
        f"torch {m['torch']}; model `{report['model']}` ({report['variant']}); device `{report['device']}`. "
        f"{report['seconds']} s per point; one text a request; Triton's response cache off.",
        "",
        "## In-process limit (tokenize + infer, one process, no server)",
        "",
        "| batch | texts/s | time per batch p50 (ms) |",
        "|---:|---:|---:|",
        *(
            f"| {r['batch']} | {r['texts_per_s']:.0f} | {r['batch_ms_p50']:.2f} |"
            for r in report["inprocess"]
        ),
        "",
    ]
    if report["triton"]:
        lines += [
            "## Triton ensemble over gRPC (configs/embedded-gpu.pbtxt)",
            "",
            "| clients | texts/s | p50 ms | p95 ms | p99 ms | avg batch | GPU util "
            "| vs in-process at that batch |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["triton"]:
            util = "" if r["gpu_utilisation"] is None else f"{r['gpu_utilisation']:.2f}"
            ratio = "" if r.get("vs_inprocess") is None else f"{r['vs_inprocess']:.2f}"
            lines.append(
                f"| {r['clients']} | {r['texts_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
                f"| {r['p99_ms']:.2f} "
                f"| {r['avg_batch'] or ''} | {util} | {ratio} |"
            )
        lines.append("")
    if report["cpu"]:
        lines += [
            "## The CPU path on the same host (configs/embedded.pbtxt, 16 clients)",
            "",
            "| instances x threads | texts/s | p50 ms | p95 ms |",
            "|---|---:|---:|---:|",
            *(
                f"| {r['instances']} x {r['threads']} | {r['texts_per_s']:.0f} | {r['p50_ms']:.2f} "
                f"| {r['p95_ms']:.2f} |"
                for r in report["cpu"]
            ),
            "",
        ]
    lines += ["![GPU benchmark](gpu_bench.png)", ""]
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning(
            "no matplotlib here: run `python -m loadtest.bench_gpu --render %s` where it exists", path
        )
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    inproc = report["inprocess"]
    left.plot(
        [r["batch"] for r in inproc], [r["texts_per_s"] for r in inproc], marker="o", label="in-process"
    )
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size")
    left.set_ylabel("texts/s")
    left.set_title("in-process limit")
    if report["triton"]:
        t = report["triton"]
        right.plot([r["clients"] for r in t], [r["texts_per_s"] for r in t], marker="o", label="texts/s")
        right.set_xscale("log", base=2)
        right.set_xlabel("concurrent clients")
        right.set_ylabel("texts/s")
        twin = right.twinx()
        twin.plot(
            [r["clients"] for r in t], [r["p95_ms"] for r in t], marker="s", color="tab:red", label="p95 ms"
        )
        twin.set_ylabel("p95 latency (ms)")
        right.set_title("Triton ensemble over gRPC")
    fig.suptitle(f"{report['model']} on {report['machine']['gpu'] or 'CPU'} ({report['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "gpu_bench.json", out / "gpu_bench.md"
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(markdown(report))
    png = chart(report, out / "gpu_bench.png")
    return [p for p in (js, md, png) if p is not None]


def machine(device: str) -> dict[str, Any]:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    return {
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = Manifest.read(args.repository / "manifest.json")
    spec = ServingSpec.read(args.repository / SPEC_FILE)
    if spec.embedded_gpu_variant not in manifest.variants:
        raise SystemExit(
            f"{manifest.version} has no {spec.embedded_gpu_variant} variant: nothing to run on a GPU"
        )
    report: dict[str, Any] = {
        "command": " ".join(["python -m loadtest.bench_gpu", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": manifest.served_version(spec.embedded_gpu_variant),
        "variant": spec.embedded_gpu_variant,
        "device": args.device,
        "seconds": args.seconds,
        "machine": machine(args.device),
        "inprocess": inprocess_limit(args.repository, args.device, tuple(args.batch_sizes), args.seconds),
        "triton": [],
        "cpu": [],
    }
    work = args.work
    if args.concurrency:
        report["triton"] = triton_runs(
            args.repository, work / "gpu", "embedded-gpu", tuple(args.concurrency), args.seconds
        )
        for row in report["triton"]:
            if row["avg_batch"]:
                row["vs_inprocess"] = round(
                    row["texts_per_s"] / nearest(report["inprocess"], row["avg_batch"])["texts_per_s"], 3
                )
    for instances, threads in args.cpu_grid:
        repo = cpu_repository(args.repository, work / f"cpu-{instances}x{threads}", instances, threads)
        (row,) = triton_runs(
            repo, work / f"cpu-server-{instances}x{threads}", "embedded", (16,), args.seconds
        )
        report["cpu"].append({"instances": instances, "threads": threads} | row)
    return report


def _grid(value: str) -> list[tuple[int, int]]:
    pairs = []
    for item in value.split(","):
        if item.strip():
            instances, threads = item.lower().split("x")
            pairs.append((int(instances), int(threads)))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_gpu", description=__doc__)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument(
        "--device", default="cuda", help="torch device for the in-process limit (cuda, cuda:1, cpu)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per measured point")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=list(BATCH_SIZES))
    p.add_argument("--concurrency", type=int, nargs="*", default=list(CONCURRENCY), help="none: skip Triton")
    p.add_argument(
        "--cpu-grid",
        type=_grid,
        default=list(CPU_GRID),
        help="instances x threads of the CPU path, e.g. 1x1,4x1,16x1 ('' skips it)",
    )
    p.add_argument("--work", type=Path, default=Path("build") / "bench-gpu")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--render", type=Path, default=None, help="only redraw the report from this JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        paths = write(report, args.render.parent)
    else:
        paths = write(run(args), args.out)
    for path in paths:
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
