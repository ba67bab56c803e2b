"""Scrape Triton's Prometheus metrics during a load test, so the report can say where time goes."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from server.probes import per_label, scrape

log = logging.getLogger(__name__)

COUNTERS = (
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_success",
    "nv_inference_request_failure",
)
FIELDS = ["timestamp", "model", *COUNTERS]


def parse(text: str) -> dict[str, dict[str, float]]:
    """model -> counter -> value (summed over label sets such as failure reasons)."""
    return per_label(text, COUNTERS, "model")


class MetricsRecorder:
    """Appends one row per model every ``interval_s`` to a CSV; runs in a greenlet or thread."""

    def __init__(self, url: str, csv_path: str | Path, interval_s: float = 2.0) -> None:
        self.url = url
        self.path = Path(csv_path)
        self.interval_s = interval_s
        self._running = True

    def scrape_once(self) -> int:
        try:
            metrics = parse(scrape(self.url, timeout_s=2))
        except (OSError, ValueError) as exc:  # not answering, or not Prometheus text
            log.warning("could not scrape Triton metrics at %s: %s", self.url, exc)
            return 0
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            now = time.time()
            for model, counters in sorted(metrics.items()):
                writer.writerow({"timestamp": f"{now:.3f}", "model": model, **counters})
        return len(metrics)

    def run(self) -> None:
        while self._running:
            self.scrape_once()
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._running = False
        self.scrape_once()
