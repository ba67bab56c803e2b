"""Faults against real processes (loopback, bounded in time): Triton killed under load, Triton slow,
Redis down, clean shutdown. Every 200 is checked against its own text's expected answer."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from contract.manifest import Manifest
from export.calibration import calibrated_probabilities
from export.runtime import load_tokenizer, onnx_classifier
from gateway.app import create_app
from gateway.settings import Settings
from server.embedded import EmbeddedTriton, group_regions, shm_regions
from tests.e2e.conftest import free_ports, make_repository, server_config, start_launcher, stop_launcher
from tests.e2e.test_embedded_triton import TEXTS
from tests.support.processes import start_redis

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def expected_for(repository: Path):
    clf = onnx_classifier(
        repository / "classifier" / "1" / "model.fp32.onnx", load_tokenizer(repository / "tokenizer" / "1")
    )
    manifest = Manifest.read(repository / "manifest.json")
    fp32 = manifest.variants["fp32"]

    def run(text: str) -> tuple[np.ndarray, list[str]]:
        logits = clf.logits([text])
        probs = calibrated_probabilities(logits, np.array(fp32.temperatures))[0].astype(np.float32)
        return probs, [n for n, p, t in zip(manifest.labels, probs, fp32.thresholds, strict=True) if p >= t]

    return run


def _wait(url: str, want: int = 200, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == want:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _tritonserver_pid(http_port: int) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"tritonserver") and f"--http-port={http_port}".encode() in args:
            return int(cmdline.parent.name)
    raise AssertionError("tritonserver process not found")


@pytest.fixture
def stack(repository: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`python -m server` (Triton + gateway, restarts on crash) on free ports."""
    proc, url, http = start_launcher(repository, tmp_path, GATEWAY_TRITON_TIMEOUT_S="2")
    try:
        assert _wait(f"{url}/readyz"), "stack did not come up"
        yield url, http
    finally:
        stop_launcher(proc)


def test_triton_killed_under_load_503_fast_then_recovers_with_no_wrong_answer(stack, expected_for):
    url, http_port = stack
    results: list[tuple[float, float, int, str, dict]] = []
    stop = threading.Event()

    def worker(i: int) -> None:
        with httpx.Client(timeout=15) as client:
            n = 0
            while not stop.is_set():
                text = f"{TEXTS[n % len(TEXTS)]} ({i}-{n})"
                started = time.monotonic()
                r = client.post(f"{url}/v1/emotions", json={"text": text})
                results.append((started, time.monotonic() - started, r.status_code, text, r.json()))
                n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.kill(_tritonserver_pid(http_port), signal.SIGKILL)
    killed_at = time.monotonic()
    saw_unready = _wait(f"{url}/readyz", want=503, timeout=10)
    recovered = _wait(f"{url}/readyz", want=200, timeout=60)
    recovered_at = time.monotonic()
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(timeout=30)

    assert saw_unready, "/readyz never reported the outage"
    assert recovered, "service did not recover after Triton came back"
    statuses = {status for _, _, status, _, _ in results}
    assert statuses <= {200, 503}, statuses
    outage = [(lat, body) for started, lat, status, _, body in results if status == 503]
    assert outage, "no request saw the outage"
    assert max(lat for lat, _ in outage) < 1.0  # answered fast, not hung until a deadline
    assert all(body["error"]["code"] == "backend_unavailable" for _, body in outage)
    # The circuit breaker opened on the real outage (answering without calling Triton) and closed again.
    rejected = next(x for x in metrics.splitlines() if x.startswith("gateway_circuit_rejections_total"))
    assert float(rejected.split()[-1]) > 0
    assert "gateway_circuit_state 0.0" in metrics
    after = [status for started, _, status, _, _ in results if started > recovered_at]
    assert after and set(after) == {200}
    ok = [(text, body) for _, _, status, text, body in results if status == 200]
    for text, body in ok:  # zero wrong or mixed-up answers, before and after the crash
        probs, labels = expected_for(text)
        result = body["results"][0]
        np.testing.assert_allclose(list(result["emotions"].values()), probs, atol=1e-5)
        assert result["labels"] == labels
    assert len(ok) > 20 and killed_at < recovered_at


