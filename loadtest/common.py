"""Shared pieces of the serving benchmarks: closed-loop clients, result rows, the common CLI."""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.pipeline import MODEL_REPOSITORY
from server.embedded import EmbeddedTriton

log = logging.getLogger("loadtest")

Infer = Callable[[str], Any]


@dataclass(frozen=True)
class PathResult:
    texts_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int

    @classmethod
    def of(cls, latencies_s: list[float], wall_s: float) -> PathResult:
        ms = np.asarray(latencies_s) * 1000
        p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99))
        return cls(len(ms) / wall_s, p50, p95, p99, len(ms))


def median_paths(rounds: list[dict[str, PathResult]]) -> dict[str, dict[str, float]]:
    """Per path, the median over the interleaved rounds of each figure."""
    return {
        p: {
            f: statistics.median(getattr(r[p], f) for r in rounds)
            for f in ("texts_per_s", "p50_ms", "p95_ms", "p99_ms")
        }
        for p in rounds[0]
    }


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "range": [min(values), max(values)]}


def paths_table(paths: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows: texts/s and latency percentiles per path."""
    return [
        "| path | texts/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {row['texts_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
            f"{row['p99_ms']:.2f} |"
            for name, row in paths.items()
        ),
    ]


def triton_client(protocol: str, server: EmbeddedTriton, ensemble: str) -> Callable[[], Callable[[str], Any]]:
    def make() -> Infer:
        if protocol == "grpc":
            import tritonclient.grpc as client_mod

            client: Any = client_mod.InferenceServerClient(server.grpc_url)
        else:
            import tritonclient.http as client_mod

            client = client_mod.InferenceServerClient(server.http_url.removeprefix("http://"))

        def infer(text: str) -> Any:
            inp = client_mod.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
            result = client.infer(ensemble, [inp])
            if result.as_numpy("PROBABILITIES").shape != (1, 28):
                raise RuntimeError("unexpected PROBABILITIES shape")
            return result

        return infer

    return make


def http_client(
    url: str, payload: Callable[[str], dict[str, str]], server_times: list[float] | None = None
) -> Callable[[], Callable[[str], Any]]:
    def make() -> Infer:
        import httpx

        client = httpx.Client(timeout=30)

        def infer(text: str) -> Any:
            r = client.post(url, json=payload(text))
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
            if server_times is not None and "x-total-time" in r.headers:
                server_times.append(float(r.headers["x-total-time"]) / 1000)
            return r

        return infer

    return make


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def closed_loop(
    make_client: Callable[[], Callable[[str], Any]], texts: list[str], clients: int
) -> PathResult:
    lock = threading.Lock()
    queue = iter(texts)
    latencies: list[float] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(clients + 1)

    def loop() -> None:
        infer = make_client()
        infer("warm-up")
        ready.wait()
        while True:
            with lock:
                text = next(queue, None)
            if text is None:
                return
            t0 = time.perf_counter()
            try:
                infer(text)
            except BaseException as exc:  # recorded and re-raised: a benchmark with errors is void
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]!r}")
    return PathResult.of(latencies, wall)


class UniqueTexts:
    """Seeded test-split texts, each handed out once (tagged on later laps): caches never see a repeat."""

    def __init__(self, texts: list[str], seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.texts = [texts[i] for i in rng.permutation(len(texts))]
        self.used = 0

    def take(self, n: int) -> list[str]:
        out = [f"{self.texts[(self.used + i) % len(self.texts)]} [{self.used + i}]" for i in range(n)]
        self.used += n
        return out


def bench_main(
    prog: str,
    doc: str | None,
    argv: list[str] | None,
    run: Callable[[argparse.Namespace], Any],
    write_report: Callable[[Any, Path], Any],
    requests_1: int,
    requests_16: int,
    base_port: int,
    seed: int,
) -> int:
    """The CLI every benchmark shares: rounds, request counts, ports, seed, output dir."""
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests-1", type=int, default=requests_1, help="requests per path at 1 client")
    p.add_argument("--requests-16", type=int, default=requests_16, help="requests per path at 16 clients")
    p.add_argument("--base-port", type=int, default=base_port, help="first of the ports the benchmark binds")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("loadtest", "server"):
        logging.getLogger(name).setLevel(logging.INFO)
    for path in write_report(run(args), args.out):
        log.info("wrote %s", path)
    return 0
