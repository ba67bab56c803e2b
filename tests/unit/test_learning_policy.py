"""The learning policy file: the default loads and matches its sources; broken files fail loudly."""

import re
from pathlib import Path

import pytest

from contract.manifest import MANIFEST_FILE, Manifest
from contract.names import OUTPUT_LABELS
from gateway.learning.policy import (
    DEFAULT_POLICY_PATH,
    GOEMOTIONS_LABELS,
    INTERVENTION_LEVELS,
    Policy,
    PolicyError,
    load_policy,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEXT = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")


def write_variant(tmp_path: Path, old: str, new: str) -> Path:
    """The default policy with one exact edit (asserted to apply, so a stale edit cannot pass silently)."""
    assert DEFAULT_TEXT.count(old) == 1, f"edit target not unique in policy.toml: {old!r}"
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_TEXT.replace(old, new), encoding="utf-8")
    return path


def test_default_policy_loads():
    policy = load_policy()
    assert isinstance(policy, Policy)
    assert load_policy(DEFAULT_POLICY_PATH) == policy
    assert tuple(policy.intervention.levels) == INTERVENTION_LEVELS
    assert set(policy.vad) == set(GOEMOTIONS_LABELS)
    for emotion in ("frustration", "anxiety", "confusion", "curiosity", "breakthrough", "mastery_joy"):
        assert emotion in policy.learning_emotions.map
    assert policy.readiness.states[-1].name == "ready_to_learn"
    assert {s.name for s in policy.readiness.states} == {
        "ready_to_learn",
        "engaged_struggle",
        "needs_support",
        "disengaged",
        "overwhelmed",
    }


def test_label_list_matches_the_dataset_and_the_model_repository():
    names = (REPO_ROOT / "data" / "goemotions" / "emotions.txt").read_text(encoding="utf-8").split()
    assert tuple(names) == GOEMOTIONS_LABELS
    installed = REPO_ROOT / "model_repository" / MANIFEST_FILE
    if installed.is_file():  # a model is installed here (not in a fresh clone)
        # the 28 labels first, then the learning signals when the model has them
        assert tuple(Manifest.read(installed).labels) in OUTPUT_LABELS


# NRC VAD Lexicon v1 (Mohammad 2018, ACL), 0..1 scale, copied from NRC-VAD-Lexicon.txt in
# github.com/KristinHuangg/gpt-writing-prompts @ ea0220dbc128dedb68abd71efa86085c9d6d6516 (identical rows in
# github.com/alexander-schott/LyricGenerator @ 08de2d24845e2a76f741cae2680af9fc0d8c714f).
@pytest.mark.parametrize(
    ("label", "valence", "arousal", "dominance"),
    [
        ("joy", 0.980, 0.824, 0.794),
        ("grief", 0.070, 0.640, 0.474),
        ("nervousness", 0.163, 0.915, 0.241),
        ("neutral", 0.469, 0.184, 0.357),
    ],
)
def test_vad_values_are_the_lexicon_numbers(label, valence, arousal, dominance):
    vad = load_policy().vad[label]
    assert (vad.valence, vad.arousal, vad.dominance) == (valence, arousal, dominance)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match="not found") as err:
        load_policy(path)
    assert str(path) in str(err.value)


