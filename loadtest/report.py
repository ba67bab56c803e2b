"""Capacity report from Locust step-load runs: the knee per path, where it breaks, and replicas to buy.

    python -m loadtest.report --path gateway=build/loadtest/gateway --path grpc=build/loadtest/grpc \\
        --slo-p95-ms 100 --max-fail-ratio 0.01 [--target-rps 1000] [--out results] [--meta key=value ...]

Each ``--path NAME=PREFIX`` reads ``PREFIX_stats_history.csv`` (Locust ``--csv PREFIX --csv-full-history``)
and, when present, ``PREFIX_triton_metrics.csv`` (loadtest/triton_metrics.py). Writes ``capacity.md``,
``capacity.json``, ``capacity_throughput.png`` and ``capacity_latency.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import math
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.triton_metrics import COUNTERS

log = logging.getLogger("loadtest.report")

HISTORY_SUFFIX = "_stats_history.csv"
TRITON_SUFFIX = "_triton_metrics.csv"
HISTORY_COLUMNS = ("Timestamp", "User Count", "Name", "Requests/s", "Failures/s", "50%", "95%", "99%")
TRITON_COLUMNS = ("timestamp", "model", *COUNTERS)
# The ensemble's steps first, in the order a request flows through them; other models follow sorted.
MODEL_ORDER = ("tokenizer", "classifier", "postprocess", "goemotions")
DEFAULT_TARGETS = (100.0, 500.0, 1000.0, 5000.0)
TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class StepStats:
    users: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    fail_ratio: float
    start: float  # first steady (post-ramp) Locust row, epoch s
    end: float  # last steady row, epoch s
    # model -> raw counter deltas and per-step figures (avg_batch, queue_ms, compute_ms); None: no samples
    triton: dict[str, dict[str, float]] | None


@dataclass(frozen=True)
class PathReport:
    name: str
    steps: list[StepStats]
    knee: StepStats | None
    breaks_at: StepStats | None


# ---- reading ---------------------------------------------------------------------------------------


def _float(value: str | None) -> float | None:
    """A Locust number, or None for N/A / empty (no responses in the window yet)."""
    if value is None or value.strip() in ("", "N/A"):
        return None
    return float(value)


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: not the expected CSV, missing columns {missing}")
            return list(reader)
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc


def read_history(path: Path) -> list[dict[str, str]]:
    """The ``Aggregated`` rows of a Locust stats history, time-ordered; ValueError names the file."""
    rows = _read_csv(path, HISTORY_COLUMNS)
    aggregated = []
    # line 1 is the header
    for line, row in enumerate(rows, start=2):
        if row.get("Name") != "Aggregated":
            continue
        try:
            for column in ("Timestamp", "User Count", "Requests/s", "Failures/s"):
                float(row[column])
            for column in ("50%", "95%", "99%"):
                _float(row[column])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: line {line}: malformed number ({exc})") from exc
        aggregated.append(row)
    if not aggregated:
        raise ValueError(f"{path}: no 'Aggregated' rows (is this a --csv-full-history file?)")
    return sorted(aggregated, key=lambda r: float(r["Timestamp"]))


def read_triton(path: Path) -> list[dict[str, str]] | None:
    """Rows of a scraped Triton metrics CSV; None when the run did not scrape (no file)."""
    if not path.exists():
        return None
    rows = _read_csv(path, TRITON_COLUMNS)
    for line, row in enumerate(rows, start=2):
        try:
            for column in ("timestamp", *COUNTERS):
                float(row[column])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: line {line}: malformed number ({exc})") from exc
    return rows


# ---- summarizing -----------------------------------------------------------------------------------

Sample = tuple[float, dict[str, float]]


def _samples_by_model(triton: list[dict[str, str]]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for row in triton:
        counters = {c: float(row[c]) for c in COUNTERS}
        out.setdefault(row["model"], []).append((float(row["timestamp"]), counters))
    for samples in out.values():
        samples.sort(key=lambda s: s[0])
    return out


def _window_pair(samples: list[Sample], start: float, end: float) -> tuple[Sample, Sample] | None:
    """Two scrapes to difference for [start, end]: the outermost inside it when there are two, else the
    nearest around it (a steady window shorter than ~2 scrape intervals would otherwise get nothing)."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) >= 2:
        return inside[0], inside[-1]
    before = [s for s in samples if s[0] <= start]
    after = [s for s in samples if s[0] >= end]
    first = before[-1] if before else (inside[0] if inside else None)
    last = after[0] if after else (inside[-1] if inside else None)
    if first is None or last is None or last[0] <= first[0]:
        return None
    return first, last


