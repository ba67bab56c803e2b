"""Switching the learning-state policy without a restart, through the in-process gateway: GET /v1/policy
lists the versions in GATEWAY_POLICY_DIR, PUT switches the one the caller's tenant's later analyses use
(and report, in the result and the audit row) and no other tenant's, the operator's (default tenant's)
switch moves the deployment's version (and the metric), DELETE returns a tenant to it, another replica on
the same folder follows, bad requests are 4xx, and the routes need the policy:admin scope."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from gateway.core import policies
from gateway.core.policies import ACTIVE_FILE
from gateway.core.tenants import Scope, create_key
from gateway.learning.policy import DEFAULT_POLICY_PATH, Policy, load_policy
from gateway.learning.state import assess
from tests.support.fake_triton import FakeTriton, probabilities
from tests.support.gateway import KEY, error, gateway, make_settings, running, services


def read_differently(label_names: list[str], a: Policy, b: Policy) -> tuple[str, str, str]:
    """A text the fake Triton answers with probabilities policies ``a`` and ``b`` put at different levels,
    and both levels."""
    for i in range(500):
        text = f"I keep getting this wrong ({i})"
        probs = dict(zip(label_names, probabilities(text, len(label_names)), strict=True))
        first, second = assess(probs, a).intervention_level, assess(probs, b).intervention_level
        if first != second:
            return text, first, second
    raise AssertionError("no text read differently")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A policy folder with two more versions: the shipped policy with every cut point near 0, or near 1."""
    directory = tmp_path / "policies"
    directory.mkdir()
    text = DEFAULT_POLICY_PATH.read_text()
    old = "cut_points = [0.15, 0.3, 0.45, 0.6, 0.75]"
    assert old in text
    (directory / "eager.toml").write_text(text.replace(old, "cut_points = [0.01, 0.02, 0.03, 0.04, 0.05]"))
    (directory / "lenient.toml").write_text(text.replace(old, "cut_points = [0.9, 0.92, 0.94, 0.96, 0.98]"))
    return directory


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, dict[str, str]]:
    path = tmp_path / "keys.json"
    _, admin = create_key(path, "acme", [s.value for s in Scope], key_id="admin")
    _, analyst = create_key(path, "acme", [Scope.ANALYSE.value], key_id="analyst")
    _, operator = create_key(path, "default", [s.value for s in Scope], key_id="operator")
    _, beta = create_key(path, "beta", [Scope.ANALYSE.value], key_id="beta")
    return {
        "admin": {"X-API-Key": admin},
        "analyst": {"X-API-Key": analyst},
        "operator": {"X-API-Key": operator},
        "beta": {"X-API-Key": beta},
    }


def settings(tmp_path: Path, folder: Path, **kwargs: Any):
    return make_settings(
        api_keys_file=tmp_path / "keys.json",
        policy_dir=folder,
        policy_check_s=0,  # the routes re-read the folder themselves; the watch is tested on its own
        audit_backend="sqlite",
        audit_sqlite_path=tmp_path / "audit.sqlite3",
        audit_hash_key=SecretStr(KEY),
        **kwargs,
    )