def test_invalid_toml(tmp_path: Path):
    path = write_variant(tmp_path, "version = 1\n", "version = = 1\n")
    with pytest.raises(PolicyError, match="invalid TOML") as err:
        load_policy(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "nervousness    = { valence = 0.163, arousal = 0.915, dominance = 0.241 }\n",
            "",
            r"vad: .*missing GoEmotions label\(s\) \['nervousness'\]",
            id="missing-vad-label",
        ),
        pytest.param(
            "annoyance = 0.9 ",
            "tedium = 0.9 ",
            r"learning_emotions\.map: .*frustration: unknown GoEmotions label\(s\) or learning signal\(s\) "
            r"\['tedium'\]",
            id="unknown-label-in-mapping",
        ),
        pytest.param(
            "cut_points = [0.15, 0.3, 0.45, 0.6, 0.75]",
            "cut_points = [0.15, 0.45, 0.45, 0.6, 0.75]",
            r"intervention\.cut_points: .*strictly increasing",
            id="non-increasing-cut-points",
        ),
        pytest.param(
            '"mild", "moderate"',
            '"moderate", "mild"',
            r"intervention\.levels: .*exactly \['none', 'preventive', 'mild', 'moderate'",
            id="wrong-level-order",
        ),
        pytest.param(
            "max_history = 50 ",
            "max_history = 50\nmax_histroy = 60 ",
            r"trajectory\.max_histroy: Extra inputs are not permitted",
            id="extra-key",
        ),
        pytest.param(
            "annoyance = 0.9 ",
            "annoyance = 1.5 ",
            r"learning_emotions\.map\.frustration\.annoyance: .*less than or equal to 1",
            id="weight-out-of-range",
        ),
        pytest.param(
            "window = 8\n",
            'window = "8"\n',
            r"trajectory\.window: Input should be a valid integer",
            id="string-for-number",
        ),
        pytest.param(
            'signal = "engagement", op = "<"',
            'signal = "tedium", op = "<"',
            r"readiness\.states\[disengaged\]: unknown signal\(s\) \['tedium'\]",
            id="unknown-signal-in-rule",
        ),
        pytest.param(
            "declining = 0.1 ",
            "plummeting = 0.1 ",
            r"intervention\.trend_adjustment: .*unknown trend label\(s\) \['plummeting'\]",
            id="unknown-trend",
        ),
        pytest.param(
            'description = "Default: no sign of struggle, withdrawal or distress."',
            'description = "Default"\nany_of = [{ signal = "joy", op = ">=", value = 0.5 }]',
            r"readiness\.states: .*last state \('ready_to_learn'\) is the default",
            id="default-state-with-conditions",
        ),
        pytest.param(
            'any_of = [{ signal = "giving_up", op = "detected" }]',
            'any_of = [{ signal = "giving_up", op = "detected", value = 0.5 }]',
            r"giving_up detected: takes no value",
            id="detected-with-a-value",
        ),
        pytest.param(
            '{ signal = "stuck", op = "detected" }',
            '{ signal = "frustration", op = "detected" }',
            r"frustration detected: only a model output label can be detected",
            id="detected-learning-emotion",
        ),
        pytest.param(
            '{ signal = "anxiety", op = ">=", value = 0.85 }',
            '{ signal = "anxiety", op = ">=" }',
            r"anxiety >=: needs a value",
            id="comparison-without-a-value",
        ),
        pytest.param(
            "min_points = 3\n",
            "min_points = 9\n",
            r"min_points \(9\) > window \(8\)",
            id="min-points-above-window",
        ),
    ],
)
def test_broken_policy_names_the_problem(tmp_path: Path, old: str, new: str, expected: str):
    path = write_variant(tmp_path, old, new)
    with pytest.raises(PolicyError, match=expected) as err:
        load_policy(path)
    assert str(err.value).startswith(f"{path}: invalid policy: ")


def test_missing_section(tmp_path: Path):
    start = DEFAULT_TEXT.index("[trajectory]")
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_TEXT[:start], encoding="utf-8")
    with pytest.raises(PolicyError, match=r"trajectory: Field required"):
        load_policy(path)


def test_policy_is_immutable():
    policy = load_policy()
    with pytest.raises(ValueError, match="frozen"):
        policy.readiness.base = 0.9


def test_a_state_may_have_several_rules_but_the_default_only_one(tmp_path: Path):
    policy = load_policy()
    names = [s.name for s in policy.readiness.states]
    assert names.count("disengaged") == 2  # low arousal + withdrawal, or boredom
    path = write_variant(
        tmp_path, 'name = "disengaged"\ndescription = "Bored', 'name = "ready_to_learn"\ndescription = "Bored'
    )
    with pytest.raises(PolicyError, match="the default state 'ready_to_learn' may not have other rules"):
        load_policy(path)


def test_the_policy_identity_names_its_values(tmp_path: Path):
    policy = load_policy()
    assert re.fullmatch(r"v1-[0-9a-f]{12}", policy.identity)
    assert load_policy().identity == policy.identity  # the same file, the same identity
    changed = load_policy(write_variant(tmp_path, "frustration = 0.35", "frustration = 0.36"))
    assert changed.identity != policy.identity  # any value changes it
