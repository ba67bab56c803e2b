"""A live model swap under load through `python -m server`: install another model into the running
stack's repository; the launcher swaps it in (standby Triton, gateway failover) while requests keep
coming. No request fails, and every answer (response, cache, audit row) carries the version of the model
that really produced it: its probabilities are exactly that model's."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from contract.manifest import Manifest
from export.pipeline import install
from server.probes import wait_for
from tests.support.models import build_tiny_model
from tests.support.stack import E2E_LABELS, launcher, log_text, make_repository, oracle, tiny_options

pytestmark = pytest.mark.e2e

TEXTS = [
    "I finally understand recursion, thank you!",
    "why does this keep failing",
    "ok",
    "I want to give up.",
    "this is boring",
    "wait, so the base case stops it?",
]
VERSION_CHECK_S = 0.2


@pytest.fixture(scope="module")
def second_export(tmp_path_factory, tiny_data: Path) -> Path:
    from export.pipeline import export_model

    model = build_tiny_model(tmp_path_factory.mktemp("model-b") / "model", list(E2E_LABELS), seed=1)
    out = tmp_path_factory.mktemp("export-b")
    export_model(str(model), out, tiny_options(), tiny_data)
    return out


def expected(export_dir: Path, variant: str = "fp32") -> tuple[str, dict[str, np.ndarray]]:
    """The served version and each text's probabilities, computed in-process from the export."""
    predict = oracle(export_dir, variant)
    probs, _ = predict(TEXTS)
    return predict.version, dict(zip(TEXTS, probs, strict=True))


def post(url: str, text: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{url}/v1/emotions",
        data=json.dumps({"text": text, "learner_id": "swap-learner"}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_swap_under_load_fails_nothing_and_never_mislabels(tmp_path, tiny_export, second_export):
    repository = make_repository(tmp_path / "repo", tiny_export, "fp32")
    old_version, old_probs = expected(tiny_export)
    new_version, new_probs = expected(second_export)
    assert old_version != new_version
    probs_of = {old_version: old_probs, new_version: new_probs}
    audit_db = tmp_path / "audit.sqlite3"
    answers: list[tuple[float, str, int, dict]] = []
    stop = threading.Event()

    def load(offset: int) -> None:
        i = offset
        while not stop.is_set():
            text = TEXTS[i % len(TEXTS)]
            started = time.monotonic()
            status, body = post(url, text)
            answers.append((started, text, status, body))
            i += 1

    with launcher(
        repository,
        tmp_path,
        GATEWAY_VERSION_CHECK_S=str(VERSION_CHECK_S),
        GATEWAY_AUDIT_BACKEND="sqlite",
        GATEWAY_AUDIT_SQLITE_PATH=str(audit_db),
        GATEWAY_AUDIT_STORE_TEXT="true",
    ) as proc:
        url = proc.url
        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            # every text answered and cached under the old model
            assert wait_for(lambda: len(answers) >= 40, 60), "the load did not get going"
            install(second_export, repository)
            swapped = wait_for(
                lambda: "model swap done" in log_text(proc), 120, abort=lambda: not proc.alive()
            )
            assert swapped, log_text(proc)
            swapped_at = time.monotonic()
            # Load keeps coming until answers started well after the swap (the gateway has noticed the
            # new version) are in: those must all be the new model's.
            settled_at = swapped_at + 5 * VERSION_CHECK_S + 1
            wait_for(lambda: sum(started > settled_at for started, *_ in answers) >= 20, 60)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)

        failed = [(status, body) for _, _, status, body in answers if status != 200]
        assert not failed, failed[:3]
        seen = {body["model"]["version"] for *_, body in answers}
        assert seen == {old_version, new_version}, (seen, old_version, new_version)
        for _, text, _, body in answers:
            (result,) = body["results"]
            version = body["model"]["version"]
            by_label = result["emotions"] | result["learning_signals"]
            got = np.array([by_label[n] for n in Manifest.read(tiny_export / "manifest.json").labels])
            np.testing.assert_allclose(got, probs_of[version][text], atol=1e-5, err_msg=f"{version} {text}")
        # After the swap, the texts cached under the old model are answered by the new one.
        late = [body for started, _, _, body in answers if started > settled_at]
        late_versions = [b["model"]["version"] for b in late]
        assert late and set(late_versions) == {new_version}, (late_versions.count(old_version), len(late))

        proc.stop(timeout=60, sig=signal.SIGINT)  # the gateway flushes its audit rows
        with sqlite3.connect(audit_db) as db:
            rows = db.execute("SELECT text, model_version, labels FROM audit_log").fetchall()
        assert len(rows) == len(answers), (len(rows), len(answers), log_text(proc)[-3000:])
        labels_of: dict[tuple[str, str], list[str]] = {}
        for _, text, _, body in answers:  # one model, one text: one label set
            key = (text, body["model"]["version"])
            given = body["results"][0]["labels"] + body["results"][0]["signal_labels"]  # as audited
            assert labels_of.setdefault(key, given) == given
        for text, version, labels in rows:  # every audit row names the model that produced its labels
            assert json.loads(labels) == labels_of[(text, version)]
