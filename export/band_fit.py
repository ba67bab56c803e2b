"""Cut points fitted to the learner set's intervention bands (``python -m export fit-bands``).

Each learner message carries the band a tutor would want (``none``, ``low``: a hint or check-in, ``high``:
a person should step in soon), which is a tutor's rating of the intervention, the kind of outcome
``POST /v1/outcomes`` collects. The hand-set cut points read many ``low`` messages as ``moderate`` or above
(results/learner_gap.md). The bands decide two of the policy's five cut points: ``none|preventive`` and
``mild|moderate`` (preventive and mild are both ``low``; moderate, significant and critical all ``high``).
Those two are fitted for one model's probabilities on the learner **dev** split, keeping the share of
``high`` messages read as moderate or above at least the base policy's and those read as ``none`` at most
the base's; the fit is reported on the learner **test** split beside the base policy. The other cut
points, weights and floors stay the base policy's. The set is synthetic, written and annotated by AI
assistants (data/learner/README.md): the fitted version is offered, not made the default.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import output_labels
from export.arrays import Array
from export.learner_gap import BAND_OF_LEVEL, Served, band_scores, detections, giving_up_reach
from export.training.learner_data import BANDS, LearnerMessage, load_learner_messages

log = logging.getLogger(__name__)

BAND_FILE = "band_policy.toml"
GRID = np.round(np.arange(0.01, 0.96, 0.01), 2)  # candidate cut points


def band_inputs(probs: Array, policy: Any, thresholds: Array | None = None) -> tuple[Array, Array]:
    """Per message: the policy's risk score and the level index its floors alone set (0 when none); the
    labels at the model's ``thresholds`` are what it detected."""
    from gateway.learning.state import assess

    levels = policy.intervention.levels
    # cut points above any risk: the level is then what the floors set
    top = [0.9995 + 0.0001 * i for i in range(len(policy.intervention.cut_points))]
    floors_only = policy.model_copy(
        update={"intervention": policy.intervention.model_copy(update={"cut_points": top})}
    )
    risk, floor = [], []
    for row, found in zip(probs, detections(probs, thresholds), strict=True):
        scores = dict(zip(output_labels(len(row)), map(float, row), strict=True))
        risk.append(assess(scores, policy, detected=found).risk_score)
        floor.append(levels.index(assess(scores, floors_only, detected=found).intervention_level))
    return np.asarray(risk), np.asarray(floor)


def level_indices(risk: Array, floor: Array, cuts: list[float]) -> Array:
    """The policy's level (index) for each risk score and floor: the cut points' level, raised by a floor."""
    return np.maximum(np.searchsorted(np.asarray(cuts), risk, side="right"), floor)


def with_cuts(base: list[float], none_cut: float, moderate_cut: float) -> list[float]:
    """The base cut points with ``none|preventive`` and ``mild|moderate`` replaced; the others kept where
    they still fall in order, else spread evenly in their new interval."""
    c4, c5 = base[3], base[4]
    c2 = base[1] if none_cut < base[1] < moderate_cut else round((none_cut + moderate_cut) / 2, 4)
    if not moderate_cut < c4 < c5 < 1:
        c4, c5 = (round(moderate_cut + (1 - moderate_cut) * k / 3, 4) for k in (1, 2))
    return [none_cut, c2, moderate_cut, c4, c5]


def fit_cuts(risk: Array, floor: Array, gold: list[str], names: list[str], base: list[float]) -> list[float]:
    """The two band cut points that agree best with ``gold`` without reading fewer ``high`` messages as
    high, or more of them as ``none``, than ``base`` does; ties go to the pair closest to the base."""
    band_of = np.array([BANDS.index(BAND_OF_LEVEL[n]) for n in names])
    truth = np.array([BANDS.index(g) for g in gold], dtype=int)
    is_high = truth == BANDS.index("high")

    none = BANDS.index("none")

    def scores(cuts: list[float]) -> tuple[float, float, int]:
        predicted = band_of[level_indices(risk, floor, cuts)]
        high = float((predicted[is_high] == truth[is_high]).mean()) if is_high.any() else 1.0
        return float((predicted == truth).mean()), high, int((predicted[is_high] == none).sum())

    _, base_high, base_ignored = scores(base)
    best: tuple[float, float, list[float]] | None = None
    for c1 in GRID:
        for c3 in GRID[c1 < GRID]:
            cuts = with_cuts(base, float(c1), float(c3))
            agreement, high, ignored = scores(cuts)
            if high < base_high or ignored > base_ignored:
                continue
            key = (agreement, -(abs(c1 - base[0]) + abs(c3 - base[2])))
            if best is None or key > best[:2]:
                best = (key[0], key[1], cuts)
    return base if best is None else best[2]


