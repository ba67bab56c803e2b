"""Outcome feedback through the in-process gateway (SQLite audit trail): POST /v1/outcomes links what
happened to a real stored result of the caller's tenant's learner, validation, scoping, the features the
audit row keeps for fitting, and erasure and retention removing outcomes too."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.core.tenants import Scope, create_key
from gateway.learning.policy import load_policy
from tests.support.fake_triton import FakeTriton
from tests.support.gateway import KEY, error, gateway, make_settings, running, services


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, dict[str, str]]:
    path = tmp_path / "keys.json"
    out = {}
    for tenant in ("acme", "beta"):
        _, key = create_key(path, tenant, [s.value for s in Scope], key_id=tenant)
        out[tenant] = {"X-API-Key": key}
    return out


def settings(tmp_path: Path, **kwargs: Any):
    kwargs.setdefault("audit_backend", "sqlite")
    kwargs.setdefault("audit_sqlite_path", tmp_path / "audit.sqlite3")
    return make_settings(api_keys_file=tmp_path / "keys.json", audit_hash_key=SecretStr(KEY), **kwargs)


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def analysed(client, headers, learner_id: str, texts: list[str], context: dict | None = None) -> dict:
    body: dict[str, Any] = {"texts": texts, "learner_id": learner_id}
    if context:
        body["context"] = context
    r = await client.post("/v1/emotions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_an_outcome_links_to_the_stored_result_and_its_features(tmp_path, keys, label_names):
    db = tmp_path / "audit.sqlite3"
    async with gateway(settings(tmp_path), FakeTriton(label_names)) as client:
        answer = await analysed(
            client, keys["acme"], "ada", ["I give up", "fine"], {"recent_error_rate": 0.6}
        )
        result = answer["results"][1]
        request_id, index = result["result_id"].rsplit("-", 1)
        assert len(request_id) == 32 and index == "1"
        assert result["learning_state"]["policy_version"] == load_policy().identity
        r = await client.post(
            "/v1/outcomes",
            json={"result_id": result["result_id"], "learner_id": "ada", "outcome": "abandoned_session"},
            headers=keys["acme"],
        )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "id": r.json()["id"],
        "result_id": result["result_id"],
        "outcome": "abandoned_session",
    }
    stored = rows(
        db, "SELECT tenant, learner_id, request_id, text_index, outcome, label, key_id FROM audit_outcomes"
    )
    assert stored == [("acme", "ada", request_id, 1, "abandoned_session", None, "acme")]
    # the linked audit row keeps what decided, for fitting a policy from (features, outcome) pairs
    ((features, policy_version),) = rows(
        db,
        "SELECT features, policy_version FROM audit_log WHERE request_id = ? AND text_index = 1",
        request_id,
    )
    features = json.loads(features)
    assert policy_version == load_policy().identity
    assert features["context"] == {"recent_error_rate": 0.6}
    assert features["learning_emotions"] == result["learning_state"]["learning_emotions"]
    assert features["risk_score"] >= 0 and features["valence"] == result["learning_state"]["valence"]
    # and the fitter reads the pair back: the stored features, the outcome as "needed help"
    from export.policy_fit import records_from_sqlite, risk_pairs

    pairs = risk_pairs(records_from_sqlite(db), load_policy())
    assert list(pairs.y) == [1.0] and pairs.handset[0] == features["risk_score"]
    # the fit's inputs are the gateway's own: the policy's context strain of the stored context
    assert pairs.x[0][pairs.inputs.index("context_strain")] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"result_id": "nope", "learner_id": "ada", "outcome": "asked_for_help"}, "result_id"),
        ({"result_id": "0" * 32 + "-0", "learner_id": "ada", "outcome": "cried"}, "outcome"),
        ({"result_id": "0" * 32 + "-0", "learner_id": "ada", "outcome": "other"}, "needs a label"),
        ({"result_id": "0" * 32 + "-0", "learner_id": "a/b", "outcome": "asked_for_help"}, "learner_id"),
        ({"result_id": "0" * 32 + "-0", "learner_id": "ada", "outcome": "other", "label": "x" * 65}, "label"),
        (
            {"result_id": "0" * 32 + "-0", "learner_id": "ada", "outcome": "asked_for_help", "extra": 1},
            "extra",
        ),
    ],
)
async def test_bad_outcomes_are_a_422_naming_the_field(tmp_path, keys, label_names, body, needle):
    async with gateway(settings(tmp_path), FakeTriton(label_names)) as client:
        r = await client.post("/v1/outcomes", json=body, headers=keys["acme"])
    assert r.status_code == 422 and needle in error(r)["message"], r.text


async def test_only_the_tenants_own_learner_s_results_link(tmp_path, keys, label_names):
    async with gateway(settings(tmp_path), FakeTriton(label_names)) as client:
        result_id = (await analysed(client, keys["acme"], "ada", ["hello"]))["results"][0]["result_id"]
        other = dict(result_id=result_id, outcome="asked_for_help")
        unknown = await client.post(
            "/v1/outcomes",
            json={**other, "result_id": "f" * 32 + "-0", "learner_id": "ada"},
            headers=keys["acme"],
        )
        wrong_learner = await client.post(
            "/v1/outcomes", json={**other, "learner_id": "bob"}, headers=keys["acme"]
        )
        other_tenant = await client.post(
            "/v1/outcomes", json={**other, "learner_id": "ada"}, headers=keys["beta"]
        )
        own = await client.post("/v1/outcomes", json={**other, "learner_id": "ada"}, headers=keys["acme"])
        unauthenticated = await client.post("/v1/outcomes", json={**other, "learner_id": "ada"})
    for r in (unknown, wrong_learner, other_tenant):
        assert r.status_code == 404 and error(r)["code"] == "not_found", r.text
    # another tenant gets the answer of an unknown result: nothing about who has it
    message = error(other_tenant)["message"]
    assert message.startswith(f"no result {result_id!r} recorded for learner 'ada'") and "acme" not in message
    assert own.status_code == 201
    assert unauthenticated.status_code == 401


async def test_without_an_audit_trail_there_is_nothing_to_link_to(tmp_path, keys, label_names):
    async with gateway(settings(tmp_path, audit_backend="off"), FakeTriton(label_names)) as client:
        result_id = (await analysed(client, keys["acme"], "ada", ["hello"]))["results"][0]["result_id"]
        r = await client.post(
            "/v1/outcomes",
            json={"result_id": result_id, "learner_id": "ada", "outcome": "asked_for_help"},
            headers=keys["acme"],
        )
    assert r.status_code == 404 and error(r)["code"] == "feature_disabled"


async def test_erasure_and_retention_remove_outcomes(tmp_path, keys, label_names):
    db = tmp_path / "audit.sqlite3"
    async with running(settings(tmp_path), FakeTriton(label_names)) as (client, app):
        for learner in ("ada", "bob"):
            result_id = (await analysed(client, keys["acme"], learner, ["hello"]))["results"][0]["result_id"]
            r = await client.post(
                "/v1/outcomes",
                json={
                    "result_id": result_id,
                    "learner_id": learner,
                    "outcome": "other",
                    "label": "left early",
                },
                headers=keys["acme"],
            )
            assert r.status_code == 201, r.text
        assert (await client.delete("/v1/learners/ada", headers=keys["acme"])).status_code == 200
        assert rows(db, "SELECT learner_id FROM audit_outcomes") == [("bob",)]
        assert rows(db, "SELECT outcomes FROM audit_erasures") == [(1,)]
        # retention: outcomes older than the cutoff go with the audit rows
        trail = services(app).audit_trail
        assert trail is not None
        await trail.apply_retention(datetime.now(UTC) + timedelta(days=trail.retention_days + 1))
    assert rows(db, "SELECT count(*) FROM audit_outcomes") == [(0,)]
