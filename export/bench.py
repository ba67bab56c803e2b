"""CPU benchmark of the exported variants against the torch model, in one run.

Protocol (../shared/notes/benchmarks.md): same seeded test-split texts on every path, text in ->
logits out (tokenization counted), warm-up first, paths interleaved over rounds, median ratio
and spread reported. bs1 = one text per call (latency); bs32 = batches of 32 in sample order,
padded per batch (throughput). A variant with execution ``per_row`` runs every text alone, as served.

Batch invariance: each text's probabilities alone vs as the first row of a batch padded with the
split's 7 longest texts; a served answer must not depend on what it was batched with.
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

from export.packaging.runtime import Classifier
from export.training.metrics import sigmoid

log = logging.getLogger(__name__)

INVARIANCE_COMPANIONS = 7
INVARIANCE_TEXTS = 300
INVARIANCE_SEED = 11
INVARIANCE_TARGET = 1e-5  # max |Δp| a served variant may show between batch compositions


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


def longest_texts(tokenizer: Any, texts: list[str], n: int, max_length: int) -> list[str]:
    """The ``n`` texts with the most tokens (after truncation): the widest batch companions."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    return [texts[i] for i in order[:n]]


def invariance_sample(
    texts: list[str], exclude: list[str], n: int = INVARIANCE_TEXTS, seed: int = INVARIANCE_SEED
) -> list[str]:
    """A fixed, seeded sample of ``texts`` without the companions themselves."""
    skip = set(exclude)
    pool = [t for t in texts if t not in skip]
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))]


