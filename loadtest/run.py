"""``make loadtest``: bounded, headless, loopback-only capacity run and report.

Starts embedded Triton + gateway unless they already answer, runs Locust's step shape once per path
(gateway, gateway cache-hit, direct gRPC, WebSocket stream), scrapes Triton's metrics meanwhile, writes
the capacity report (results/capacity.md + charts), and stops what it started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from server.gateway_process import GATEWAY_READY_PATH, ManagedProcess, ProcessError
from server.probes import answers
from server.stack import launcher_command

log = logging.getLogger("loadtest.run")

ROOT = Path(__file__).resolve().parent.parent
# path name -> (Locust user class, tag)
PATHS = {
    "gateway": ("GatewayUser", "gateway"),
    "gateway-hit": ("GatewayUser", "gateway-hit"),
    "grpc": ("TritonGrpcUser", "grpc"),
    "stream": ("StreamUser", "stream"),  # WS /v1/emotions/stream, one connection per user
}


def ensure_stack(gateway: str, triton_http: str, timeout_s: float = 120) -> ManagedProcess | None:
    """Start `python -m server` (Triton + gateway) when the gateway is not ready; None if already up."""
    if answers(f"{gateway}{GATEWAY_READY_PATH}"):
        log.info("using the running gateway at %s", gateway)
        return None
    if answers(f"{triton_http}/v2/health/ready"):
        raise SystemExit(
            f"Triton answers at {triton_http} but no gateway at {gateway}: start the gateway "
            "(python -m gateway) or stop Triton, then retry"
        )
    log.info("starting embedded Triton + gateway (python -m server)")
    # The user's own stack: the launcher's defaults and this environment, GATEWAY_* settings included.
    launcher = ManagedProcess(
        "launcher",
        launcher_command(),
        gateway,
        ROOT / "build" / "loadtest" / "server.log",
        ready_path=GATEWAY_READY_PATH,
        ready_timeout_s=timeout_s,
        cwd=ROOT,
    )
    try:
        launcher.start()
    except ProcessError as exc:
        raise SystemExit(f"the stack did not come up: {exc}") from exc
    return launcher


def locust_command(
    host: str, csv_prefix: Path, tags: Sequence[str], user_class: str, *options: str
) -> list[str]:
    """A headless Locust run of loadtest/locustfile.py with loadtest/locust.conf."""
    return [
        sys.executable,
        "-m",
        "locust",
        "--config",
        str(ROOT / "loadtest" / "locust.conf"),
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        *options,
        "--tags",
        *tags,
        "--",  # --tags takes several values: end it before the user class
        user_class,
    ]


def run_path(name: str, out_dir: Path, args: argparse.Namespace) -> int:
    user_class, tag = PATHS[name]
    for stale in out_dir.glob(f"{name}_*.csv"):
        stale.unlink()
    cmd = locust_command(
        args.gateway,
        out_dir / name,
        [tag],
        user_class,
        *("--triton-grpc", args.triton_grpc, "--triton-metrics", args.triton_metrics),
        *("--shape", "step", "--step-users", str(args.step_users)),
        *("--step-seconds", str(args.step_seconds), "--max-users", str(args.max_users)),
        *("--loglevel", "WARNING"),
    )
    budget = args.max_users / args.step_users * args.step_seconds + 60
    log.info(
        "path %s: %d..%d users, %.0f s per step", name, args.step_users, args.max_users, args.step_seconds
    )
    try:
        result = subprocess.run(cmd, cwd=ROOT, timeout=budget, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        log.error("path %s: Locust did not finish within %.0f s", name, budget)
        return 2
    if result.returncode not in (0, 1):  # 1 = SLO missed, expected once the steps pass the knee
        log.error("path %s: Locust failed (exit %d):\n%s", name, result.returncode, result.stderr[-2000:])
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__)
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    p.add_argument("--gateway", default="http://127.0.0.1:8080")
    p.add_argument("--triton-http", default="http://127.0.0.1:8000")
    p.add_argument("--triton-grpc", default="127.0.0.1:8001")
    p.add_argument("--triton-metrics", default="http://127.0.0.1:8002/metrics")
    p.add_argument("--step-users", type=int, default=4)
    p.add_argument("--step-seconds", type=float, default=10)
    p.add_argument("--max-users", type=int, default=32)
    p.add_argument("--slo-p95-ms", type=float, default=100.0, help="latency SLO the knee is found for")
    p.add_argument("--max-fail-ratio", type=float, default=0.01)
    p.add_argument("--target-rps", type=float, default=None, help="size replicas for this load")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from export.bench import machine_info
    from loadtest.report import read_history, read_triton, summarize, write_report

    work = ROOT / "build" / "loadtest"
    work.mkdir(parents=True, exist_ok=True)
    started = ensure_stack(args.gateway, args.triton_http)
    try:
        codes = {name: run_path(name, work, args) for name in args.paths}
    finally:
        if started is not None:
            started.stop(timeout=60)  # SIGTERM: the launcher stops the gateway, then Triton
    reports = []
    for name in args.paths:
        history = work / f"{name}_stats_history.csv"
        if not history.exists():
            log.error("path %s produced no CSV (exit %s)", name, codes[name])
            continue
        reports.append(
            summarize(
                name,
                read_history(history),
                read_triton(work / f"{name}_triton_metrics.csv"),
                args.slo_p95_ms,
                args.max_fail_ratio,
            )
        )
    if not reports:
        return 2
    machine = machine_info()
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{machine['cpu']} ({machine['nproc']} cores)",
        "shared_cores": "yes",  # Locust ran on the server's cores
        "command": "make loadtest",
        "shape": f"step: +{args.step_users} users every {args.step_seconds:g} s up to {args.max_users}",
    }
    for path in write_report(reports, args.out, args.slo_p95_ms, args.max_fail_ratio, args.target_rps, meta):
        log.info("wrote %s", path)
    shutil.copy2(ROOT / "loadtest" / "locust.conf", work / "locust.conf.used")
    return 0 if all(code in (0, 1) for code in codes.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