def _triton_step(
    by_model: dict[str, list[Sample]], windows: list[tuple[float, float]]
) -> dict[str, dict[str, float]] | None:
    """Counter deltas per model summed over the step's windows, and the per-step figures from them."""
    out: dict[str, dict[str, float]] = {}
    for model, samples in by_model.items():
        deltas = dict.fromkeys(COUNTERS, 0.0)
        seconds = 0.0
        for start, end in windows:
            pair = _window_pair(samples, start, end)
            if pair is None:
                continue
            (t0, c0), (t1, c1) = pair
            if any(c1[c] < c0[c] for c in COUNTERS):
                log.warning(
                    "Triton counters for %s went down near %.0f: server restarted? skipped", model, t0
                )
                continue
            for c in COUNTERS:
                deltas[c] += c1[c] - c0[c]
            seconds += t1 - t0
        if seconds <= 0:
            continue
        count, execs = deltas["nv_inference_count"], deltas["nv_inference_exec_count"]
        success = deltas["nv_inference_request_success"]
        figures = {
            "seconds": seconds,
            "count": count,
            "exec_count": execs,
            "success": success,
            "failure": deltas["nv_inference_request_failure"],
            "queue_us": deltas["nv_inference_queue_duration_us"],
            "compute_us": deltas["nv_inference_compute_infer_duration_us"],
            "inferences_per_s": count / seconds,
        }
        if execs > 0:
            # count grows by each request's rows, exec_count once per execution: rows per model run
            figures["avg_batch"] = count / execs
        if success > 0:
            # Triton adds queue and compute time once per successful request (a batched execution's time
            # to each request in it; core/src/infer_stats.cc), so per request = delta / delta(success).
            # Equal to delta / delta(count) when every request carries one row.
            figures["queue_ms"] = figures["queue_us"] / success / 1000
            figures["compute_ms"] = figures["compute_us"] / success / 1000
        out[model] = figures
    return out or None


def _segments(history: list[dict[str, str]]) -> list[tuple[int, list[dict[str, str]]]]:
    """Runs of consecutive rows with the same user count (a step, or a revisit of one)."""
    segments: list[tuple[int, list[dict[str, str]]]] = []
    for row in history:
        users = int(float(row["User Count"]))
        if segments and segments[-1][0] == users:
            segments[-1][1].append(row)
        else:
            segments.append((users, [row]))
    return segments


def _meets(step: StepStats, slo_p95_ms: float, max_fail_ratio: float) -> bool:
    # no p95 at all means the SLO cannot be shown to hold
    return step.p95_ms is not None and step.p95_ms <= slo_p95_ms and step.fail_ratio <= max_fail_ratio