def batch_invariance(
    clf: Classifier, texts: list[str], companions: list[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Per text: sigmoid(logits) alone vs as row 0 of ``[text, *companions]`` (padded to the longest).

    Returns the max |Δp| over texts and labels and how many texts' label sets at ``threshold`` differ.
    """
    deltas = np.zeros(len(texts))
    changed = 0
    for i, text in enumerate(texts):
        alone = sigmoid(clf.logits([text]))[0]
        batched = sigmoid(clf.logits([text, *companions]))[0]
        deltas[i] = float(np.abs(alone - batched).max())
        changed += int(np.any((alone >= threshold) != (batched >= threshold)))
    max_dp = float(deltas.max()) if len(texts) else 0.0
    return {
        "texts": len(texts),
        "companions": len(companions),
        "execution": clf.execution,
        "max_abs_dp": max_dp,
        "p99_abs_dp": float(np.percentile(deltas, 99)) if len(texts) else 0.0,
        "label_set_changes": changed,
        "threshold": threshold,
        "target_max_abs_dp": INVARIANCE_TARGET,
        "within_target": max_dp <= INVARIANCE_TARGET,
    }


def paired_ratios(bench: dict[str, Any], path: str, other: str) -> dict[str, Any] | None:
    """``path`` against ``other`` per round of one run (same texts, interleaved): median [min-max]."""
    paths = bench["paths"]
    if path not in paths or other not in paths:
        return None
    pairs = list(zip(paths[path]["rounds"], paths[other]["rounds"], strict=True))
    bs1 = [o["bs1_p50_ms"] / p["bs1_p50_ms"] for p, o in pairs]
    bs32 = [p["bs32_texts_per_s"] / o["bs32_texts_per_s"] for p, o in pairs]
    return {
        "bs1_speedup": statistics.median(bs1),
        "bs1_speedup_range": [min(bs1), max(bs1)],
        "bs32_speedup": statistics.median(bs32),
        "bs32_speedup_range": [min(bs32), max(bs32)],
    }


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
    dev_acc, test_acc = acc.get("dev", {}), acc.get("test", {})
    bench = report["bench"]["paths"]
    sizes = report["sizes_mb"]
    executions = report.get("executions", {})
    nan = float("nan")
    lines = [
        f"# Model report: {report['model']}",
        "",
        f"Model version `{report['model_version']}`; measured {report['date']} on {report['machine']['cpu']} "
        f"({report['machine']['nproc']} cores), onnxruntime {report['machine']['onnxruntime']}, "
        f"torch {report['machine']['torch']}. Command: `{report['command']}`.",
        "",
        "Accuracy: macro/micro-F1 at each variant's own per-label thresholds and temperatures, fitted on "
        f"dev; test ({report['test_texts']} texts) with a bootstrap 95% interval, reported only.",
        f"Speed: {report['bench_config']['rounds']} interleaved rounds, median; text in -> logits out "
        f"(tokenization counted), {report['bench_config']['threads']} threads; ratios vs torch FP32 "
        "per round, median [min-max]. Execution `per_row`: every text runs alone at its own length, "
        "as served (bs32 then means 32 calls).",
        "",
        "| variant | execution | size MB | dev macro-F1 | test macro-F1 [95% CI] | test micro-F1 "
        "| bs1 p50 ms | bs1 vs torch | bs32 texts/s | bs32 vs torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b in bench.items():
        dev, test = dev_acc.get(name, {}), test_acc.get(name, {})
        ci = test.get("macro_f1_ci95")
        ci_text = f" [{ci[0]:.4f}-{ci[1]:.4f}]" if ci else ""
        r1, r32 = b["bs1_speedup_range"], b["bs32_speedup_range"]
        lines.append(
            f"| {name} | {executions.get(name, 'batch')} | {sizes.get(name, 0):.1f} "
            f"| {dev.get('macro_f1', nan):.4f} | {test.get('macro_f1', nan):.4f}{ci_text} "
            f"| {test.get('micro_f1', nan):.4f} | {b['bs1_p50_ms']:.2f} "
            f"| {b['bs1_speedup_vs_baseline']:.2f}x [{r1[0]:.2f}-{r1[1]:.2f}] | {b['bs32_texts_per_s']:.0f} "
            f"| {b['bs32_speedup_vs_baseline']:.2f}x [{r32[0]:.2f}-{r32[1]:.2f}] |"
        )
    lines.append("")
    for name, r in (report.get("comparisons") or {}).items():
        if r:
            a, b = r["bs1_speedup_range"], r["bs32_speedup_range"]
            lines.append(
                f"- {name.replace('_vs_', ' vs ')}: bs1 {r['bs1_speedup']:.2f}x [{a[0]:.2f}-{a[1]:.2f}], "
                f"bs32 {r['bs32_speedup']:.2f}x [{b[0]:.2f}-{b[1]:.2f}] (same run, per-round ratios)"
            )
    if report.get("comparisons"):
        lines.append("")
    lines += invariance_markdown(report.get("invariance") or {})
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


def invariance_markdown(invariance: dict[str, Any]) -> list[str]:
    if not invariance:
        return []
    first = next(iter(invariance.values()))
    lines = [
        f"## batch invariance: max |Δp| alone vs in a batch with {first['companions']} long texts",
        "",
        f"{first['texts']} dev texts (seeded sample), each alone vs as row 0 of a batch padded with the "
        f"{first['companions']} longest dev texts; Δp over every sigmoid output (the 28 labels and any "
        "learning signals); label sets at "
        f"{first['threshold']}. Target: max |Δp| ≤ {first['target_max_abs_dp']:g}.",
        "",
        "| variant | execution | max \\|Δp\\| | p99 \\|Δp\\| | texts with a different label set | ≤ target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, r in invariance.items():
        lines.append(
            f"| {name} | {r['execution']} | {r['max_abs_dp']:.2e} | {r['p99_abs_dp']:.2e} "
            f"| {r['label_set_changes']} / {r['texts']} | {'yes' if r['within_target'] else 'no'} |"
        )
    lines.append("")
    return lines


def save_report(report: dict[str, Any], directory: Path, stem: str = "model_report") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, md_path)
    return json_path, md_path
