"""The goemotions ensemble on a real embedded tritonserver: correctness, batching, bad input, restart."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from contract.manifest import Manifest
from server.embedded import EmbeddedTriton, shm_regions
from tests.support.stack import E2E_LABELS, TEXTS, grpc_infer, labels_of, oracle, triton_config, triton_metric

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def expected(repository: Path):
    """In-process ONNX Runtime on the same model file: what every served answer must equal."""
    manifest = Manifest.read(repository / "manifest.json")
    assert len(set(manifest.variants["fp32"].temperatures)) > 1  # answers go through fitted temperatures
    return oracle(repository)


def test_ensemble_equals_in_process_onnxruntime(triton, expected):
    for text in TEXTS:
        result = grpc_infer(triton, [text])
        probs, names = expected([text])
        np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), probs, atol=1e-5)
        assert labels_of(result) == names


def test_one_request_with_rows_of_mixed_lengths(triton, expected):
    result = grpc_infer(triton, TEXTS)
    probs, names = expected(TEXTS)
    assert result.as_numpy("PROBABILITIES").shape == (len(TEXTS), len(E2E_LABELS))
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), probs, atol=1e-5)
    assert labels_of(result) == names


def test_http_and_grpc_agree(triton):
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    inp = httpclient.InferInput("TEXT", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[TEXTS[0].encode()], [TEXTS[1].encode()]], dtype=object))
    http = client.infer("goemotions", [inp])
    grpc = grpc_infer(triton, TEXTS[:2])
    np.testing.assert_allclose(http.as_numpy("PROBABILITIES"), grpc.as_numpy("PROBABILITIES"), atol=1e-6)


def test_concurrent_requests_are_batched_and_answered_correctly(triton, expected):
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(64)]
    before_count = triton_metric(triton, "nv_inference_count", "classifier")
    before_exec = triton_metric(triton, "nv_inference_exec_count", "classifier")
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: grpc_infer(triton, [t]), texts))
    probs, names = expected(texts)
    for i, result in enumerate(results):  # each answer belongs to its own text
        np.testing.assert_allclose(result.as_numpy("PROBABILITIES")[0], probs[i], atol=1e-5)
        assert labels_of(result)[0] == names[i]
    inferences = triton_metric(triton, "nv_inference_count", "classifier") - before_count
    executions = triton_metric(triton, "nv_inference_exec_count", "classifier") - before_exec
    assert inferences == 64
    assert executions < inferences  # dynamic batching put several requests into one execution


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([b""], "TEXT row 0 is empty"),
        ([b"   "], "TEXT row 0 is empty"),
        ([b"ok", b"\xff\xfe"], "row 1 is not valid UTF-8"),
    ],
)
def test_bad_input_fails_only_its_own_request(triton, expected, raw, reason):
    good_text = TEXTS[0]
    with ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(grpc_infer, triton, [], raw) for _ in range(4)]
        good = [pool.submit(grpc_infer, triton, [good_text]) for _ in range(4)]
        for f in bad:
            with pytest.raises(InferenceServerException, match=reason) as exc:
                f.result()
            assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
        probs, _ = expected([good_text])
        for f in good:
            np.testing.assert_allclose(f.result().as_numpy("PROBABILITIES"), probs, atol=1e-5)
    assert grpcclient.InferenceServerClient(triton.grpc_url).is_server_live()


def test_http_bad_input_is_a_400_with_reason(triton):
    req = urllib.request.Request(
        f"{triton.http_url}/v2/models/goemotions/infer",
        data=b'{"inputs":[{"name":"TEXT","shape":[1,1],"datatype":"BYTES","data":[""]}]}',
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 400
    assert "TEXT row 0 is empty" in exc.value.read().decode()


def test_response_cache_serves_repeats_from_the_classifier(triton):
    text = "the cache should answer this one the second time"
    hits = triton_metric(triton, "nv_cache_num_hits_per_model", "classifier")
    first = grpc_infer(triton, [text])
    second = grpc_infer(triton, [text])
    assert triton_metric(triton, "nv_cache_num_hits_per_model", "classifier") == hits + 1
    np.testing.assert_array_equal(first.as_numpy("PROBABILITIES"), second.as_numpy("PROBABILITIES"))


def test_every_answer_names_the_model_that_produced_it(triton, repository):
    served = Manifest.read(repository / "manifest.json").served_version("fp32")
    result = grpc_infer(triton, TEXTS)
    assert [v.decode() for v in result.as_numpy("MODEL_VERSION").ravel()] == [served] * len(TEXTS)


def test_a_request_for_some_outputs_cannot_poison_the_cache(triton, expected):
    """Power users may ask for a subset of the outputs; the next full request of the same text still
    gets every output (the cache is keyed on what determines its one output)."""
    text = "a power user only wants the probabilities of this one"
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    partial = client.infer("goemotions", [inp], outputs=[grpcclient.InferRequestedOutput("PROBABILITIES")])
    assert partial.as_numpy("LABELS") is None
    for _ in range(2):
        full = grpc_infer(triton, [text])
        assert labels_of(full) == expected([text])[1]
        assert full.as_numpy("MODEL_VERSION") is not None


def test_restart_serves_again_and_leaves_no_shared_memory(repository, tmp_path, expected):
    config = triton_config(repository, tmp_path)
    for _ in range(2):
        server = EmbeddedTriton(config).start()
        try:
            assert server.startup_seconds is not None  # ready (how fast: the benchmarks' business)
            result = grpc_infer(server, [TEXTS[1]])
            np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), expected([TEXTS[1]])[0], atol=1e-5)
            owned = server.shm_regions()
            assert owned  # the python stubs hold regions while running
        finally:
            assert server.stop() == 0
        # Only this server's regions: other servers on the machine may come and go meanwhile.
        assert owned & shm_regions() == set()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_readme_client_example_runs(triton, expected, protocol):
    import json
    import subprocess
    import sys

    url = triton.grpc_url if protocol == "grpc" else triton.http_url.removeprefix("http://")
    script = Path(__file__).resolve().parents[2] / "clients" / "triton_client.py"
    out = subprocess.run(
        [sys.executable, str(script), "--protocol", protocol, "--url", url, *TEXTS[:2]],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = json.loads(out)
    assert [r["labels"] for r in rows] == expected(TEXTS[:2])[1]
    assert list(rows[0]["probabilities"]) == list(E2E_LABELS)  # named in output order, signals last


def test_memory_breakdown_covers_the_server_each_stub_and_shared_memory_once(triton):
    parts = triton.memory()
    assert {"tritonserver", "stub:tokenizer", "stub:classifier", "stub:postprocess"} <= parts.keys()
    assert all(v > 0 for v in parts.values()), parts
    # Shared memory counted once is far less than what plain RSS counts (libraries, shared pages twice).
    assert 0 < parts["shared memory"] < sum(parts.values()) < triton.rss_bytes()


def test_the_triton_metrics_the_alerts_name_are_the_servers_own(triton):
    """deploy/prometheus/alerts.yml names Triton metrics by the list in tests/unit/test_alerts.py: each is
    exported by this tritonserver, with the labels listed there (after an inference, so they have series)."""
    import re

    from tests.unit.test_alerts import ALERTS, TRITON, selectors

    grpc_infer(triton, TEXTS[:1])
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    # the series names as Prometheus stores them: the exposition's own (a parser would add _total)
    seen: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^(\w+)\{([^}]*)\}", text, re.M):
        seen.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    named = {name for alert in ALERTS for name, _ in selectors(alert["expr"]) if name.startswith("nv_")}
    assert named and named <= set(TRITON)
    for name in TRITON:
        assert name in seen, name
        assert TRITON[name] <= seen[name], (name, seen[name])