def summarize(
    name: str,
    history: list[dict[str, str]],
    triton: list[dict[str, str]] | None,
    slo_p95_ms: float,
    max_fail_ratio: float,
    ramp_s: float = 3.0,
) -> PathReport:
    """Steps (by user count, ramp seconds skipped), the knee and the first step that misses the SLO."""
    by_users: dict[int, list[list[dict[str, str]]]] = {}
    history = sorted(history, key=lambda r: float(r["Timestamp"]))  # ramps are measured in time order
    for users, rows in _segments(history):
        if users > 0:
            by_users.setdefault(users, []).append(rows)
    by_model = _samples_by_model(triton) if triton else {}
    steps = []
    for users in sorted(by_users):
        segments = by_users[users]
        steady_segments = []
        for rows in segments:
            changed_at = float(rows[0]["Timestamp"])
            steady = [r for r in rows if float(r["Timestamp"]) - changed_at >= ramp_s]
            if steady:
                steady_segments.append(steady)
        if not steady_segments:
            # a step shorter than the ramp: its last row is the most settled one there is
            steady_segments = [[segments[-1][-1]]]
        if len(segments) > 1:
            log.warning(
                "%s: %d users came back %d times; their steady rows are pooled", name, users, len(segments)
            )
        steady_rows = [r for rows in steady_segments for r in rows]
        rates = [float(r["Requests/s"]) for r in steady_rows]
        failures = sum(float(r["Failures/s"]) for r in steady_rows)
        percentiles: dict[str, float | None] = {}
        for column in ("50%", "95%", "99%"):
            # Locust's percentiles cover a sliding ~10 s window: the last row describes the step's end
            values = [v for r in reversed(steady_rows) if (v := _float(r[column])) is not None]
            percentiles[column] = values[0] if values else None
        windows = [(float(rows[0]["Timestamp"]), float(rows[-1]["Timestamp"])) for rows in steady_segments]
        steps.append(
            StepStats(
                users=users,
                rps=statistics.median(rates),
                p50_ms=percentiles["50%"],
                p95_ms=percentiles["95%"],
                p99_ms=percentiles["99%"],
                fail_ratio=failures / sum(rates) if sum(rates) > 0 else 0.0,
                start=windows[0][0],
                end=windows[-1][1],
                triton=_triton_step(by_model, windows) if by_model else None,
            )
        )
    meeting = [s for s in steps if _meets(s, slo_p95_ms, max_fail_ratio)]
    knee = max(meeting, key=lambda s: s.rps) if meeting else None
    breaks_at = next((s for s in steps if not _meets(s, slo_p95_ms, max_fail_ratio)), None)
    return PathReport(name=name, steps=steps, knee=knee, breaks_at=breaks_at)


# ---- sizing ----------------------------------------------------------------------------------------


def replicas(node_rps: float, target_rps: float) -> int:
    """⌈target / node⌉, rounded to 9 digits first: 1.1 / 0.1 is 11.000000000000002, and 12 is one too many."""
    return math.ceil(round(target_rps / node_rps, 9))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _why_missed(step: StepStats, slo_p95_ms: float) -> str:
    if step.p95_ms is None:
        return "no p95 measured"
    if step.p95_ms > slo_p95_ms:
        return f"p95 {step.p95_ms:g} ms > {slo_p95_ms:g} ms"
    return f"failures {step.fail_ratio:.2%}"


def sizing(report: PathReport, slo_p95_ms: float, target_rps: float | None) -> str:
    """The sizing paragraph (Markdown) for one path."""
    if not report.steps:
        return "No load steps in this run (every row had 0 users): nothing to size."
    knee, breaks = report.knee, report.breaks_at
    if knee is None:
        first = report.steps[0]
        return (
            f"No tested step meets the SLO (p95 ≤ {slo_p95_ms:g} ms within the failure limit), not even the "
            f"lightest, {first.users} users ({first.rps:.1f} req/s, {_why_missed(first, slo_p95_ms)}). "
            "One node of this kind cannot serve this path at this SLO; no sizing is possible from this run."
        )
    if knee.rps <= 0:
        return f"The knee step ({knee.users} users) measured 0 req/s: steps too short to size from."
    parts = [f"One node holds {knee.rps:.1f} req/s at p95 ≤ {slo_p95_ms:g} ms ({knee.users} users)."]
    if target_rps is not None:
        n = replicas(knee.rps, target_rps)
        parts.append(f"For {target_rps:g} req/s you need {n} replica{'s' if n != 1 else ''}.")
    if breaks is None:
        parts.append(
            f"It did not break within the tested range (up to {report.steps[-1].users} users): "
            "the node may hold more; test higher loads to find the limit."
        )
    else:
        parts.append(
            f"It breaks at {breaks.users} users ({breaks.rps:.1f} req/s, {_why_missed(breaks, slo_p95_ms)})."
        )
        if breaks.users < knee.users:
            parts.append("The SLO was missed below the knee and met again above it: a noisy run, repeat it.")
    text = " ".join(parts)
    if target_rps is None:
        rows = [f"| {t:g} | {replicas(knee.rps, t)} |" for t in DEFAULT_TARGETS]
        text += "\n\n| target req/s | replicas |\n|---:|---:|\n" + "\n".join(rows)
    return text