async def analyse(client, headers, text: str = "I keep getting this wrong") -> dict:
    r = await client.post("/v1/emotions", json={"texts": [text], "learner_id": "ada"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["learning_state"]


def active_metric(app) -> dict[str, float]:
    exposition = generate_latest(services(app).metrics.registry).decode()
    families = text_string_to_metric_families(exposition)
    return {
        s.labels["version"]: s.value for f in families if f.name == "gateway_policy_active" for s in f.samples
    }


async def test_a_tenants_switch_reaches_its_next_analysis_and_audit_row_and_no_other_tenant(
    tmp_path, folder, keys, label_names
):
    shipped, lenient = load_policy(), load_policy(folder / "lenient.toml")
    text, level_before, level_after = read_differently(label_names, shipped, lenient)
    shipped_v, lenient_v = shipped.identity, lenient.identity
    async with running(settings(tmp_path, folder), FakeTriton(label_names)) as (client, app):
        listed = (await client.get("/v1/policy", headers=keys["admin"])).json()
        assert listed["active"] == listed["default"] == shipped_v and not listed["chosen_by_tenant"]
        assert listed["switchable"] is True
        eager_v = load_policy(folder / "eager.toml").identity
        assert {v["version"] for v in listed["versions"]} == {shipped_v, eager_v, lenient_v}
        assert all(v["risk"] == "hand_set" for v in listed["versions"])
        before = await analyse(client, keys["analyst"], text)

        r = await client.put("/v1/policy", json={"version": lenient_v}, headers=keys["admin"])
        assert r.status_code == 200, r.text
        assert (r.json()["active"], r.json()["default"], r.json()["chosen_by_tenant"]) == (
            lenient_v,
            shipped_v,
            True,
        )
        after = await analyse(client, keys["analyst"], text)
        other = await analyse(client, keys["beta"], text)
        assert active_metric(app) == {shipped_v: 1.0}  # the deployment's version did not move
    assert (folder / "tenants" / "acme").read_text().strip() == lenient_v  # what the other replicas read
    assert not (folder / ACTIVE_FILE).exists()
    assert before["policy_version"] == shipped_v and after["policy_version"] == lenient_v
    assert other["policy_version"] == shipped_v and other["intervention_level"] == level_before
    # the same text, the same probabilities: only the policy's cut points differ
    assert before["risk_score"] == after["risk_score"]
    assert (before["intervention_level"], after["intervention_level"]) == (level_before, level_after)
    with sqlite3.connect(tmp_path / "audit.sqlite3") as conn:
        versions = [
            tuple(r) for r in conn.execute("SELECT tenant, policy_version FROM audit_log ORDER BY id")
        ]
    assert versions == [("acme", shipped_v), ("acme", lenient_v), ("beta", shipped_v)]


async def test_the_operator_moves_the_deployment_and_a_tenant_can_follow_it_again(
    tmp_path, folder, keys, label_names
):
    shipped_v = load_policy().identity
    eager_v, lenient_v = (load_policy(folder / f"{n}.toml").identity for n in ("eager", "lenient"))
    async with running(settings(tmp_path, folder), FakeTriton(label_names)) as (client, app):
        assert (await client_put(client, lenient_v, keys)).status_code == 200  # acme's own choice
        r = await client.put("/v1/policy", json={"version": eager_v}, headers=keys["operator"])
        assert r.status_code == 200 and r.json()["default"] == eager_v, r.text
        assert active_metric(app) == {eager_v: 1.0}
        assert (await analyse(client, keys["beta"]))["policy_version"] == eager_v  # follows the deployment
        assert (await analyse(client, keys["analyst"]))["policy_version"] == lenient_v  # keeps its own
        r = await client.delete("/v1/policy", headers=keys["admin"])
        assert r.status_code == 200 and r.json()["active"] == eager_v and not r.json()["chosen_by_tenant"]
        assert (await analyse(client, keys["analyst"]))["policy_version"] == eager_v
        # idempotent, and the operator has no choice of its own to forget
        assert (await client.delete("/v1/policy", headers=keys["admin"])).status_code == 200
        assert (await client.delete("/v1/policy", headers=keys["operator"])).json()["default"] == eager_v
    assert (folder / ACTIVE_FILE).read_text().strip() == eager_v
    assert not (folder / "tenants" / "acme").exists()
    assert shipped_v not in (eager_v, lenient_v)


async def test_another_replica_on_the_folder_follows_the_switch(tmp_path, folder, keys, label_names):
    eager = load_policy(folder / "eager.toml").identity
    fake = FakeTriton(label_names)
    async with (
        gateway(settings(tmp_path, folder), fake) as one,
        gateway(settings(tmp_path, folder), fake) as two,
    ):
        assert (await client_put(one, eager, keys)).status_code == 200
        # a restart is not needed: the next re-read of the folder (here the route's own) switches it
        assert (await two.get("/v1/policy", headers=keys["admin"])).json()["active"] == eager
        assert (await analyse(two, keys["analyst"]))["policy_version"] == eager
        assert (await analyse(two, keys["beta"]))["policy_version"] == load_policy().identity
    # and a gateway started later starts on the active version
    async with gateway(settings(tmp_path, folder), fake) as three:
        assert (await analyse(three, keys["analyst"]))["policy_version"] == eager


async def client_put(client, version: str, keys) -> Any:
    return await client.put("/v1/policy", json={"version": version}, headers=keys["admin"])


async def test_unknown_or_malformed_versions_are_4xx_and_change_nothing(tmp_path, folder, keys, label_names):
    shipped = load_policy().identity
    async with gateway(settings(tmp_path, folder), FakeTriton(label_names)) as client:
        unknown = await client_put(client, "v1-0123456789ab", keys)
        assert unknown.status_code == 404 and "GET /v1/policy" in error(unknown)["message"]
        malformed = await client_put(client, "eager", keys)
        assert malformed.status_code == 422 and "version" in error(malformed)["message"]
        (folder / "broken.toml").write_text("version = 1\n")
        listed = (await client.get("/v1/policy", headers=keys["admin"])).json()
        assert listed["active"] == shipped and "broken.toml" in listed["rejected"]
        assert (await analyse(client, keys["analyst"]))["policy_version"] == shipped
    assert not (folder / ACTIVE_FILE).exists()


async def test_the_policy_routes_need_the_policy_admin_scope(tmp_path, folder, keys, label_names):
    eager = load_policy(folder / "eager.toml").identity
    async with gateway(settings(tmp_path, folder), FakeTriton(label_names)) as client:
        listed = await client.get("/v1/policy", headers=keys["analyst"])
        switched = await client.put("/v1/policy", json={"version": eager}, headers=keys["analyst"])
        anonymous = await client.get("/v1/policy")
    assert listed.status_code == 403 and "policy:admin" in error(listed)["message"]
    assert switched.status_code == 403 and not (folder / ACTIVE_FILE).exists()
    assert anonymous.status_code == 401


async def test_without_a_folder_only_the_start_up_policy_is_listed(tmp_path, keys, label_names):
    shipped = load_policy().identity
    async with gateway(settings(tmp_path, None), FakeTriton(label_names)) as client:
        listed = (await client.get("/v1/policy", headers=keys["admin"])).json()
        assert listed == {
            "active": shipped,
            "default": shipped,
            "chosen_by_tenant": False,
            "switchable": False,
            "versions": [
                {
                    "version": shipped,
                    "source": str(DEFAULT_POLICY_PATH),
                    "risk": "hand_set",
                    "readiness": "hand_set",
                    "fitted": {},
                }
            ],
            "rejected": {},
        }
        assert (await client_put(client, shipped, keys)).status_code == 200


async def test_a_folder_that_cannot_be_written_is_a_503_and_switches_nothing(
    tmp_path, folder, keys, label_names, monkeypatch
):
    def read_only(src, dst):
        raise PermissionError(13, "Read-only file system")

    eager = load_policy(folder / "eager.toml").identity
    async with gateway(settings(tmp_path, folder), FakeTriton(label_names)) as client:
        monkeypatch.setattr(policies.os, "replace", read_only)
        r = await client_put(client, eager, keys)
        assert r.status_code == 503 and r.headers["Retry-After"] == "30", r.text
        assert "nothing was switched" in error(r)["message"]
        assert (await analyse(client, keys["analyst"]))["policy_version"] == load_policy().identity
        monkeypatch.undo()
        assert (await client_put(client, eager, keys)).status_code == 200
        monkeypatch.setattr(policies.Path, "unlink", lambda self, missing_ok=False: read_only(self, None))
        r = await client.delete("/v1/policy", headers=keys["admin"])
        assert r.status_code == 503 and r.headers["Retry-After"] == "30", r.text
        monkeypatch.undo()
        assert (await analyse(client, keys["analyst"]))["policy_version"] == eager  # still its own choice
