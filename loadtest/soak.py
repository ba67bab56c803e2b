"""Bounded soak (``make soak``): steady load through the gateway for a fixed time while the memory of
tritonserver (+ its python stubs) and of the gateway is sampled; fails when either grows past a bound.

Memory is private (anonymous) resident memory per process plus the python backend's shared-memory
regions counted once: plain RSS counts every shared page once per process that touches it, and counts
library code pages, so it grows without anything leaking. Growth is measured after a warm-up (caches,
arenas and Python's allocator settle first): median of the last tenth of the run minus median of the
first tenth after warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from export.pipeline import MODEL_REPOSITORY
from export.training.data import load_split
from loadtest.common import UniqueTexts, header, http_client, write_results
from server.embedded import EmbeddedTriton, ServerConfig
from server.probes import private_bytes
from server.stack import Stack

log = logging.getLogger("loadtest.soak")
WORK = Path("build") / "soak"


def growth_mb(samples: list[tuple[float, float]], warmup_share: float = 0.2) -> float:
    """RSS growth (MB) between the start and the end of the post-warm-up part of (t, MB) samples."""
    steady = samples[int(len(samples) * warmup_share) :]
    if len(steady) < 10:
        raise ValueError("too few samples to judge growth; run longer")
    tenth = max(1, len(steady) // 10)
    return statistics.median(v for _, v in steady[-tenth:]) - statistics.median(v for _, v in steady[:tenth])


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples: dict[str, list[tuple[float, float]]] = {"triton": [], "gateway": []}
    # Per part of Triton's process tree (server, each stub's model, shared memory): where growth is.
    parts: dict[str, list[tuple[float, float]]] = {}
    stop = threading.Event()
    texts = UniqueTexts(load_split("test").texts, seed=21)
    with Stack(WORK, args.base_port) as stack:
        triton = stack.add_triton(EmbeddedTriton(server_config(args, stack)))
        triton.start()
        gateway = stack.start_gateway(settings=gateway_env(args))
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                t = time.monotonic() - started
                memory = triton.memory()
                samples["triton"].append((t, sum(memory.values()) / 1e6))
                for part, value in memory.items():
                    parts.setdefault(part, []).append((t, value / 1e6))
                if gateway.pid is not None:
                    samples["gateway"].append((t, private_bytes(gateway.pid) / 1e6))
                stop.wait(args.sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        make_client = http_client(
            f"{gateway.url}/v1/emotions", lambda t: {"text": t, "learner_id": f"soak-{hash(t) % 500}"}
        )
        deadline = started + args.seconds
        lock = threading.Lock()
        counter = [0]

        def worker() -> None:
            # One persistent client per simulated platform: a soak must not leave thousands of
            # half-closed connections behind (an earlier burst-per-thread harness did, and its memory
            # curve measured that, not the servers).
            infer = make_client()
            while time.monotonic() < deadline:
                with lock:
                    n = counter[0]
                    counter[0] += 1
                    # Fresh texts plus a repeated one: cache, learner store and Triton all stay busy.
                    text = "I finally get it, thank you!" if n % 6 == 5 else texts.take(1)[0]
                infer(text)

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(args.clients)]
        for w in workers:
            w.start()
        for w in workers:
            while w.is_alive():  # progress every 30 s while the load runs
                w.join(timeout=min(30.0, max(0.1, deadline - time.monotonic())))
                log.info(
                    "%.0f/%d s: %d requests, triton %.0f MB, gateway %.0f MB",
                    time.monotonic() - started,
                    args.seconds,
                    counter[0],
                    samples["triton"][-1][1] if samples["triton"] else 0,
                    samples["gateway"][-1][1] if samples["gateway"] else 0,
                )
        requests = counter[0]
        stop.set()
        sampler.join(timeout=10)
    growth = {name: growth_mb(s) for name, s in samples.items()}
    from export.bench import machine_info

    return {
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python -m loadtest.soak", *sys.argv[1:]]),
        "machine": machine_info(),
        "seconds": args.seconds,
        "clients": args.clients,
        "requests": requests,
        "bound_mb": args.max_growth_mb,
        "caches": {"triton_bytes": args.triton_cache_bytes, "gateway_entries": args.gateway_cache_size},
        "growth_mb": growth,
        "part_growth_mb": {name: growth_mb(series) for name, series in parts.items()},
        "parts": parts,
        "passed": all(g <= args.max_growth_mb for g in growth.values()),
        "samples": samples,
    }


def server_config(args: argparse.Namespace, stack: Stack | None = None) -> ServerConfig:
    """Triton on the stack's ports with the soak's response cache size."""
    stack = stack or Stack(WORK, args.base_port)
    return stack.triton_config(args.repository, cache_bytes=args.triton_cache_bytes)


def gateway_env(args: argparse.Namespace) -> dict[str, str]:
    """The gateway's settings for the soak (with the soak's cache size)."""
    return {
        "GATEWAY_MAX_CONCURRENCY": "1024",
        "GATEWAY_CACHE_SIZE": str(args.gateway_cache_size),
    }


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = report["growth_mb"]
    part_rows = [
        f"| {name} | {series[0][1]:.1f} | {series[-1][1]:.1f} | {report['part_growth_mb'][name]:+.1f} |"
        for name, series in sorted(report["parts"].items())
        if series
    ]
    setup = (
        f"{report['seconds']} s at {report['clients']} clients through the gateway; embedded Triton; "
        f"response caches: Triton {report['caches']['triton_bytes'] // 2**20} MB, gateway "
        f"{report['caches']['gateway_entries']} results; 500 learners; 1 request in 6 a repeated text; "
        f"{report['requests']} requests"
    )
    markdown = [
        "# Soak",
        "",
        header(report, setup),
        "",
        "Memory = private (anonymous) resident memory of each process + the python backend's "
        "shared-memory regions counted once; growth = median of the last tenth minus median of "
        "the first tenth after a 20 % warm-up.",
        "",
        f"- Growth after warm-up: tritonserver + stubs **{g['triton']:+.1f} MB**, gateway "
        f"**{g['gateway']:+.1f} MB** (bound {report['bound_mb']:.0f} MB each): "
        f"**{'pass' if report['passed'] else 'FAIL'}**.",
        "",
        "| Triton part | first sample MB | last sample MB | growth after warm-up MB |",
        "|---|---:|---:|---:|",
        *part_rows,
        "",
        "![memory over time](soak.png)",
        "",
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for ax, series_by_name, title in (
        (left, report["samples"], "totals"),
        (right, report["parts"], "Triton by process"),
    ):
        for name, series in series_by_name.items():
            ax.plot([t for t, _ in series], [v for _, v in series], label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("MB (private + shared memory once)")
        ax.set_title(title)
        ax.legend(fontsize="small")
    fig.suptitle(f"Soak: memory over {report['seconds']} s ({report['date']})")
    return write_results(out, "soak", report, markdown, fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__)
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--max-growth-mb", type=float, default=50.0, help="fail when RSS grows more than this")
    p.add_argument("--triton-cache-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--gateway-cache-size", type=int, default=2000)
    p.add_argument("--base-port", type=int, default=18300)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("loadtest", "server"):
        logging.getLogger(name).setLevel(logging.INFO)
    report = run(args)
    for path in write_report(report, args.out):
        log.info("wrote %s", path)
    if not report["passed"]:
        log.error("memory grew past %.0f MB: %s", args.max_growth_mb, report["growth_mb"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