# ---- writing ---------------------------------------------------------------------------------------


def _models(report: PathReport) -> list[str]:
    seen = {m for s in report.steps if s.triton for m in s.triton}
    return [m for m in MODEL_ORDER if m in seen] + sorted(seen - set(MODEL_ORDER))


def _table(report: PathReport, slo_p95_ms: float, max_fail_ratio: float) -> list[str]:
    models = _models(report)
    head = ["users", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures", "SLO"]
    if models:
        head += ["classifier avg batch"] + [f"{m} queue / compute ms" for m in models]
    # numbers right-aligned, the verdict left
    align = ["---:"] * len(head)
    align[head.index("SLO")] = "---"
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for s in report.steps:
        users = f"**{s.users} ← knee**" if s is report.knee else str(s.users)
        ok = _meets(s, slo_p95_ms, max_fail_ratio)
        verdict = "✓" if ok else f"✗ {_why_missed(s, slo_p95_ms)}"
        if s is report.breaks_at:
            verdict += " (breaks)"
        cells = [
            users,
            f"{s.rps:.1f}",
            _ms(s.p50_ms),
            _ms(s.p95_ms),
            _ms(s.p99_ms),
            f"{s.fail_ratio:.2%}",
            verdict,
        ]
        if models:
            triton = s.triton or {}
            batch = triton.get("classifier", {}).get("avg_batch")
            cells.append("–" if batch is None else f"{batch:.2f}")
            for m in models:
                per = triton.get(m, {})
                q, c = per.get("queue_ms"), per.get("compute_ms")
                cells.append("–" if q is None or c is None else f"{q:.2f} / {c:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plot(reports: list[PathReport], slo_p95_ms: float, throughput_png: Path, latency_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in reports:
        line = ax.plot([s.users for s in r.steps], [s.rps for s in r.steps], marker="o", label=r.name)[0]
        if r.knee is not None:
            ax.plot([r.knee.users], [r.knee.rps], marker="*", markersize=16, color=line.get_color())
    ax.set_xlabel("users")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("requests/s (median per step)")
    ax.set_title("Throughput vs users (★ = knee: most req/s within the SLO)")
    ax.grid(alpha=0.3)
    if reports:
        ax.legend()
    fig.tight_layout()
    fig.savefig(throughput_png, dpi=110)
    plt.close(fig)

    n = max(1, len(reports))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], reports, strict=False):
        users = [s.users for s in r.steps]
        for label, values in (
            ("p50", [s.p50_ms for s in r.steps]),
            ("p95", [s.p95_ms for s in r.steps]),
            ("p99", [s.p99_ms for s in r.steps]),
        ):
            # NaN leaves a gap where Locust had no percentile
            ax.plot(users, [math.nan if v is None else v for v in values], marker="o", label=label)
        ax.axhline(slo_p95_ms, color="red", linestyle="--", label=f"SLO p95 {slo_p95_ms:g} ms")
        ax.set_title(r.name)
        ax.set_xlabel("users")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("latency ms (Locust, last ~10 s of the step)")
    fig.tight_layout()
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in TRUE_WORDS


