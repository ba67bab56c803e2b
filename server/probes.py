"""Looking at running processes from outside: the one readiness poll, HTTP status checks, Prometheus
samples and process memory. Used by the launcher, the stack harness, the benchmarks and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.1,
    abort: Callable[[], bool] | None = None,
) -> bool:
    """Poll ``condition`` until it holds (True), or until ``timeout_s`` passes or ``abort`` holds
    (False). The condition is checked once more at the deadline, so a slow last poll still counts."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if (abort is not None and abort()) or time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


async def wait_for_async(
    condition: Callable[[], bool], timeout_s: float, *, interval_s: float = 0.01
) -> bool:
    """``wait_for`` inside an event loop: the loop keeps running the work being waited for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if condition():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval_s)


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    """The status a GET of ``url`` answers, or None when nothing answers (refused, reset, timed out)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def answers(url: str, status: int = 200, timeout_s: float = 1.0) -> bool:
    """Whether a GET of ``url`` answers ``status`` right now."""
    return http_status(url, timeout_s) == status


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last lines of a process's log, for an error message."""
    if path is None or not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def loopback_for(host: str) -> str:
    """``host``, or 127.0.0.1 when it is a wildcard (0.0.0.0, or :: which takes IPv4 too)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return "127.0.0.1" if address.is_unspecified else host


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice, in its ephemeral range)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# ---- Prometheus -------------------------------------------------------------------------------------


def scrape(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return str(response.read().decode())


def samples(text: str) -> Iterator[Sample]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def _requested(sample_name: str, names: Iterable[str]) -> str | None:
    """Which of ``names`` a sample is: the parser names a counter's samples ``<name>_total`` even when
    the exposition (Triton's) writes them without the suffix."""
    for name in names:
        if sample_name in (name, f"{name}_total"):
            return name
    return None


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` (a counter with or without ``_total``) whose labels
    include ``labels``; 0.0 when there is none."""
    wanted = labels.items()
    return sum(s.value for s in samples(text) if _requested(s.name, (name,)) and wanted <= s.labels.items())


def per_label(text: str, names: Iterable[str], label: str) -> dict[str, dict[str, float]]:
    """label value -> metric name -> value summed over the other labels (e.g. per model, over reasons)."""
    names = tuple(names)
    out: dict[str, dict[str, float]] = {}
    for s in samples(text):
        name = _requested(s.name, names)
        if name is not None and label in s.labels:
            row = out.setdefault(s.labels[label], dict.fromkeys(names, 0.0))
            row[name] += s.value
    return out


# ---- process memory ---------------------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants that are still alive (a server and its python stubs)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def private_bytes(pid: int) -> int:
    """A process's anonymous resident memory (heap, arenas): where leaks show. File-backed and shared
    pages (libraries, shared memory) are excluded: RSS minus its shared part."""
    with contextlib.suppress(psutil.Error):
        info = psutil.Process(pid).memory_info()
        return int(info.rss - info.shared)
    return 0


def mapped_files(processes: Iterable[psutil.Process], prefix: str) -> set[str]:
    """Names of the files whose path contains ``prefix`` that these processes map."""
    found: set[str] = set()
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            found.update(m.path.rsplit("/", 1)[-1] for m in proc.memory_maps() if prefix in m.path)
    return found
