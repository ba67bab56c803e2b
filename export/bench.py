"""CPU benchmark of the exported variants against the torch model, in one run.

Protocol (../shared/notes/benchmarks.md): same seeded test-split texts on every path, text in ->
logits out (tokenization counted), warm-up first, paths interleaved over rounds, median ratio
and spread reported. bs1 = one text per call (latency); bs32 = batches of 32 in sample order,
padded per batch (throughput).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from export.runtime import Classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    rounds: int = 3
    bs1_texts: int = 200
    bs32_texts: int = 640
    batch_size: int = 32
    warmup: int = 20
    threads: int = 2
    seed: int = 7


def _bs1_latencies_ms(clf: Classifier, texts: list[str]) -> list[float]:
    out = []
    for t in texts:
        start = time.perf_counter()
        clf.logits([t])
        out.append((time.perf_counter() - start) * 1000)
    return out


def _bs32_throughput(clf: Classifier, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        clf.logits(texts[i : i + batch_size])
    return len(texts) / (time.perf_counter() - start)


def run_bench(paths: dict[str, Classifier], texts: list[str], cfg: BenchConfig) -> dict[str, Any]:
    """Per path: bs1 p50/p95 latency and bs32 texts/s for each round, then medians and ratios vs torch."""
    rng = np.random.default_rng(cfg.seed)
    pool = list(rng.permutation(len(texts)))
    bs1 = [texts[i] for i in pool[: cfg.bs1_texts]]
    bs32 = [texts[i] for i in pool[: cfg.bs32_texts]]
    for clf in paths.values():  # warm-up: lazy allocations, first-call graph setup
        _bs1_latencies_ms(clf, bs1[: cfg.warmup])
        clf.logits(bs32[: cfg.batch_size])
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    with tqdm(total=cfg.rounds * len(paths), desc="bench", unit="path") as bar:
        for _ in range(cfg.rounds):
            for name, clf in paths.items():  # interleaved: A, B, C, A, B, C, ...
                lat = _bs1_latencies_ms(clf, bs1)
                rounds[name].append(
                    {
                        "bs1_p50_ms": float(np.percentile(lat, 50)),
                        "bs1_p95_ms": float(np.percentile(lat, 95)),
                        "bs32_texts_per_s": _bs32_throughput(clf, bs32, cfg.batch_size),
                    }
                )
                bar.update()
    return summarize(rounds, baseline="torch" if "torch" in rounds else next(iter(rounds)))


def summarize(rounds: dict[str, list[dict[str, float]]], baseline: str) -> dict[str, Any]:
    """Medians per path; ratios computed per round against that round's baseline, then median + range."""
    out: dict[str, Any] = {}
    for name, rs in rounds.items():
        base = rounds[baseline]
        speedup_bs1 = [b["bs1_p50_ms"] / r["bs1_p50_ms"] for r, b in zip(rs, base, strict=True)]
        speedup_bs32 = [r["bs32_texts_per_s"] / b["bs32_texts_per_s"] for r, b in zip(rs, base, strict=True)]
        out[name] = {
            "bs1_p50_ms": statistics.median(r["bs1_p50_ms"] for r in rs),
            "bs1_p95_ms": statistics.median(r["bs1_p95_ms"] for r in rs),
            "bs32_texts_per_s": statistics.median(r["bs32_texts_per_s"] for r in rs),
            "bs1_speedup_vs_baseline": statistics.median(speedup_bs1),
            "bs1_speedup_range": [min(speedup_bs1), max(speedup_bs1)],
            "bs32_speedup_vs_baseline": statistics.median(speedup_bs32),
            "bs32_speedup_range": [min(speedup_bs32), max(speedup_bs32)],
            "rounds": rs,
        }
    return {"baseline": baseline, "paths": out}


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """The committed, human-readable results table (quoted by the README)."""
    acc = report["accuracy"]
    bench = report["bench"]["paths"]
    sizes = report["sizes_mb"]
    lines = [
        f"# Model report: {report['model']}",
        "",
        f"Model version `{report['model_version']}`; measured {report['date']} on {report['machine']['cpu']} "
        f"({report['machine']['nproc']} cores), onnxruntime {report['machine']['onnxruntime']}, "
        f"torch {report['machine']['torch']}. Command: `{report['command']}`.",
        "",
        f"Accuracy on the GoEmotions test split ({report['test_texts']} texts); "
        "thresholds tuned per label on dev.",
        f"Speed: {report['bench_config']['rounds']} interleaved rounds, median; text in -> logits out "
        f"(tokenization counted), {report['bench_config']['threads']} threads; ratios vs torch FP32 "
        f"per round, median [min-max].",
        "",
        "| variant | size MB | macro-F1 @0.5 | micro-F1 @0.5 | macro-F1 tuned | micro-F1 tuned "
        "| bs1 p50 ms | bs1 vs torch | bs32 texts/s | bs32 vs torch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b in bench.items():
        a = acc.get(name, {})
        half, tuned = a.get("at_0.5", {}), a.get("at_tuned", {})
        r1, r32 = b["bs1_speedup_range"], b["bs32_speedup_range"]
        lines.append(
            f"| {name} | {sizes.get(name, 0):.1f} | {half.get('macro_f1', float('nan')):.4f} "
            f"| {half.get('micro_f1', float('nan')):.4f} | {tuned.get('macro_f1', float('nan')):.4f} "
            f"| {tuned.get('micro_f1', float('nan')):.4f} | {b['bs1_p50_ms']:.2f} "
            f"| {b['bs1_speedup_vs_baseline']:.2f}x [{r1[0]:.2f}-{r1[1]:.2f}] | {b['bs32_texts_per_s']:.0f} "
            f"| {b['bs32_speedup_vs_baseline']:.2f}x [{r32[0]:.2f}-{r32[1]:.2f}] |"
        )
    lines.append("")
    if report.get("training"):
        t = report["training"]
        lines += [
            "Offline student training: "
            f"{t['steps']} steps ({t['config']['epochs']} epochs, batch {t['config']['batch_size']}) in "
            f"{t['train_seconds'] / 60:.1f} min of training, {t['wall_seconds'] / 60:.1f} min wall; "
            f"dev macro-F1 {t['dev_at_tuned']['macro_f1']:.4f} (tuned).",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


def save_report(report: dict[str, Any], directory: Path, stem: str = "model_report") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, md_path)
    return json_path, md_path
