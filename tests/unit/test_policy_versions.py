"""Policies by version (gateway.core.policies.PolicyBook) and fitted scores in a policy: the folder's valid
files are the versions, its ``active`` file the one in use, re-read while serving (a bad file or pointer is
refused and counted, the active policy stays), a switch written atomically reaches another reader of the
folder; a logistic risk or readiness model replaces the hand-set sum and is validated like the rest."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from gateway.core.policies import ACTIVE_FILE, PolicyBook, UnknownPolicy
from gateway.learning.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from gateway.learning.state import assess, risk_inputs

HAND_SET_CUTS = "cut_points = [0.15, 0.3, 0.45, 0.6, 0.75]"
EAGER_CUTS = "cut_points = [0.01, 0.02, 0.03, 0.04, 0.05]"


def variant(directory: Path, name: str, *replacements: tuple[str, str]) -> Path:
    """The shipped policy with ``replacements`` applied, written to ``directory/name``."""
    text = DEFAULT_POLICY_PATH.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = directory / name
    path.write_text(text)
    return path


def book(directory: Path | None = None, **kwargs) -> PolicyBook:
    return PolicyBook(load_policy(), "built-in", directory, **kwargs)


def test_without_a_folder_only_the_start_up_policy_exists():
    b = book()
    assert not b.switchable and [e.version for e in b.versions()] == [load_policy().identity]
    assert b.activate(load_policy().identity).policy is b.current  # switching to itself is fine
    with pytest.raises(UnknownPolicy):
        b.activate("v1-000000000000")


def test_the_folder_adds_versions_and_its_active_file_picks_one(tmp_path):
    eager = load_policy(variant(tmp_path, "eager.toml", (HAND_SET_CUTS, EAGER_CUTS)))
    variant(tmp_path, "same-as-shipped.toml")  # same values, same version: listed once
    switched = []
    assert book(tmp_path, on_switch=switched.append).current.identity == load_policy().identity
    (tmp_path / ACTIVE_FILE).write_text(eager.identity + "\n")
    b = book(tmp_path, on_switch=switched.append)
    assert b.current.identity == eager.identity and switched[-1] == eager.identity
    assert sorted(e.version for e in b.versions()) == sorted({eager.identity, load_policy().identity})


def test_a_bad_folder_stops_the_start_up(tmp_path):
    bad = variant(tmp_path, "bad.toml", (HAND_SET_CUTS, "cut_points = [0.3, 0.2, 0.45, 0.6, 0.75]"))
    with pytest.raises(PolicyError, match=r"bad.toml.*strictly increasing"):
        book(tmp_path)
    bad.unlink()
    (tmp_path / ACTIVE_FILE).write_text("v1-0123456789ab")
    with pytest.raises(PolicyError, match="names 'v1-0123456789ab'"):
        book(tmp_path)
    with pytest.raises(PolicyError, match="not found"):
        book(tmp_path / "missing")


def test_while_serving_a_bad_file_or_pointer_is_refused_and_the_policy_stays(tmp_path):
    errors = []
    b = book(tmp_path, on_error=lambda: errors.append(1))
    shipped = b.current.identity
    variant(tmp_path, "bad.toml", ("primary_min_score = 0.2", "primary_min_score = 2.0"))
    assert b.refresh() is False
    assert "bad.toml" in b.rejected() and "primary_min_score" in b.rejected()["bad.toml"]
    assert b.current.identity == shipped and len(errors) == 1
    assert b.refresh() is False and len(errors) == 1  # nothing changed: not read (nor counted) again
    (tmp_path / ACTIVE_FILE).write_text("v1-0123456789ab\n")
    assert b.refresh() is False and b.current.identity == shipped and len(errors) == 2


def test_another_replica_follows_a_switch_through_the_folder(tmp_path):
    eager = load_policy(variant(tmp_path, "eager.toml", (HAND_SET_CUTS, EAGER_CUTS)))
    here, there = book(tmp_path), book(tmp_path)
    here.activate(eager.identity)
    assert here.current.identity == eager.identity
    assert (tmp_path / ACTIVE_FILE).read_text() == eager.identity + "\n"
    assert not list(tmp_path.glob(".active*"))  # the temporary file was renamed into place
    assert there.current.identity == load_policy().identity
    assert there.refresh() is True and there.current.identity == eager.identity
    # and a policy file added later becomes a version without a restart
    later = load_policy(
        variant(tmp_path, "later.toml", ("primary_min_score = 0.2", "primary_min_score = 0.3"))
    )
    there.refresh()
    assert later.identity in {e.version for e in there.versions()}


def test_a_policy_that_resizes_the_learner_store_needs_a_restart(tmp_path):
    b = book(tmp_path, on_error=lambda: None)
    variant(tmp_path, "ttl.toml", ("ttl_seconds = 86400", "ttl_seconds = 3600"))
    b.refresh()
    assert len(b.versions()) == 1 and "needs a restart" in b.rejected()["ttl.toml"]
    with pytest.raises(PolicyError, match="needs a restart"):
        book(tmp_path)


async def test_the_watch_re_reads_the_folder_on_its_interval(tmp_path):
    eager = load_policy(variant(tmp_path, "eager.toml", (HAND_SET_CUTS, EAGER_CUTS)))
    b = book(tmp_path)
    ticks = 0
    second_tick = asyncio.Event()

    async def sleep(_: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 2:  # the first interval's check has run
            second_tick.set()
            await asyncio.Event().wait()

    (tmp_path / ACTIVE_FILE).write_text(eager.identity)
    watcher = asyncio.create_task(b.watch(5.0, sleep))
    await asyncio.wait_for(second_tick.wait(), 5)
    watcher.cancel()
    assert b.current.identity == eager.identity


# ---- fitted scores in a policy ----------------------------------------------------------------------

RISK_MODEL = """
[intervention.risk_model]
form = "logistic"
intercept = -2.0
weights = { giving_up = 3.0, context_strain = 1.5, low_readiness = 0.5 }
fitted = { pairs = 1000, held_out_auc = 0.7 }
"""
READINESS_MODEL = """
[readiness.model]
form = "logistic"
intercept = 0.5
weights = { anxiety = -2.0, curiosity = 1.0, valence = 1.0 }
"""


def with_models(tmp_path: Path, *sections: str) -> Path:
    path = tmp_path / "fitted.toml"
    path.write_text(DEFAULT_POLICY_PATH.read_text() + "\n".join(sections))
    return path


def probabilities(**some: float) -> dict[str, float]:
    policy = load_policy()
    probs = dict.fromkeys(policy.vad, 0.01)
    probs.update({"giving_up": 0.0, "boredom": 0.0, "stuck": 0.0})
    probs.update(some)
    return probs


def test_a_fitted_risk_model_replaces_the_hand_set_sum(tmp_path):
    policy = load_policy(with_models(tmp_path, RISK_MODEL))
    probs = probabilities(giving_up=0.9, sadness=0.6)
    state = assess(probs, policy)
    inputs = risk_inputs(state.learning_emotions, state.valence, state.readiness_score, None, 0.5)
    logit = -2.0 + 3.0 * inputs["giving_up"] + 0.5 * inputs["low_readiness"]
    assert state.risk_score == pytest.approx(1 / (1 + math.exp(-logit)))
    assert state.risk_score != pytest.approx(assess(probs, load_policy()).risk_score)
    assert any(r.startswith("intervention") and "from the fitted model" in r for r in state.reasons)
    assert policy.identity != load_policy().identity


def test_a_fitted_readiness_model_replaces_the_hand_set_score(tmp_path):
    policy = load_policy(with_models(tmp_path, READINESS_MODEL))
    probs = probabilities(nervousness=0.8)
    state = assess(probs, policy)
    anxiety = state.learning_emotions["anxiety"]
    logit = 0.5 - 2.0 * anxiety + 1.0 * state.learning_emotions["curiosity"] + (state.valence - 0.5)
    assert state.readiness_score == pytest.approx(1 / (1 + math.exp(-logit)))
    assert any("fitted model" in r for r in state.reasons)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (RISK_MODEL.replace("giving_up = 3.0", "valence = 3.0"), "risk_model.weights: unknown signal"),
        (READINESS_MODEL.replace("anxiety = -2.0", "low_readiness = -2.0"), "readiness.model.weights"),
        (RISK_MODEL.replace('"logistic"', '"tree"'), "form"),
        (RISK_MODEL.replace("-2.0", "-99.0"), "intercept"),
    ],
)
def test_a_fitted_model_is_validated_like_the_rest(tmp_path, section, message):
    with pytest.raises(PolicyError, match=message):
        load_policy(with_models(tmp_path, section))


def test_the_shipped_policy_keeps_its_version():
    # A version names a set of values: it changes when policy.toml's numbers do (then update the README's
    # example and docs), never because the schema grew an optional section.
    assert load_policy().identity == "v1-491fb4772114"


def test_a_fitted_model_at_its_bounds_stays_a_probability(tmp_path):
    extreme = """
