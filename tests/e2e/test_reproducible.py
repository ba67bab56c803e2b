"""Reproducible answers on a real embedded tritonserver with the INT8 variants: a text's probabilities do
not depend on what else is in its request or in flight (issue: dynamic INT8 scales over the batch)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from contract.manifest import Manifest
from server.embedded import EmbeddedTriton
from tests.support.stack import make_repository, running_triton, triton_metric

pytestmark = pytest.mark.e2e

TARGETS = ["I finally get it!", "ok", "this is so confusing, why does it keep failing", "thanks :)"]
LONG = [
    "I have been staring at this proof for two hours and every time I think I understand the induction "
    f"step something else falls apart, variant {i}, and honestly I am about to give up on it"
    for i in range(7)
]
TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=["int8", "int8_dynamic"])
def int8_server(request, tmp_path_factory, tiny_export: Path) -> Iterator[tuple[EmbeddedTriton, str]]:
    variant = request.param
    repository = make_repository(tmp_path_factory.mktemp(f"repo-{variant}"), tiny_export, variant)
    # No response cache: every answer below is computed, never replayed.
    with running_triton(repository, tmp_path_factory.mktemp("triton"), cache_bytes=0) as server:
        yield server, Manifest.read(repository / "manifest.json").served_version(variant)


def infer(server: EmbeddedTriton, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    result = client.infer("goemotions", [inp])
    return result.as_numpy("PROBABILITIES"), [v.decode() for v in result.as_numpy("MODEL_VERSION").ravel()]


def classifier_counts(server: EmbeddedTriton) -> tuple[float, float]:
    return tuple(
        triton_metric(server, name, "classifier")
        for name in ("nv_inference_count", "nv_inference_exec_count")
    )


def test_alone_in_a_request_with_long_texts_and_under_dynamic_batching_agree(int8_server):
    server, version = int8_server
    alone = {t: infer(server, [t])[0][0] for t in TARGETS}
    for text in TARGETS:
        probs, versions = infer(server, [text, *LONG])  # padded to the long texts' length
        assert versions == [version] * (1 + len(LONG))
        np.testing.assert_allclose(probs[0], alone[text], atol=TOLERANCE, rtol=0)

    count, executions = classifier_counts(server)
    load = [*LONG, *TARGETS] * 8
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: infer(server, [t])[0][0], load))
    new_count, new_executions = classifier_counts(server)
    assert new_executions - executions < new_count - count  # requests really shared executions
    for text, probs in zip(load, answers, strict=True):
        if text in alone:
            np.testing.assert_allclose(probs, alone[text], atol=TOLERANCE, rtol=0)
