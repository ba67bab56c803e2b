"""The gateway client against a real gateway (uvicorn in a thread, a gated fake Triton): a retry after a
read timeout, while the first request is still being answered, gets that first answer (one analysis, one
trajectory point); a retry after a 503 runs the request."""

from __future__ import annotations

from clients.gateway_client import GatewayClient, Retry
from gateway.errors import ErrorCode, GatewayError
from server.probes import wait_for
from tests.support.fake_triton import WAIT_S, GatedTriton
from tests.support.gateway import make_settings, serve

FIRST = "gateway_idempotent_requests_total"


def test_a_retry_after_a_read_timeout_is_answered_with_the_first_answer(label_names):
    triton = GatedTriton(label_names)
    triton.gate.clear()  # the first analysis waits until the client has given up on it
    with serve(make_settings(cache_backend="off"), triton) as served:

        def sleep(_: float) -> None:  # the client's back-off: let the first request finish and be kept
            triton.gate.set()
            assert wait_for(lambda: served.metric(FIRST, {"outcome": "first"}) == 1, WAIT_S, interval_s=0.01)

        with GatewayClient(served.http, timeout_s=0.5, sleep=sleep) as gateway:
            answer = gateway.analyse("I want to give up", learner_id="ada")
            assert answer["trend"]["points"] == 1
            assert len(gateway.trajectory("ada")["points"]) == 1  # analysed once, not twice
        assert len(triton.calls) == 1
        assert served.metric(FIRST, {"outcome": "replayed"}) == 1


def test_a_retry_after_a_503_runs_the_request(label_names):
    triton = GatedTriton(label_names)
    triton.fail = GatewayError(ErrorCode.BACKEND_UNAVAILABLE, "down", {"Retry-After": "1"})
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        triton.fail = None

    with (
        serve(make_settings(cache_backend="off"), triton) as served,
        GatewayClient(served.http, sleep=sleep, retry=Retry(attempts=2)) as gateway,
    ):
        answer = gateway.analyse(["I want to give up", "fine"], learner_id="ada")
    # one point per text of the one analysis that ran (the 503 stored nothing)
    assert slept == [1.0] and len(answer["results"]) == 2 and answer["trend"]["points"] == 2


def test_the_cli_reads_texts_from_a_file_and_sends_them_32_a_request(label_names, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    texts = [f"post {i}: I don't get it" for i in range(70)]
    (tmp_path / "posts.txt").write_text("\n".join([*texts[:35], "", *texts[35:]]) + "\n")  # a blank line
    script = Path(__file__).resolve().parents[2] / "clients" / "gateway_client.py"
    with serve(make_settings(cache_backend="off"), GatedTriton(label_names)) as served:
        out = subprocess.run(
            [sys.executable, str(script), "--url", served.http, "--file", str(tmp_path / "posts.txt")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    answers = [json.loads(line) for line in out.splitlines()]
    assert [len(a["results"]) for a in answers] == [32, 32, 6]
    assert answers[2]["results"][5]["text_index"] == 5  # each answer indexes its own request's texts