def evaluate(
    risk: Array, floor: Array, messages: list[LearnerMessage], names: list[str], cuts: list[float]
) -> dict[str, Any]:
    """Band scores of ``cuts`` on one split's ``band_inputs``, and its giving-up messages at moderate+."""
    levels = level_indices(risk, floor, cuts)
    report = band_scores(levels, [m.band for m in messages], names)
    report["giving_up_at_least_moderate"], report["giving_up_messages"] = giving_up_reach(
        levels, messages, names
    )
    report["messages"] = len(messages)
    return report


def fit_bands(repository: Path, policy_path: Path | None = None) -> dict[str, Any]:
    """Fit on the learner dev split, report dev and test for the base and the fitted cut points."""
    from gateway.learning.policy import load_policy

    policy = load_policy(policy_path)
    served = Served.load(repository)
    messages = load_learner_messages()
    split = {name: [m for m in messages if m.split == name] for name in ("dev", "test")}
    inputs = {
        name: band_inputs(served.probabilities([m.text for m in chosen]), policy, served.thresholds)
        for name, chosen in split.items()
    }
    names = list(policy.intervention.levels)
    base = list(policy.intervention.cut_points)
    cuts = fit_cuts(*inputs["dev"], [m.band for m in split["dev"]], names, base)
    result: dict[str, Any] = {
        "model": served.manifest.served_version(served.variant),
        "base_policy": policy.identity,
        "base_cut_points": base,
        "cut_points": cuts,
    }
    for name, chosen in split.items():
        result[name] = {
            "base": evaluate(*inputs[name], chosen, names, base),
            "fitted": evaluate(*inputs[name], chosen, names, cuts),
        }
    dev = result["dev"]
    result["better_on_dev"] = dev["fitted"]["agreement"] > dev["base"]["agreement"]
    return result


def write(result: dict[str, Any], out: Path, policy_path: Path | None = None) -> list[Path]:
    """The report always; the policy version only when it agrees better on dev (the fit's own split)."""
    from export.policy_fit import write_policy
    from gateway.learning.policy import DEFAULT_POLICY_PATH

    data = None
    if result["better_on_dev"]:
        data = tomllib.loads((policy_path or DEFAULT_POLICY_PATH).read_text())
        data["intervention"]["cut_points"] = result["cut_points"]
    header = (
        "# Written by `python -m export fit-bands` (see band_fit.md): the base policy "
        f"{result['base_policy']} with the\n# none|preventive and mild|moderate cut points fitted to the "
        f"learner dev split's bands for model\n# {result['model']}. Deploy: copy it into "
        "GATEWAY_POLICY_DIR, then PUT /v1/policy with its version.\n"
    )
    result.pop("policy_version", None)
    version = write_policy(out / BAND_FILE, header, data)
    if version is not None:
        result["policy_version"] = version
    report = out / "band_fit.json"
    report.write_text(json.dumps(result, indent=2) + "\n")
    return [report] if version is None else [report, out / BAND_FILE]


def markdown(result: dict[str, Any], command: str) -> str:
    def row(split: str, which: str) -> str:
        r = result[split][which]
        return (
            f"| {split} ({r['messages']}) | {which} | **{r['agreement']:.3f}** | {r['high_recall']:.3f} | "
            f"{r['high_read_as_none']} | {r['giving_up_at_least_moderate']} of {r['giving_up_messages']} |"
        )

    written = result.get("policy_version")
    lines = [
        "# Intervention cut points fitted to the learner bands",
        "",
        f"Model `{result['model']}`, base policy `{result['base_policy']}`. Command: `{command}`.",
        "",
        "The learner set's bands (none / low / high, what a tutor would want) read as a tutor's rating of "
        "each message. Fitted on the learner **dev** split: the `none|preventive` and `mild|moderate` cut "
        "points, keeping the share of `high` messages read as moderate or above at least the base "
        "policy's and those read as `none` at most the base's; weights, floors and the other cut points "
        "are the base policy's. The **test** split is held out. The set is synthetic (AI-written and "
        "AI-annotated, data/learner/README.md).",
        "",
        f"- cut points: base {result['base_cut_points']} -> fitted **{result['cut_points']}**",
        f"- policy version written: `{written}` ({BAND_FILE})"
        if written
        else "- no policy written: the fit does not agree better than the base on dev",
        "",
        "| split | cut points | band agreement | `high` read as high | `high` read as none | giving-up "
        "messages at moderate+ |",
        "|---|---|---:|---:|---:|---:|",
        *(row(split, which) for split in ("dev", "test") for which in ("base", "fitted")),
        "",
        "Band confusion on test (gold -> policy):",
        "",
        "| cut points | " + " | ".join(f"{g}->{p}" for g in BANDS for p in BANDS) + " |",
        "|---|" + "---:|" * len(BANDS) ** 2,
    ]
    for which in ("base", "fitted"):
        confusion = result["test"][which]["confusion"]
        lines.append(
            f"| {which} | " + " | ".join(str(confusion[f"{g}->{p}"]) for g in BANDS for p in BANDS) + " |"
        )
    return "\n".join(lines) + "\n"
