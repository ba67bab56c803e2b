"""Scrape Triton's Prometheus metrics during a load test, so the report can say where time goes."""

from __future__ import annotations

import csv
import logging
import re
import time
import urllib.request
from pathlib import Path

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
_LINE = re.compile(r"^(nv_\w+)\{([^}]*)\} (\S+)$", re.M)


def parse(text: str) -> dict[str, dict[str, float]]:
    """model -> counter -> value (summed over label sets such as failure reasons)."""
    out: dict[str, dict[str, float]] = {}
    for name, labels, value in _LINE.findall(text):
        if name not in COUNTERS:
            continue
        model = re.search(r'model="([^"]+)"', labels)
        if model:
            per = out.setdefault(model.group(1), dict.fromkeys(COUNTERS, 0.0))
            per[name] += float(value)
    return out


class MetricsRecorder:
    """Appends one row per model every ``interval_s`` to a CSV; runs in a greenlet or thread."""

    def __init__(self, url: str, csv_path: str | Path, interval_s: float = 2.0) -> None:
        self.url = url
        self.path = Path(csv_path)
        self.interval_s = interval_s
        self._running = True

    def scrape_once(self) -> int:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                metrics = parse(response.read().decode())
        except OSError as exc:
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
