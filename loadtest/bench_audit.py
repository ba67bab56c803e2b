"""Audit-trail cost (``make bench-audit``), in one run on this machine: two gateways on one embedded
Triton, identical but for ``GATEWAY_AUDIT_BACKEND`` (off vs SQLite), fed the same kind of fresh texts
with a learner id, interleaved rounds. Reports the p50 difference at 1 client, the throughput ratio at
16 clients, and what the audit writer wrote and dropped.

Two more paths measure the outcome write path: the audit-on gateway again, while every analysed text's
outcome is posted (``POST /v1/outcomes``, by 4 background posters, ``OUTCOME_AFTER_S`` after its answer:
what happened next is known only later), or, as the control, while the same posters send one
``GET /healthz`` per analysed text instead (the cost of any extra request on the same cores); only the
analyses are timed.

The writer runs in the gateway's process (a background task and one database thread), so on 2 cores
whatever it costs shows up here; the request itself only queues rows.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from contract.manifest import read_installed
from export.training.data import load_split
from loadtest import common
from server.probes import metric, scrape, wait_for
from server.stack import Stack

WORK = Path("build") / "bench"
WARMUP = 50  # requests per gateway before timing
AUDIT_KEY = "bench-audit-key-0123456789abcdef"
POSTERS = 4
# An outcome is what happened after the answer (the next exercise, the end of the session), so it comes
# later; 2 s is far sooner than real outcomes and longer than the writer's default 1 s batch interval.
OUTCOME_AFTER_S = 2.0


def learner_of(text: str) -> str:
    return f"bench-{hash(text) % 200}"


class OutcomePosters:
    """Background threads posting an outcome for each analysed result handed to them (or, ``control``, a
    ``GET /healthz`` instead): ``client`` is an analyse client that hands its results over (untimed work
    off the timed loop); ``drain`` waits until every handed result is posted, so the next timed path runs
    without them."""

    def __init__(self, base_url: str, control: bool = False) -> None:
        self.base_url = base_url
        self.control = control
        self.pending: queue.Queue[tuple[float, str, str] | None] = queue.Queue()
        self.posted = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._post, daemon=True) for _ in range(POSTERS)]
        for t in self._threads:
            t.start()

    def client(self) -> Callable[[], Callable[[str], object]]:
        analyse = common.http_client(f"{self.base_url}/v1/emotions", _payload)

        def make() -> Callable[[str], object]:
            infer = analyse()

            def infer_and_hand_over(text: str) -> object:
                r = infer(text)
                due = time.monotonic() + OUTCOME_AFTER_S
                self.pending.put((due, r.json()["results"][0]["result_id"], learner_of(text)))
                return r

            return infer_and_hand_over

        return make

    def drain(self) -> None:
        self.pending.join()

    def close(self) -> None:
        for _ in self._threads:
            self.pending.put(None)
        for t in self._threads:
            t.join()

    def _post(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            while (item := self.pending.get()) is not None:
                due, result_id, learner = item
                time.sleep(max(0.0, due - time.monotonic()))
                body = {"result_id": result_id, "learner_id": learner, "outcome": "asked_for_help"}
                try:
                    if self.control:
                        ok = client.get(f"{self.base_url}/healthz").status_code == 200
                    else:
                        ok = client.post(f"{self.base_url}/v1/outcomes", json=body).status_code == 201
                except httpx.HTTPError:
                    ok = False
                with self._lock:
                    self.posted += ok
                    self.failed += not ok
                self.pending.task_done()
            self.pending.task_done()


def _payload(text: str) -> dict[str, str]:
    return {"text": text, "learner_id": learner_of(text)}


def _then(run: Callable[[], common.PathResult], after: Callable[[], None]) -> common.PathResult:
    result = run()
    after()
    return result


def audit_counts(metrics_text: str) -> dict[str, float]:
    """written / dropped (all reasons) from the gateway's Prometheus text."""
    return {
        "written": metric(metrics_text, "gateway_audit_written_total"),
        "dropped": metric(metrics_text, "gateway_audit_dropped_total"),
    }