[intervention.risk_model]
form = "logistic"
intercept = -50.0
weights = { frustration = -50.0, anxiety = -50.0, discouragement = -50.0, negative_valence = -50.0, low_readiness = -50.0, context_strain = -50.0, giving_up = -50.0, stuck = -50.0, boredom = -50.0, confusion = -50.0, curiosity = -50.0, engagement = -50.0, mastery_joy = -50.0, breakthrough = -50.0 }
"""
    policy = load_policy(with_models(tmp_path, extreme))
    low = assess(probabilities(annoyance=1.0, sadness=1.0, nervousness=1.0, giving_up=1.0, stuck=1.0), policy)
    assert 0.0 <= low.risk_score < 1e-100  # floors may still raise the level (anxiety 1.0 here)
    risk_model = policy.intervention.risk_model
    assert risk_model is not None
    assert risk_model.probability({name: 20.0 for name in risk_model.weights}) == 0.0  # exp(1050) overflows
    flipped = load_policy(with_models(tmp_path, extreme.replace("-50.0", "50.0")))
    high = assess(
        probabilities(annoyance=1.0, sadness=1.0, nervousness=1.0, giving_up=1.0, stuck=1.0), flipped
    )
    assert high.risk_score == 1.0 and high.intervention_level == "critical"


def test_a_tenants_own_choice_applies_to_it_alone_and_replicas_follow_it(tmp_path):
    eager = load_policy(variant(tmp_path, "eager.toml", (HAND_SET_CUTS, EAGER_CUTS)))
    shipped = load_policy().identity
    errors = []
    here, there = book(tmp_path), book(tmp_path, on_error=lambda: errors.append(1))
    here.activate(eager.identity, "acme")
    assert here.current_for("acme").identity == eager.identity and here.chosen_by("acme")
    assert here.current_for("beta").identity == here.current.identity == shipped
    assert there.refresh() is False  # the deployment's version did not change ...
    assert there.current_for("acme").identity == eager.identity  # ... but acme's choice is followed
    # a tenant file naming an unknown version: refused and counted, the tenant keeps its choice
    (tmp_path / "tenants" / "acme").write_text("v1-0123456789ab")
    there.refresh()
    assert there.current_for("acme").identity == eager.identity and errors == [1]
    with pytest.raises(PolicyError, match="tenants/acme"):
        book(tmp_path)  # at start-up the same is fatal
    here.forget("acme")
    assert not (tmp_path / "tenants" / "acme").exists() and not here.chosen_by("acme")
    there.refresh()
    assert there.current_for("acme").identity == shipped
    with pytest.raises(ValueError, match="not a tenant name"):
        here.activate(eager.identity, "../escape")