def test_slow_triton_is_504_at_the_deadline(tmp_path, tiny_export, monkeypatch):
    repo = make_repository(tmp_path / "repo", tiny_export, "fp32")
    model = repo / "postprocess" / "1" / "model.py"
    # Test-only slowdown: a subclass that sleeps before answering (injected delay).
    model.write_text(
        model.read_text()
        + (
            "\n\nimport os as _os, time as _time\n_Base = TritonPythonModel\n\n"
            "class TritonPythonModel(_Base):\n    def execute(self, requests):\n"
            "        _time.sleep(float(_os.environ.get('SLOW_POSTPROCESS_S', '0')))\n"
            "        return super().execute(requests)\n"
        )
    )
    monkeypatch.setenv("SLOW_POSTPROCESS_S", "3")
    server = EmbeddedTriton(server_config(repo, tmp_path / "work")).start()
    try:
        settings = Settings(triton_url=server.grpc_url, triton_timeout_s=0.5, _env_file=None)

        async def call() -> tuple[httpx.Response, float]:
            app = create_app(settings)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
            ):
                started = time.monotonic()
                r = await client.post("/v1/emotions", json={"text": "take your time"})
                return r, time.monotonic() - started

        import asyncio

        r, elapsed = asyncio.run(call())
        assert r.status_code == 504 and r.json()["error"]["code"] == "backend_timeout"
        assert r.headers["retry-after"] == "1"
        assert 0.4 < elapsed < 1.5  # at the configured deadline, not at Triton's pace
    finally:
        server.stop()


async def test_redis_down_serves_without_cache_and_reconnects(triton, repository, tmp_path, monkeypatch):
    import gateway.cache
    import gateway.service

    monkeypatch.setattr(gateway.cache, "REDIS_RETRY_S", 0.5)
    monkeypatch.setattr(gateway.service, "STORE_RETRY_S", 0.5)
    (port,) = free_ports(1)
    redis = start_redis(port)
    settings = Settings(
        triton_url=triton.grpc_url,
        cache_backend="redis",
        trajectory_backend="redis",
        redis_url=f"redis://127.0.0.1:{port}/0",
        _env_file=None,
    )
    app = create_app(settings)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
        ):
            body = {"text": "remember me", "learner_id": "redis-learner"}
            assert (await client.post("/v1/emotions", json=body)).headers["x-cache"] == "miss"
            assert (await client.post("/v1/emotions", json=body)).headers["x-cache"] == "hit"
            redis.kill()
            redis.wait()
            down = [
                await client.post("/v1/emotions", json={**body, "text": f"while down {i}"}) for i in range(5)
            ]
            assert all(r.status_code == 200 for r in down)  # still answering, without cache or trajectory
            assert all(r.json()["trend"] is None for r in down)
            metrics = (await client.get("/metrics")).text
            assert "gateway_cache_errors_total 1.0" in metrics or "gateway_cache_errors_total 2.0" in metrics
            assert "gateway_store_errors_total" in metrics
            redis = start_redis(port)
            time.sleep(0.6)  # past the retry back-off
            again = [
                await client.post("/v1/emotions", json={"text": "after", "learner_id": "r2"})
                for _ in range(2)
            ]
            assert again[1].headers["x-cache"] == "hit"  # reconnected: the cache works again
            assert again[1].json()["trend"]["points"] == 2
    finally:
        redis.kill()
        redis.wait()


def test_clean_shutdown_finishes_in_flight_and_leaves_no_shared_memory(repository, tmp_path):
    proc, url, http = start_launcher(repository, tmp_path)
    try:
        assert _wait(f"{url}/readyz")
        owned = group_regions(os.getpgid(_tritonserver_pid(http)))
        assert owned
        outcomes: list[str] = []
        texts = [f"{TEXTS[i % len(TEXTS)]} in flight {i}" for i in range(32)]

        def send() -> None:
            with httpx.Client(timeout=30) as client:
                try:
                    r = client.post(f"{url}/v1/emotions", json={"texts": texts})
                    outcomes.append(str(r.status_code))
                except httpx.ConnectError:
                    outcomes.append("not accepted")  # arrived after shutdown began: never in flight
                except httpx.HTTPError as exc:
                    outcomes.append(f"broken: {type(exc).__name__}")

        def inflight() -> float:
            try:
                text = httpx.get(f"{url}/metrics", timeout=1).text
            except httpx.HTTPError:
                return 0.0
            line = next((x for x in text.splitlines() if x.startswith("gateway_inflight_requests ")), "x 0")
            return float(line.split()[1])

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while inflight() < 1 and time.monotonic() < deadline:
            pass
        proc.send_signal(signal.SIGTERM)  # with requests in flight
        for t in threads:
            t.join(timeout=30)
        proc.wait(timeout=60)
        out = (tmp_path / "launcher.log").read_text()
        assert proc.returncode == 0, out
        assert "200" in outcomes, outcomes  # the in-flight ones finished...
        assert set(outcomes) <= {"200", "not accepted"}, outcomes  # ...and none was cut off mid-way
        assert owned & shm_regions() == set()  # this server's regions are gone
    finally:
        stop_launcher(proc)
