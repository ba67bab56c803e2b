"""gateway.backends.triton without a server: the checks on every answer (nothing malformed is used) and
the failover across endpoints, against fake gRPC clients (tests/support/fake_triton.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from contract.names import GOEMOTIONS_LABELS, LABELS, MODEL_VERSION, PROBABILITIES
from gateway.backends.triton import (
    GuardedInference,
    InvalidModelOutput,
    Prediction,
    TritonClient,
    check_predictions,
    split_urls,
)
from gateway.errors import STATUS, GatewayError
from gateway.resilience import Breaker, State
from tests.support.fake_triton import Endpoints, Outputs, probabilities

A, B, C = "triton-a:8001", "triton-b:8001", "triton-c:8001"
UNAVAILABLE, NOT_FOUND = "StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND"


def client(endpoints: Endpoints, *urls: str) -> TritonClient:
    return TritonClient(list(urls), "goemotions", 2.0, connect=endpoints.connect)


async def test_an_answer_is_one_checked_prediction_per_text_with_its_model_version():
    endpoints = Endpoints(A, version="student-3f2a9c1b7d10-int8")
    predictions = await client(endpoints, A).infer(["hello", "world"])
    assert endpoints[A].calls == [["hello", "world"]]
    for text, p in zip(["hello", "world"], predictions, strict=True):
        assert p.probabilities == pytest.approx(probabilities(text), abs=1e-6)
        assert p.labels == [
            n for n, x in zip(GOEMOTIONS_LABELS, probabilities(text), strict=True) if x >= 0.5
        ]
        assert p.model_version == "student-3f2a9c1b7d10-int8"


def drop(name: str) -> Callable[[list[str], Outputs], Outputs]:
    return lambda texts, out: {k: v for k, v in out.items() if k != name}


def replace(name: str, make: Callable[[Outputs], np.ndarray]) -> Callable[[list[str], Outputs], Outputs]:
    return lambda texts, out: {**out, name: make(out)}


def set_last(output: str, value: float | bytes) -> Callable[[list[str], Outputs], Outputs]:
    """The first column of the last row of ``output`` replaced by ``value``."""

    def mangle(texts: list[str], out: Outputs) -> Outputs:
        changed = out[output].copy()
        changed[-1, 0] = value
        return {**out, output: changed}

    return mangle


@pytest.mark.parametrize(
    ("mangle", "reason", "needle"),
    [
        (drop(PROBABILITIES), "missing_output", "no PROBABILITIES output"),
        (drop(LABELS), "missing_output", "no LABELS output"),
        (drop(MODEL_VERSION), "missing_output", "no MODEL_VERSION output"),
        (replace(PROBABILITIES, lambda o: o[PROBABILITIES][:, :27]), "shape", "expected [2, 28 or 31]"),
        (replace(PROBABILITIES, lambda o: o[PROBABILITIES][:1]), "shape", "expected [2, 28 or 31]"),
        (
            replace(PROBABILITIES, lambda o: np.pad(o[PROBABILITIES], ((0, 0), (0, 2)))),
            "shape",
            "expected [2, 28 or 31]",
        ),
        # a model without learning-signal outputs cannot label one
        (set_last(LABELS, b"giving_up"), "unknown_label", "unknown label 'giving_up'"),
        (set_last(PROBABILITIES, float("nan")), "non_finite", "non-finite probabilities"),
        (set_last(PROBABILITIES, float("inf")), "non_finite", "non-finite probabilities"),
        (set_last(PROBABILITIES, 1.5), "out_of_range", "outside [0, 1]"),
        (set_last(PROBABILITIES, -0.01), "out_of_range", "outside [0, 1]"),
        (set_last(LABELS, b"happiness"), "unknown_label", "unknown label 'happiness'"),
        (set_last(LABELS, b"\xff"), "unknown_label", "not UTF-8"),
        (replace(LABELS, lambda o: o[LABELS][:1]), "shape", "LABELS has shape"),
        (replace(MODEL_VERSION, lambda o: o[MODEL_VERSION][:1]), "shape", "MODEL_VERSION has shape"),
        (replace(MODEL_VERSION, lambda o: np.array([[b"v"], [b""]], dtype=object)), "missing_version", ""),
        (replace(MODEL_VERSION, lambda o: np.array([[b"v"], [b"  "]], dtype=object)), "missing_version", ""),
    ],
)
async def test_a_malformed_answer_is_refused_saying_why(mangle, reason, needle):
    endpoints = Endpoints(A, B)
    endpoints[A].mangle = mangle
    with pytest.raises(InvalidModelOutput) as info:
        await client(endpoints, A, B).infer(["first", "second"])
    err = info.value
    assert err.code == "invalid_model_output" and err.status == STATUS["invalid_model_output"] == 502
    assert err.reason == reason and needle in err.message
    assert err.message.startswith("the model returned an invalid answer (")
    assert err.message.endswith("the text was not cached")
    assert endpoints[B].calls == []  # an answer, however bad, is not an outage: no failover


async def test_labels_may_be_empty_and_a_one_column_version_is_accepted():
    def mangle(texts: list[str], out: Outputs) -> Outputs:
        return {
            **out,
            LABELS: np.full((len(texts), 1), b"", dtype=object),
            MODEL_VERSION: np.array([b"v7"] * len(texts), dtype=object),  # (n,) as well as (n, 1)
        }

    endpoints = Endpoints(A)
    endpoints[A].mangle = mangle
    [p] = await client(endpoints, A).infer(["x"])
    assert p.labels == [] and p.model_version == "v7"


def test_check_predictions_refuses_what_a_fake_could_return():
    good = Prediction([0.5] * 28, ["joy"], "v1")
    check_predictions([good], 1)
    for bad, reason in [
        (Prediction([0.5] * 27, [], "v1"), "shape"),
        (Prediction([*[0.5] * 27, float("nan")], [], "v1"), "non_finite"),
        (Prediction([*[0.5] * 27, 2.0], [], "v1"), "out_of_range"),
        (Prediction([0.5] * 28, ["Joy"], "v1"), "unknown_label"),
        (Prediction([0.5] * 28, [], ""), "missing_version"),
    ]:
        with pytest.raises(InvalidModelOutput) as info:
            check_predictions([bad], 1)
        assert info.value.reason == reason
    with pytest.raises(InvalidModelOutput, match="2 rows for 1 texts"):
        check_predictions([good, good], 1)


# ---- failover ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [UNAVAILABLE, NOT_FOUND])
async def test_a_call_fails_over_to_the_next_endpoint_and_sticks_to_it(status):
    endpoints = Endpoints(A, B, C)
    triton = client(endpoints, A, B, C)
    endpoints[A].status = status  # down, or the model not loaded (a blue/green swap in progress)
    [p] = await triton.infer(["hello"])
    assert p.model_version == "test-v1"
    assert endpoints.calls() == [(A, ["hello"]), (B, ["hello"])]
    assert triton.current_url == B
    endpoints[A].status = None
    await triton.infer(["again"])
    assert endpoints[B].calls[-1] == ["again"] and len(endpoints[A].calls) == 1  # sticks to B
    endpoints[B].status = UNAVAILABLE
    await triton.infer(["third"])
    assert endpoints[A].calls[-1] == ["third"] and triton.current_url == A  # B down: back to A
    assert endpoints[C].calls == []


async def test_other_failures_are_not_retried_elsewhere():
    endpoints = Endpoints(A, B)
    endpoints[A].status = "StatusCode.DEADLINE_EXCEEDED"
    with pytest.raises(GatewayError) as info:
        await client(endpoints, A, B).infer(["slow"])
    assert info.value.code == "backend_timeout"
    assert endpoints[B].calls == []
    endpoints[A].status = "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(GatewayError) as info:
        await client(endpoints, A, B).infer(["bad"])
    assert info.value.code == "invalid_request" and endpoints[B].calls == []


async def test_the_breaker_sees_one_failure_only_when_every_endpoint_failed():
    endpoints = Endpoints(A, B)
    breaker = Breaker("the model server", 2, 60.0)
    wrapped = GuardedInference(client(endpoints, A, B), breaker)
    endpoints[A].status = UNAVAILABLE
    for _ in range(3):  # A down, B answers: no failure at all
        assert len(await wrapped.infer(["x"])) == 1
    endpoints[B].status = UNAVAILABLE
    with pytest.raises(GatewayError) as info:
        await wrapped.infer(["y"])
    assert info.value.code == "backend_unavailable" and info.value.headers == {"Retry-After": "1"}
    assert endpoints[A].calls[-1] == endpoints[B].calls[-1] == ["y"]  # each endpoint tried once
    assert breaker.state is State.CLOSED  # two endpoints failed, one failure counted
    with pytest.raises(GatewayError):
        await wrapped.infer(["z"])
    assert breaker.state is State.OPEN


async def test_ready_when_any_endpoint_is_ready():
    endpoints = Endpoints(A, B)
    triton = client(endpoints, A, B)
    assert await triton.ready()
    endpoints[A].status = UNAVAILABLE
    assert await triton.ready()
    endpoints[B].is_ready = False
    assert not await triton.ready()
    await triton.close()
    assert endpoints[A].closed and endpoints[B].closed


def test_endpoint_lists():
    assert split_urls(" a:1, b:2 ,,a:1") == ["a:1", "b:2"]
    assert split_urls(["a:1"]) == ["a:1"]
    with pytest.raises(ValueError, match="no Triton endpoint"):
        split_urls(" , ")
