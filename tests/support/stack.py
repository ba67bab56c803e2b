"""What the e2e tests share on top of the stack harness (server.stack): a repository with a tiny export,
Triton settings for tests, the launcher as a context, direct gRPC calls, Triton's metrics, and the
in-process ONNX Runtime oracle every served answer must equal."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from contract.manifest import Manifest
from contract.names import WITH_LEARNING_SIGNALS
from contract.spec import SPEC_FILE, ServingSpec
from server.embedded import EmbeddedTriton, ServerConfig
from server.gateway_process import ManagedProcess
from server.probes import metric, scrape
from server.stack import Stack

MODEL = "goemotions"
# The e2e model's outputs: the 28 GoEmotions labels, then the learning signals (as the offline student).
E2E_LABELS = WITH_LEARNING_SIGNALS
PYTHON_MODELS = ("tokenizer/1/model.py", "classifier/1/model.py", "postprocess/1/model.py")
TEXTS = [
    "I finally understand recursion, thank you so much!",
    "This is so confusing. I have tried five times and I still don't get why it fails.",
    "ok",
    "Why does [NAME] always get the easy questions?? Not fair at all.",
    "wow 😮 didn't expect that",
    "لا أفهم هذا السؤال",
]
# Response cache on (a test checks it), short exit timeout: tests stop servers often.
TEST_TRITON = {"cache_bytes": ServerConfig.cache_bytes, "ready_timeout_s": 60.0, "exit_timeout_s": 5}


def tiny_options() -> Any:
    """Export options for random weights: F1 criteria opened up; fitted temperatures served as-is."""
    from export.pipeline import ExportOptions

    return ExportOptions(eval_limit=60, max_macro_f1_drop=1.0, max_calibration_f1_drop=1.0)


def make_repository(target: Path, export_dir: Path, cpu_variant: str, **spec_overrides: Any) -> Path:
    """The project's python models + a tiny export installed with the committed serving settings
    (``spec_overrides`` on top, e.g. the embedded GPU configuration's torch device)."""
    from export.pipeline import MODEL_REPOSITORY, install

    for rel in PYTHON_MODELS:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODEL_REPOSITORY / rel, target / rel)
    spec = ServingSpec.read(MODEL_REPOSITORY / SPEC_FILE)
    ServingSpec(**{**spec.__dict__, "cpu_variant": cpu_variant, **spec_overrides}).write(target / SPEC_FILE)
    install(export_dir, target)
    return target


def triton_config(repository: Path, work_dir: Path, **overrides: Any) -> ServerConfig:
    """Free ports, test settings (TEST_TRITON) and ``overrides``; not started."""
    return Stack(work_dir).triton_config(repository, **{**TEST_TRITON, **overrides})


@contextlib.contextmanager
def running_triton(repository: Path, work_dir: Path, **overrides: Any) -> Iterator[EmbeddedTriton]:
    with Stack(work_dir) as stack:
        yield stack.start_triton(repository, **{**TEST_TRITON, **overrides})


@contextlib.contextmanager
def launcher(repository: Path, work_dir: Path, **settings: str) -> Iterator[ManagedProcess]:
    """`python -m server` (Triton + gateway) on free ports, ready; ``settings`` are the gateway's
    GATEWAY_* variables. Output in ``work_dir/launcher.log``; stopped (SIGTERM, then SIGKILL) at exit."""
    with Stack(work_dir) as stack:
        yield stack.start_launcher(repository, settings, ready_timeout_s=120)


def log_text(process: ManagedProcess) -> str:
    return process.log_file.read_text(errors="replace")


def tritonserver_of(launcher: ManagedProcess) -> psutil.Process:
    """The tritonserver the launcher runs right now (its child; a fresh one after a restart)."""
    assert launcher.pid is not None
    children = psutil.Process(launcher.pid).children(recursive=True)
    found = [p for p in children if p.name() == "tritonserver"]
    assert found, "the launcher runs no tritonserver"
    return found[0]


# ---- calling Triton ---------------------------------------------------------------------------------


def grpc_infer(server: EmbeddedTriton, texts: list[str], raw: list[bytes] | None = None) -> Any:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.array([[t.encode()] for t in texts] if raw is None else [[b] for b in raw], dtype=object)
    inp = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    return client.infer(MODEL, [inp])


def labels_of(result: Any) -> list[list[str]]:
    return [[x.decode() for x in row if x] for row in result.as_numpy("LABELS")]


def as_triton_row(result: dict[str, Any]) -> tuple[list[float], list[str]]:
    """A gateway result as Triton answered its row: the probabilities in output order (emotions, then
    the learning signals) and every label (emotion labels, then signal labels)."""
    probs = [*result["emotions"].values(), *(result["learning_signals"] or {}).values()]
    return probs, [*result["labels"], *result["signal_labels"]]


def triton_metric(server: EmbeddedTriton, name: str, model: str) -> float:
    """One of Triton's per-model counters (version 1), 0.0 before the first request."""
    return metric(scrape(server.metrics_url), name, model=model, version="1")


# ---- the oracle -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Oracle:
    """In-process ONNX Runtime on a served model file: what every served answer must equal."""

    version: str
    labels: list[str]
    predict: Callable[[list[str]], tuple[np.ndarray, list[list[str]]]]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, list[list[str]]]:
        return self.predict(texts)


def oracle(model_dir: Path, variant: str = "fp32") -> Oracle:
    """The oracle of an installed repository (``model_dir``: classifier/1 + tokenizer/1) or of an export
    directory (model files and tokenizer side by side)."""
    from export.packaging.runtime import load_tokenizer, onnx_classifier
    from export.training.calibration import calibrated_probabilities

    manifest = Manifest.read(model_dir / "manifest.json")
    entry = manifest.variants[variant]
    if (model_dir / "classifier").is_dir():
        model_file, tokenizer_dir = model_dir / "classifier" / "1" / entry.file, model_dir / "tokenizer" / "1"
    else:
        model_file, tokenizer_dir = model_dir / entry.file, model_dir
    clf = onnx_classifier(model_file, load_tokenizer(tokenizer_dir), execution=entry.execution)
    temperatures = np.array(entry.temperatures)

    def predict(texts: list[str]) -> tuple[np.ndarray, list[list[str]]]:
        # One text at a time: a served answer does not depend on its request's other rows.
        probs = np.concatenate(
            [calibrated_probabilities(clf.logits([t]), temperatures) for t in texts]
        ).astype(np.float32)
        names = [
            [n for n, p, t in zip(manifest.labels, row, entry.thresholds, strict=True) if p >= t]
            for row in probs
        ]
        return probs, names

    return Oracle(manifest.served_version(variant), list(manifest.labels), predict)
