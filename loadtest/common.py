"""Shared pieces of the serving benchmarks: closed-loop clients, interleaved rounds, result rows, the
common CLI and the one report writer (JSON + Markdown with the machine header and table + chart)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import OUTPUT_LABELS
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


def ratio(rounds: list[dict[str, PathResult]], a: str, b: str, field: str = "texts_per_s") -> dict[str, Any]:
    """Spread over the rounds of path ``a``'s figure divided by path ``b``'s."""
    return spread([getattr(r[a], field) / getattr(r[b], field) for r in rounds])


def difference(rounds: list[dict[str, PathResult]], a: str, b: str, field: str = "p50_ms") -> dict[str, Any]:
    """Spread over the rounds of path ``a``'s figure minus path ``b``'s."""
    return spread([getattr(r[a], field) - getattr(r[b], field) for r in rounds])


def paths_table(
    paths: dict[str, dict[str, float]], extra: tuple[str, dict[str, str]] | None = None
) -> list[str]:
    """Markdown rows: texts/s and latency percentiles per path (``name@clients``), and optionally one
    more column (its title, and a cell per path)."""
    title, cells = extra or ("", {})
    rows = [
        f"| path | clients | texts/s | p50 ms | p95 ms | p99 ms |{f' {title} |' if extra else ''}",
        f"|---|---:|---:|---:|---:|---:|{'---|' if extra else ''}",
    ]
    for name, row in paths.items():
        path, _, clients = name.partition("@")
        cell = f" {cells.get(name, '')} |" if extra else ""
        rows.append(
            f"| {path} | {clients} | {row['texts_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
            f"{row['p99_ms']:.2f} |{cell}"
        )
    return rows


def run_rounds(
    rounds: int, paths: Callable[[int], dict[str, Callable[[], PathResult]]]
) -> list[dict[str, PathResult]]:
    """Interleaved rounds (A, B, C, A, B, C, ...): round ``r`` measures each of ``paths(r)`` in turn."""
    results = []
    for r in range(rounds):
        log.info("round %d/%d", r + 1, rounds)
        results.append({name: measure() for name, measure in paths(r).items()})
    return results


def bench_report(
    command: str, version: str, rounds: list[dict[str, PathResult]], **figures: Any
) -> dict[str, Any]:
    """What every benchmark's results file holds: date, command, machine, model, rounds, the median
    figures per path and each round's throughput (a median hides one slow round), then the benchmark's
    own ``figures``."""
    from export.bench import machine_info

    return {
        "date": dt.date.today().isoformat(),
        "command": command,
        "machine": machine_info(),
        "model_version": version,
        "rounds": len(rounds),
        "paths": median_paths(rounds),
        "texts_per_s_per_round": {p: [r[p].texts_per_s for r in rounds] for p in rounds[0]},
        **figures,
    }


def header(report: dict[str, Any], setup: str) -> str:
    """The line under a results file's title: when, on what, which model, how to reproduce."""
    machine = report["machine"]
    model = f", model `{report['model_version']}`" if "model_version" in report else ""
    rounds = f" {report['rounds']} interleaved rounds, medians [min-max]." if "rounds" in report else ""
    return (
        f"{report['date']}, {machine['cpu']} ({machine['nproc']} cores){model} ({setup}). "
        f"Command: `{report['command']}`.{rounds}"
    )


def write_results(
    out: Path, stem: str, report: dict[str, Any], markdown: list[str], figure: Any | None = None
) -> list[Path]:
    """``out/stem.json`` (the report), ``out/stem.md`` and, given a matplotlib figure, ``out/stem.png``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.json", out / f"{stem}.md"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    written[1].write_text("\n".join(markdown))
    if figure is not None:
        written.append(out / f"{stem}.png")
        figure.tight_layout()
        figure.savefig(written[2], dpi=100)
    return written


def paths_chart(paths: dict[str, dict[str, float]], title: str) -> Any:
    """Throughput and p95 latency per path, one bar per client count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(p.split("@")[0] for p in paths))
    clients = sorted({int(p.split("@")[1]) for p in paths if "@" in p})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(names))
    width = 0.8 / max(1, len(clients))
    for i, c in enumerate(clients):
        for ax, field in zip(axes, ("texts_per_s", "p95_ms"), strict=True):
            values = [paths.get(f"{n}@{c}", {}).get(field, 0.0) for n in names]
            ax.bar(x + i * width, values, width, label=f"{c} client(s)")
    for ax, label in zip(axes, ("throughput (texts/s)", "p95 latency (ms)"), strict=True):
        ax.set_xticks(x + width * (len(clients) - 1) / 2, names, rotation=30, ha="right")
        ax.set_title(label)
        ax.legend()
    fig.suptitle(title)
    return fig


def write_bench_report(
    report: dict[str, Any], out: Path, stem: str, title: str, setup: str, lines: list[str], **table: Any
) -> list[Path]:
    """The one benchmark report: title, header, the benchmark's own lines, the paths table, the chart."""
    markdown = [
        f"# {title}",
        "",
        header(report, setup),
        "",
        *lines,
        "",
        *paths_table(report["paths"], **table),
        "",
        f"![throughput and p95 per path]({stem}.png)",
        "",
    ]
    chart = paths_chart(report["paths"], f"{title}: {report['machine']['nproc']} CPU cores, {report['date']}")
    return write_results(out, stem, report, markdown, chart)


def spread_text(s: dict[str, Any], fmt: str = ".2f", unit: str = "", to: str = "-") -> str:
    """``**median unit** [min-max]`` of a spread(), for a report's headline figures."""
    return f"**{s['median']:{fmt}}{unit}** [{s['range'][0]:{fmt}}{to}{s['range'][1]:{fmt}}]"


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
            shape = result.as_numpy("PROBABILITIES").shape
            if shape not in {(1, len(labels)) for labels in OUTPUT_LABELS}:
                raise RuntimeError(f"unexpected PROBABILITIES shape {shape}")
            return result

        return infer

    return make


def http_client(
    url: str,
    payload: Callable[[str], dict[str, str]],
    server_times: list[float] | None = None,
    headers: dict[str, str] | None = None,
    request_headers: Callable[[], dict[str, str]] | None = None,
) -> Callable[[], Callable[[str], Any]]:
    """A closed-loop client posting ``payload(text)``; ``request_headers()`` adds headers per request."""

    def make() -> Infer:
        import httpx

        client = httpx.Client(timeout=30, headers=headers)

        def infer(text: str) -> Any:
            r = client.post(url, json=payload(text), headers=request_headers() if request_headers else None)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
            if server_times is not None and "x-total-time" in r.headers:
                server_times.append(float(r.headers["x-total-time"]) / 1000)
            return r

        return infer

    return make


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
    module: str,
    doc: str | None,
    argv: list[str] | None,
    run: Callable[[argparse.Namespace], Any],
    write_report: Callable[[Any, Path], Any],
    requests: tuple[int, int],
    base_port: int,
    seed: int,
) -> int:
    """The CLI every benchmark shares: rounds, request counts (at 1 and at 16 clients), the first port
    it binds, seed, output dir; runs the benchmark and writes its report."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests-1", type=int, default=requests[0], help="requests per path at 1 client")
    p.add_argument("--requests-16", type=int, default=requests[1], help="requests per path at 16 clients")
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
