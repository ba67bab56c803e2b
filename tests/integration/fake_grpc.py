"""A fake Triton at the gRPC-client level: what ``tritonclient.grpc.aio.InferenceServerClient`` returns
for the goemotions ensemble (numpy outputs by name, or an ``InferenceServerException`` with a gRPC
status), one per endpoint. ``gateway.triton.TritonClient(urls, ..., connect=endpoints.connect)`` runs
its real request building, failover and output checks against it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from contract.names import GOEMOTIONS_LABELS, LABELS, MODEL_VERSION, PROBABILITIES
from gateway.service import PROBE_TEXT

Outputs = dict[str, np.ndarray]


def probabilities(text: str) -> list[float]:
    """The same deterministic answer as tests.integration.test_gateway.FakeTriton."""
    seed = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 4) for b in seed[: len(GOEMOTIONS_LABELS)]]


class FakeResult:
    def __init__(self, outputs: Outputs) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)  # None for an output the answer lacks, as tritonclient does


class FakeEndpoint:
    """One Triton server: answers, or fails every call with ``status`` (e.g. "StatusCode.UNAVAILABLE").

    ``nan_texts`` get a NaN probability; ``mangle`` may rewrite the outputs of a call (texts, outputs).
    ``calls`` records the texts of every inference but the gateway's version probes (``probes``)."""

    def __init__(self, url: str, version: str = "test-v1") -> None:
        self.url = url
        self.version = version
        self.status: str | None = None
        self.is_ready = True
        self.calls: list[list[str]] = []
        self.probes = 0
        self.nan_texts: set[str] = set()
        self.mangle: Callable[[list[str], Outputs], Outputs] | None = None
        self.closed = False

    def _fail(self) -> None:
        if self.status is not None:
            raise InferenceServerException(f"{self.url}: failing on purpose", status=self.status)

    async def infer(
        self, model_name: str, inputs: list[Any], outputs: list[Any] | None = None, client_timeout: float = 0
    ) -> FakeResult:
        assert model_name == "goemotions" and client_timeout > 0
        texts = [t.decode() for t in deserialize_bytes_tensor(inputs[0]._get_content())]
        if texts == [PROBE_TEXT]:
            self.probes += 1
        else:
            self.calls.append(texts)
        self._fail()
        probs = np.array([probabilities(t) for t in texts], dtype=np.float32)
        for i, text in enumerate(texts):
            if text in self.nan_texts:
                probs[i, 3] = np.nan
        rows = [
            [n.encode() for n, p in zip(GOEMOTIONS_LABELS, row, strict=True) if p >= 0.5] for row in probs
        ]
        labels = np.full((len(texts), max(1, *map(len, rows))), b"", dtype=object)
        for i, row in enumerate(rows):
            labels[i, : len(row)] = row
        versions = np.array([[self.version.encode()] for _ in texts], dtype=object)
        result: Outputs = {PROBABILITIES: probs, LABELS: labels, MODEL_VERSION: versions}
        if self.mangle is not None:
            result = self.mangle(texts, result)
        return FakeResult(result)

    async def is_server_ready(self, client_timeout: float = 0) -> bool:
        self._fail()
        return self.is_ready

    async def is_model_ready(self, model_name: str, client_timeout: float = 0) -> bool:
        self._fail()
        return self.is_ready

    async def close(self) -> None:
        self.closed = True


class Endpoints:
    """Fake endpoints by URL; ``connect`` is what TritonClient calls to open one."""

    def __init__(self, *urls: str, version: str = "test-v1") -> None:
        self.by_url = {url: FakeEndpoint(url, version) for url in urls}

    def connect(self, url: str) -> FakeEndpoint:
        return self.by_url[url]

    def __getitem__(self, url: str) -> FakeEndpoint:
        return self.by_url[url]

    def calls(self) -> list[tuple[str, list[str]]]:
        """Every endpoint's inference calls, as (url, texts), endpoint by endpoint."""
        return [(url, texts) for url, e in self.by_url.items() for texts in e.calls]