def write_report(
    reports: list[PathReport],
    out_dir: Path,
    slo_p95_ms: float,
    max_fail_ratio: float,
    target_rps: float | None = None,
    meta: dict[str, str] | None = None,
    stem: str = "capacity",
) -> list[Path]:
    """Write <stem>.md, <stem>.json and the two charts into out_dir; returns their paths in that order."""
    meta = dict(meta or {})
    # a flag, not a header line: it turns into the caveat below
    shared_cores = _is_true(meta.pop("shared_cores", None))
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    throughput_png, latency_png = out_dir / f"{stem}_throughput.png", out_dir / f"{stem}_latency.png"
    _plot(reports, slo_p95_ms, throughput_png, latency_png)

    lines = ["# Capacity report", ""]
    # the usual three first, then whatever else the caller recorded, in its order
    keys = [k for k in ("date", "machine", "command") if k in meta] + [
        k for k in meta if k not in ("date", "machine", "command")
    ]
    lines += [f"- **{key}**: {meta[key]}" for key in keys]
    lines += [f"- **SLO**: p95 ≤ {slo_p95_ms:g} ms and failures ≤ {max_fail_ratio:.2%} per step", ""]
    caveat = (
        f"These numbers are for this machine{' (' + meta['machine'] + ')' if 'machine' in meta else ''}: "
        "another CPU, GPU or core count moves them."
    )
    if shared_cores:
        caveat += (
            " The load generator (Locust) ran on the same cores as the server and took CPU from it, "
            "so a dedicated node holds somewhat more."
        )
    lines += [caveat, ""]
    lines += [
        "Per step: req/s is the median of Locust's current rate over the steady seconds (the ramp after "
        "each user-count change is skipped); p50/p95/p99 are Locust's sliding ~10 s window at the step's "
        "end; Triton times are per request from counter deltas over the step (queue / compute ms), and "
        "classifier avg batch is rows per model execution.",
        "",
    ]
    for r in reports:
        lines += [f"## {r.name}", "", sizing(r, slo_p95_ms, target_rps), ""]
        if not r.steps:
            continue
        lines += _table(r, slo_p95_ms, max_fail_ratio)
        if not _models(r):
            lines += ["", "No Triton metrics for this path (no metrics CSV, or no scrapes during its steps)."]
        lines.append("")
    lines += [
        "## Charts",
        "",
        f"![Throughput vs users]({throughput_png.name})",
        "",
        f"![Latency vs users]({latency_png.name})",
        "",
    ]
    md_path.write_text("\n".join(lines))

    payload: dict[str, Any] = {
        "slo_p95_ms": slo_p95_ms,
        "max_fail_ratio": max_fail_ratio,
        "target_rps": target_rps,
        "shared_cores": shared_cores,
        "meta": meta,
        "paths": [
            {
                "name": r.name,
                "knee_users": r.knee.users if r.knee else None,
                "node_rps": r.knee.rps if r.knee else None,
                "breaks_at_users": r.breaks_at.users if r.breaks_at else None,
                "replicas": (
                    {
                        f"{t:g}": replicas(r.knee.rps, t)
                        for t in ([target_rps] if target_rps else DEFAULT_TARGETS)
                    }
                    if r.knee and r.knee.rps > 0
                    else {}
                ),
                "sizing": sizing(r, slo_p95_ms, target_rps),
                "steps": [asdict(s) for s in r.steps],
            }
            for r in reports
        ],
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return [md_path, json_path, throughput_png, latency_png]


# ---- CLI -------------------------------------------------------------------------------------------


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.report", description="Capacity report from Locust step-load runs."
    )
    p.add_argument(
        "--path", action="append", required=True, metavar="NAME=PREFIX", help="a run's Locust --csv prefix"
    )
    p.add_argument("--slo-p95-ms", type=float, default=100.0)
    p.add_argument("--max-fail-ratio", type=float, default=0.01)
    p.add_argument("--target-rps", type=float, default=None, help="size replicas for this load")
    p.add_argument("--ramp-s", type=float, default=3.0, help="seconds skipped after each user-count change")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--stem", default="capacity")
    p.add_argument(
        "--meta",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="header lines; shared_cores=yes",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        paths = _pairs(args.path, "--path")
        meta = _pairs(args.meta, "--meta")
        reports = []
        for name, prefix in paths.items():
            history = Path(prefix + HISTORY_SUFFIX)
            if not history.exists():
                log.error(
                    "path %s: %s does not exist (run Locust with --csv %s --csv-full-history)",
                    name,
                    history,
                    prefix,
                )
                return 2
            triton = read_triton(Path(prefix + TRITON_SUFFIX))
            if triton is None:
                log.info("path %s: no Triton metrics (%s%s missing)", name, prefix, TRITON_SUFFIX)
            reports.append(
                summarize(
                    name, read_history(history), triton, args.slo_p95_ms, args.max_fail_ratio, args.ramp_s
                )
            )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    meta.setdefault("date", dt.date.today().isoformat())
    meta.setdefault(
        "command", "python -m loadtest.report " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    for written in write_report(
        reports, args.out, args.slo_p95_ms, args.max_fail_ratio, args.target_rps, meta, args.stem
    ):
        log.info("wrote %s", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
