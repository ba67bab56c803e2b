"""The embedded server's GPU configuration (configs/embedded-gpu.pbtxt: the classifier runs the torch
runtime on the torch_fp16 variant), served by the real tritonserver with the torch device set to the CPU
(no GPU here): the same ensemble, the variant's own version, answers equal to the torch runtime in process,
and rows independent of their batch. On a GPU the same files run with torch_device cuda (docs/gpu.md)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from contract.manifest import Manifest
from export.packaging.runtime import load_tokenizer
from export.packaging.torch_variant import TORCH_FP16, torch_runtime_classifier
from export.training.calibration import calibrated_probabilities
from server.embedded import EmbeddedTriton
from tests.support.stack import TEXTS, grpc_infer, labels_of, make_repository, running_triton

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory, tiny_export: Path) -> Path:
    return make_repository(
        tmp_path_factory.mktemp("gpu-repo"),
        tiny_export,
        "fp32",
        embedded_gpu_torch_device="cpu",
        embedded_gpu_instance_kind="cpu",
    )


@pytest.fixture(scope="module")
def gpu_triton(tmp_path_factory, gpu_repository: Path) -> Iterator[EmbeddedTriton]:
    with running_triton(
        gpu_repository, tmp_path_factory.mktemp("gpu-triton"), config_name="embedded-gpu"
    ) as s:
        yield s


def expected(export_dir: Path, texts: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    manifest = Manifest.read(export_dir / "manifest.json")
    entry = manifest.variants[TORCH_FP16]
    clf = torch_runtime_classifier(export_dir / entry.file, load_tokenizer(export_dir), manifest.input_names)
    probs = np.concatenate(
        [calibrated_probabilities(clf.logits([t]), np.array(entry.temperatures)) for t in texts]
    )
    labels = [
        [n for n, p, t in zip(manifest.labels, row, entry.thresholds, strict=True) if p >= t] for row in probs
    ]
    return probs, labels


def test_the_gpu_configuration_serves_the_torch_variant(gpu_triton, tiny_export):
    result = grpc_infer(gpu_triton, TEXTS)
    version = Manifest.read(tiny_export / "manifest.json").served_version(TORCH_FP16)
    assert [v[0].decode() for v in result.as_numpy("MODEL_VERSION")] == [version] * len(TEXTS)
    probs, labels = expected(tiny_export, TEXTS)
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), probs, atol=1e-5)
    assert labels_of(result) == labels


def test_a_row_is_answered_alike_alone_and_in_a_batch(gpu_triton):
    together = grpc_infer(gpu_triton, TEXTS).as_numpy("PROBABILITIES")
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(
            grpc_infer(gpu_triton, [text]).as_numpy("PROBABILITIES")[0], together[i], atol=1e-5
        )


def test_asking_for_a_gpu_where_torch_sees_none_is_a_clear_error(gpu_repository, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--repository",
            str(gpu_repository),
            "--device",
            "gpu",
            "--no-gateway",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "torch sees no CUDA device" in out.stderr


def test_the_gpu_benchmark_runs_end_to_end_with_the_torch_device_on_the_cpu(gpu_repository, tmp_path):
    """A smoke run of `make bench-gpu` (seconds, not minutes): every part measures and reports."""
    from loadtest import bench_gpu

    args = bench_gpu.build_parser().parse_args(
        [
            "--repository", str(gpu_repository), "--device", "cpu", "--seconds", "0.5",
            "--batch-sizes", "1", "4", "--concurrency", "1", "4", "--cpu-grid", "1x1",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    report = bench_gpu.run(args)
    assert [r["batch"] for r in report["inprocess"]] == [1, 4]
    assert all(r["texts_per_s"] > 0 for r in report["inprocess"])
    assert [r["clients"] for r in report["triton"]] == [1, 4]
    for row in report["triton"]:
        assert row["requests"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["avg_batch"] >= 1 and row["vs_inprocess"] > 0
        assert row["gpu_utilisation"] is None  # no GPU: Triton exports no GPU metrics
    assert [(r["instances"], r["threads"]) for r in report["cpu"]] == [(1, 1)]
    assert report["model"].endswith("-torch_fp16")
    paths = bench_gpu.write(report, tmp_path / "out")
    assert {p.name for p in paths} == {"gpu_bench.json", "gpu_bench.md", "gpu_bench.png"}
    assert "| 4 |" in (tmp_path / "out" / "gpu_bench.md").read_text()
