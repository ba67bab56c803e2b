"""Fake Tritons for the gateway tests.

``FakeTriton`` is an ``Inference`` (what the gateway's pipeline calls): deterministic per-text answers,
failures and holds on demand. ``Endpoints``/``FakeEndpoint`` fake one level lower, what
``tritonclient.grpc.aio.InferenceServerClient`` returns for the goemotions ensemble (numpy outputs by
name, or an ``InferenceServerException`` with a gRPC status), so ``TritonClient(urls, ...,
connect=endpoints.connect)`` runs its real request building, failover and output checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from contract.names import GOEMOTIONS_LABELS, LABELS, MODEL_VERSION, PROBABILITIES
from gateway.backends.triton import Prediction
from gateway.core.pipeline import PROBE_TEXT

WAIT_S = 10  # upper bound on any wait: a broken gateway fails the test instead of hanging it

Outputs = dict[str, np.ndarray]


def probabilities(text: str, width: int = len(GOEMOTIONS_LABELS)) -> list[float]:
    """The fakes' deterministic answer for a text: ``width`` (28, or 31 with the learning signals)
    probabilities from its hash."""
    seed = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 4) for b in seed[:width]]


def expected_primary(names: list[str], probs: list[float], labels: list[str]) -> tuple[str, float]:
    """The README's rule: the most probable of `labels`, or neutral when there are none."""
    by_name = dict(zip(names, probs, strict=True))
    primary = max(labels, key=by_name.__getitem__) if labels else "neutral"
    return primary, by_name[primary]


class FakeTriton:
    """Deterministic per-text probabilities, labels at 0.5, and the model version it reports (`version`,
    switchable to simulate a model swap); records calls (version probes apart, in `probes`); fails with
    `fail` when set; while `hold` is set to an unset event, each call (probes apart) sets `entered` and
    waits for it; `answers` overrides the (probabilities, labels) of given texts."""

    def __init__(self, names: list[str] = list(GOEMOTIONS_LABELS), version: str = "test-v1") -> None:  # noqa: B006
        self.names = names
        self.version = version
        self.calls: list[list[str]] = []
        self.probes = 0
        self.fail: Exception | None = None
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.is_ready = True
        self.answers: dict[str, tuple[list[float], list[str]]] = {}

    def probabilities(self, text: str) -> list[float]:
        return probabilities(text, len(self.names))

    def labels(self, text: str) -> list[str]:
        return [n for n, x in zip(self.names, self.probabilities(text), strict=True) if x >= 0.5]

    async def infer(self, texts: list[str]) -> list[Prediction]:
        if texts == [PROBE_TEXT]:
            self.probes += 1
        else:
            self.calls.append(list(texts))
            if self.hold is not None:
                self.entered.set()
                await asyncio.wait_for(self.hold.wait(), WAIT_S)
        if self.fail is not None:
            raise self.fail
        out = []
        for t in texts:
            probs, labels = self.answers.get(t) or (self.probabilities(t), self.labels(t))
            out.append(Prediction(probs, labels, self.version))
        return out

    async def ready(self) -> bool:
        return self.is_ready

    async def close(self) -> None:
        return None


class GatedTriton(FakeTriton):
    """FakeTriton for a gateway served from another thread: while `gate` is clear, each call (probes
    apart) sets `entered` (here a threading.Event) and waits for the gate."""

    def __init__(self, names: list[str] = list(GOEMOTIONS_LABELS)) -> None:  # noqa: B006
        super().__init__(names)
        self.entered = threading.Event()  # type: ignore[assignment]
        self.gate = threading.Event()
        self.gate.set()

    async def infer(self, texts: list[str]) -> list[Prediction]:
        if texts == [PROBE_TEXT]:
            return await super().infer(texts)
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, WAIT_S)
        return await super().infer(texts)


# --- the gRPC-client level --------------------------------------------------------------------------


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