def settled_counts(metrics_url: str, sent: int, timeout_s: float = 10.0) -> dict[str, float]:
    """The writer's counts once every sent row is written or dropped (it flushes in the background),
    or as they are after ``timeout_s``."""

    def settled() -> bool:
        counts = audit_counts(scrape(metrics_url))
        return counts["written"] + counts["dropped"] >= sent

    wait_for(settled, timeout_s, interval_s=0.2)
    return audit_counts(scrape(metrics_url))


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_installed(args.repository)
    if manifest is None:
        raise SystemExit(f"no model installed in {args.repository}; run `make prepare` first")
    fresh = common.UniqueTexts(load_split("test").texts, args.seed).take
    db = WORK / "audit-bench.sqlite3"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    both = {"GATEWAY_CACHE_BACKEND": "off", "GATEWAY_MAX_CONCURRENCY": "1024"}
    sqlite = {
        "GATEWAY_AUDIT_BACKEND": "sqlite",
        "GATEWAY_AUDIT_SQLITE_PATH": str(db),
        "GATEWAY_AUDIT_HASH_KEY": AUDIT_KEY,
    }
    with Stack(WORK, args.base_port) as stack:
        stack.start_triton(args.repository)
        gateways = {
            "audit-off": stack.start_gateway("gateway-audit-off", both, wait=False),
            "audit-sqlite": stack.start_gateway("gateway-audit-on", {**both, **sqlite}, wait=False),
        }
        stack.wait_ready()
        clients = {
            name: common.http_client(f"{gw.url}/v1/emotions", _payload) for name, gw in gateways.items()
        }
        posters = OutcomePosters(gateways["audit-sqlite"].url)
        control = OutcomePosters(gateways["audit-sqlite"].url, control=True)
        followers = {"audit-sqlite+outcomes": posters, "audit-sqlite+healthz": control}
        for make in (*clients.values(), posters.client()):  # warm-up: lazy loads, first database writes
            common.closed_loop(make, fresh(WARMUP), 4)
        posters.drain()
        rounds = common.run_rounds(
            args.rounds,
            lambda _: {
                **{
                    f"{name}@{c}": partial(common.closed_loop, make, fresh(n), c)
                    for c, n in ((1, args.requests_1), (16, args.requests_16))
                    for name, make in clients.items()
                },
                **{
                    f"{name}@{c}": partial(
                        _then, partial(common.closed_loop, follower.client(), fresh(n), c), follower.drain
                    )
                    for c, n in ((1, args.requests_1), (16, args.requests_16))
                    for name, follower in followers.items()
                },
            },
        )
        posters.close()
        control.close()
        # closed_loop sends one untimed "warm-up" request per client thread on top of its texts
        per_round = args.requests_1 + 1 + args.requests_16 + 16
        sent = 2 * (WARMUP + 4) + 3 * args.rounds * per_round  # the audit-on gateway's three paths
        counts = {
            **settled_counts(f"{gateways['audit-sqlite'].url}/metrics", sent),
            "sent": sent,
            "outcomes_posted": posters.posted,
            "outcomes_failed": posters.failed,
        }
    return summarize(rounds, counts, manifest.version)


def summarize(
    rounds: list[dict[str, common.PathResult]], counts: dict[str, float], version: str
) -> dict[str, Any]:
    return common.bench_report(
        "make bench-audit",
        version,
        rounds,
        p50_delta_ms_1_client=common.difference(rounds, "audit-sqlite@1", "audit-off@1"),
        throughput_ratio_16_clients=common.ratio(rounds, "audit-sqlite@16", "audit-off@16"),
        outcomes_p50_delta_ms_1_client=common.difference(rounds, "audit-sqlite+outcomes@1", "audit-sqlite@1"),
        outcomes_throughput_ratio_16_clients=common.ratio(
            rounds, "audit-sqlite+outcomes@16", "audit-sqlite@16"
        ),
        # the outcome write itself: against the same number of extra (health) requests
        outcomes_vs_control_p50_delta_ms_1_client=common.difference(
            rounds, "audit-sqlite+outcomes@1", "audit-sqlite+healthz@1"
        ),
        outcomes_vs_control_throughput_ratio_16_clients=common.ratio(
            rounds, "audit-sqlite+outcomes@16", "audit-sqlite+healthz@16"
        ),
        audit_rows=counts,
    )


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    d, q, c = report["p50_delta_ms_1_client"], report["throughput_ratio_16_clients"], report["audit_rows"]
    od, oq = report["outcomes_p50_delta_ms_1_client"], report["outcomes_throughput_ratio_16_clients"]
    cd = report["outcomes_vs_control_p50_delta_ms_1_client"]
    cq = report["outcomes_vs_control_throughput_ratio_16_clients"]
    return common.write_bench_report(
        report,
        out,
        "audit_bench",
        "Audit-trail benchmark",
        "embedded Triton, INT8, both caches off, every request with a learner id; two gateways on one "
        "Triton, audit off vs SQLite",
        [
            f"- p50 at 1 client, audit on minus off: {common.spread_text(d, '+.2f', ' ms', ' to ')}",
            f"- Throughput at 16 clients, audit on / off: {common.spread_text(q, unit='x')}",
            f"- Audit rows: {c.get('sent', 0):.0f} texts sent, {c['written']:.0f} written, "
            f"{c['dropped']:.0f} dropped",
            "- Outcome write path (every analysed text's outcome posted meanwhile), analyses only: p50 at 1 "
            f"client, with minus without: {common.spread_text(od, '+.2f', ' ms', ' to ')}; "
            f"throughput at 16 clients, with / without: {common.spread_text(oq, unit='x')}; "
            f"{c.get('outcomes_posted', 0):.0f} outcomes stored, {c.get('outcomes_failed', 0):.0f} failed",
            "- The outcome write itself, against the control (one `GET /healthz` per analysed text instead): "
            f"p50 at 1 client {common.spread_text(cd, '+.2f', ' ms', ' to ')}; throughput at 16 clients "
            f"{common.spread_text(cq, unit='x')}",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    return common.bench_main("loadtest.bench_audit", __doc__, argv, run, write_report, (500, 2000), 18140, 31)


if __name__ == "__main__":
    sys.exit(main())
