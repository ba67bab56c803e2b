"""Model -> ONNX variants -> gates -> thresholds -> manifest: the export, orchestrated.

Training code (export.training: data, metrics, calibration, gates) and packaging code
(export.packaging: ONNX variants, runtime, TensorRT, Triton configs, install) never import each other;
this module and the CLI (export.__main__) join them.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import (
    MANIFEST_FILE,
    FileEntry,
    Manifest,
    VariantEntry,
    file_sha256,
)
from contract.names import DEFAULT_MAX_LENGTH, LEARNING_SIGNALS
from contract.spec import SPEC_FILE, ServingSpec, TensorRTProfile
from export.packaging.install import MODEL_REPOSITORY, TOKENIZER_FILES, install
from export.packaging.runtime import load_tokenizer, onnx_classifier, torch_classifier
from export.packaging.torch_variant import TORCH_FP16, build_torch_fp16, torch_runtime_classifier
from export.packaging.variants import (
    CALIBRATION_TEXTS,
    DEFAULT_STATIC_INT8,
    FP32,
    ONNX_VARIANTS,
    RAW,
    Calibration,
    StaticInt8Settings,
    build_variants,
    calibration_sample,
    export_onnx,
)
from export.training.calibration import (
    CALIBRATION_METHODS,
    PER_LABEL,
    calibrated_probabilities,
    fit_mapping,
    reliability,
    reliability_diagram,
)
from export.training.data import DATA_DIR, load_dataset
from export.training.gates import (
    DEFAULT_MAX_CALIBRATION_F1_DROP,
    DEFAULT_MAX_MACRO_F1_DROP,
    DEFAULT_MAX_SIGNAL_F1_DROP,
    GateFailed,
    GateReport,
    accuracy_gate,
    calibration_gate,
    parity_gate,
)
from export.training.learner_data import learner_targets, load_learner_messages
from export.training.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_f1,
    bootstrap_per_label,
    recall_first_thresholds,
)

log = logging.getLogger(__name__)

# Callers that orchestrate a whole run (CLI, e2e fixtures, load tests) find install here too.
__all__ = [
    "MODEL_REPOSITORY",
    "SIGNAL_MIN_PRECISION",
    "SIGNAL_PRECISION_CONFIDENCE",
    "ExportOptions",
    "export_model",
    "install",
    "model_slug",
    "parity_sample",
]

REPORTS_DIR = "reports"
RELIABILITY_PNG = "reliability.png"
PARITY_SAMPLE = 256
PARITY_SEED = 2020


# A learner about to quit is the one message a platform must not miss, and a false alarm costs a
# check-in: giving_up is cut for the most dev recall whose precision stays at least 0.7 (issue 15's
# operating point) rather than for the best F1, which gave up recall for precision.
SIGNAL_MIN_PRECISION = {"giving_up": 0.7}
# None: the floor holds at dev's point estimate; a confidence: at its one-sided Wilson lower bound.
SIGNAL_PRECISION_CONFIDENCE: float | None = 0.95


@dataclass(frozen=True)
class ExportOptions:
    variants: tuple[str, ...] = (*ONNX_VARIANTS, TORCH_FP16)
    max_length: int = DEFAULT_MAX_LENGTH
    opset: int | None = None
    int8_config: str = "auto"
    int8_per_channel: bool = True
    parity_tolerance: dict[str, float] = field(default_factory=dict)
    max_macro_f1_drop: float = DEFAULT_MAX_MACRO_F1_DROP
    # the signal gate allows the larger of this and max_macro_f1_drop (learner dev is small)
    max_signal_f1_drop: float = DEFAULT_MAX_SIGNAL_F1_DROP
    min_macro_f1: float = 0.0
    eval_limit: int | None = None  # tests: evaluate on the first N texts of dev/test
    batch_size: int = 32
    calibration: str = PER_LABEL  # temperature scaling: per-label, global or none
    max_calibration_f1_drop: float = DEFAULT_MAX_CALIBRATION_F1_DROP
    calibration_texts: int = CALIBRATION_TEXTS  # static INT8 ranges: a seeded sample of train
    int8_static: StaticInt8Settings = DEFAULT_STATIC_INT8  # what static INT8 quantizes, how ranges are set
    # learning signals cut for recall at a precision floor on learner dev (the others: best dev F1)
    signal_min_precision: dict[str, float] = field(default_factory=lambda: dict(SIGNAL_MIN_PRECISION))
    # ... at that one-sided confidence of dev's precision (None: its point estimate)
    signal_precision_confidence: float | None = SIGNAL_PRECISION_CONFIDENCE

    def __post_init__(self) -> None:
        # before minutes of ONNX export, not after
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calibration!r}"
            )
        for signal, floor in self.signal_min_precision.items():
            if signal not in LEARNING_SIGNALS or not 0.0 < floor <= 1.0:
                raise ValueError(
                    f"signal_min_precision: expected a learning signal ({', '.join(LEARNING_SIGNALS)}) "
                    f"and a precision in (0, 1], got {signal}={floor}"
                )
        confidence = self.signal_precision_confidence
        if confidence is not None and not 0.5 < confidence < 1.0:
            raise ValueError(f"signal_precision_confidence must be in (0.5, 1), got {confidence}")


# Learner train messages added to the static INT8 calibration sample of a model with learning signals.
LEARNER_CALIBRATION_TEXTS = 128


def int8_calibration_texts(train_texts: list[str], n: int, learner: bool) -> list[str]:
    """The static INT8 calibration sample: ``n`` GoEmotions train texts, plus learner *train* messages
    for a model with learning signals (the domain it serves: their activation ranges too)."""
    texts = calibration_sample(train_texts, n)
    if learner:
        learner_train, _ = learner_targets("train", load_learner_messages())
        texts += calibration_sample(learner_train, LEARNER_CALIBRATION_TEXTS)
    return texts


def model_slug(model_ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", model_ref.strip("/")).strip("-") or "model"


def parity_sample(texts: list[str], n: int = PARITY_SAMPLE, seed: int = PARITY_SEED) -> list[str]:
    """A fixed, seeded sample of dev: the same texts on every run and every variant."""
    rng = random.Random(seed)
    return rng.sample(texts, min(n, len(texts)))


def export_model(
    model_ref: str, out_dir: Path, options: ExportOptions, data_dir: Path = DATA_DIR
) -> Manifest:
    """Export ``model_ref`` (hub id or local dir) into ``out_dir``; raise GateFailed when a gate fails.

    Every decision (temperatures, thresholds, gates) uses dev; test is only reported, once, with
    bootstrap intervals. Each variant is evaluated as it is served (its own execution mode) and gets
    its own temperatures and thresholds, fitted on its own dev logits. A model with the learning signals
    (contract.names.LEARNING_SIGNALS after the 28 labels) gets theirs from the learner set's dev split,
    and its test split is reported per signal.
    """
    started = time.monotonic()
    label_names, splits = load_dataset(data_dir)
    model_labels = _check_label_order(model_ref, label_names)
    go = slice(0, len(label_names))  # the GoEmotions columns; the learning signals (if any) follow
    signals = model_labels[len(label_names) :]
    _check_training_max_length(model_ref, options.max_length)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (
        out_dir / "labels.json",
        out_dir / SPEC_FILE,
        out_dir / MANIFEST_FILE,
        out_dir / REPORTS_DIR / "summary.json",
        out_dir / REPORTS_DIR / "calibration.json",
        out_dir / REPORTS_DIR / "test.json",
        out_dir / REPORTS_DIR / RELIABILITY_PNG,
    ):
        stale.unlink(missing_ok=True)
    onnx_export = export_onnx(model_ref, out_dir, options.opset)
    tokenizer = load_tokenizer(out_dir)
    calibration_texts = int8_calibration_texts(
        splits["train"].texts, options.calibration_texts, bool(signals)
    )
    built = build_variants(
        onnx_export,
        tuple(v for v in options.variants if v != TORCH_FP16),
        options.int8_config,
        options.int8_per_channel,
        Calibration(
            tokenizer=tokenizer,
            texts=calibration_texts,
            max_length=options.max_length,
            settings=options.int8_static,
        ),
    )
    torch_variant = build_torch_fp16(model_ref, out_dir) if TORCH_FP16 in options.variants else None

    dev, test = splits["dev"], splits["test"]
    n = options.eval_limit
    dev_texts, dev_labels = dev.texts[:n], dev.labels[:n]
    test_texts, test_labels = test.texts[:n], test.labels[:n]

    reference = torch_classifier(model_ref, tokenizer, onnx_export.input_names, options.max_length)
    classifiers = {
        name: onnx_classifier(b.path, tokenizer, options.max_length, execution=b.execution)
        for name, b in built.items()
    }
    if torch_variant is not None:  # evaluated as the embedded server runs it on a CPU (FP32 arithmetic)
        built[TORCH_FP16] = torch_variant
        classifiers[TORCH_FP16] = torch_runtime_classifier(
            torch_variant.path, tokenizer, onnx_export.input_names, options.max_length
        )

    log.info("parity gate: %d fixed dev texts, torch vs %s", PARITY_SAMPLE, ", ".join(classifiers))
    sample = parity_sample(dev.texts)
    # Fixed batches of 16 in sample order, identical on every path (per-row variants run row by row).
    ref_logits = reference.predict(sample, batch_size=16)
    parity = parity_gate(
        ref_logits,
        {k: c.predict(sample, batch_size=16) for k, c in classifiers.items()},
        options.parity_tolerance,
    )

    reference_variant = FP32 if FP32 in classifiers else RAW
    log.info(
        "per variant: %s temperatures, then per-label thresholds, fitted on its own dev logits (%d texts)",
        options.calibration,
        len(dev_texts),
    )
    dev_logits = {"torch": reference.predict(dev_texts, options.batch_size)}
    for name, clf in classifiers.items():
        dev_logits[name] = clf.predict(dev_texts, options.batch_size)
    fits = {
        name: fit_mapping(logits[:, go], dev_labels, options.calibration)
        for name, logits in dev_logits.items()
    }

    log.info("accuracy gate on dev: every variant at its own thresholds vs %s", reference_variant)
    dev_probs = {k: calibrated_probabilities(v[:, go], fits[k].temperatures) for k, v in dev_logits.items()}
    accuracy = accuracy_gate(
        dev_labels,
        dev_probs,
        {k: f.thresholds for k, f in fits.items()},
        reference=reference_variant,
        max_macro_f1_drop=options.max_macro_f1_drop,
        min_macro_f1=options.min_macro_f1,
    )
    log.info("calibration gate on dev (2-fold cross-fitted): ECE and macro-F1 before/after, every variant")
    calibration = calibration_gate(
        {k: v[:, go] for k, v in dev_logits.items() if k != "torch"},
        dev_labels,
        options.calibration,
        label_names,
        max_macro_f1_drop=options.max_calibration_f1_drop,
    )

    log.info("test report (%d texts): reported only, never a decision", len(test_texts))
    test_logits = {"torch": reference.predict(test_texts, options.batch_size)}
    for name, clf in classifiers.items():
        test_logits[name] = clf.predict(test_texts, options.batch_size)
    test_probs = {k: calibrated_probabilities(v[:, go], fits[k].temperatures) for k, v in test_logits.items()}
    test_report: dict[str, Any] = {
        name: {
            "at_tuned": bootstrap_f1(probs, test_labels, fits[name].thresholds, BOOTSTRAP_RESAMPLES),
            "ece": round(reliability(probs, test_labels).ece, 6),
        }
        for name, probs in test_probs.items()
    }
    test_report["_about"] = {
        "split": "test",
        "texts": len(test_texts),
        "interval": f"bootstrap 95% over texts, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
        "thresholds_and_temperatures": "fitted on dev per variant",
    }

    signal_report = (
        _learning_signals(
            reference, classifiers, signals, options, reference_variant, len(label_names), test_report
        )
        if signals
        else None
    )

    reports = out_dir / REPORTS_DIR
    parity.write(reports)
    accuracy.write(reports)
    calibration.write(reports)
    gates = [parity, accuracy, calibration]
    if signal_report is not None:
        signal_report.gate.write(reports)
        gates.append(signal_report.gate)
    (reports / "test.json").write_text(json.dumps(test_report, indent=2) + "\n")
    reliability_diagram(
        reliability(calibrated_probabilities(test_logits[reference_variant][:, go]), test_labels),
        reliability(test_probs[reference_variant], test_labels),
        reports / RELIABILITY_PNG,
        title=f"{Path(model_ref).name} ({reference_variant}): test split, {len(test_texts)} texts x "
        f"{len(label_names)} labels, {options.calibration} temperatures fitted on dev",
    )
    summary = {
        "model": model_ref,
        "seconds": round(time.monotonic() - started, 1),
        "decisions_on": "dev",
        "parity": parity.results,
        "accuracy_dev": accuracy.results,
        "calibration_dev": {k: v for k, v in calibration.results.items() if k != "per_variant"}
        | {
            "per_variant": {k: _calibration_summary(v) for k, v in calibration.results["per_variant"].items()}
        },
        "test": test_report,
        "passed": all(g.passed for g in gates),
    }
    if signal_report is not None:
        summary["learning_signals_dev"] = signal_report.gate.results
        summary["signal_min_precision"] = dict(options.signal_min_precision)
        summary["signal_precision_confidence"] = options.signal_precision_confidence
    failures = [f for g in gates for f in g.failures]
    if failures:  # no manifest or spec: nothing downstream can pick up a failed export
        (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        raise GateFailed("; ".join(failures) + f" (reports in {reports})")

    manifest = Manifest(
        name=Path(model_ref).name if Path(model_ref).is_dir() else model_slug(model_ref),
        source=model_ref,
        labels=model_labels,
        input_names=onnx_export.input_names,
        max_length=options.max_length,
        tokenizer={
            name: FileEntry.of(out_dir / name) for name in TOKENIZER_FILES if (out_dir / name).is_file()
        },
        onnx=FileEntry.of(built[RAW].path),
        variants={
            name: VariantEntry(
                file=b.path.name,
                sha256=file_sha256(b.path),
                size_bytes=b.path.stat().st_size,
                precision=b.precision,
                execution=b.execution,
                thresholds=[round(float(t), 4) for t in _joined(fits, signal_report, name, "thresholds")],
                temperatures=[round(float(t), 4) for t in _joined(fits, signal_report, name, "temperatures")],
                quantization=b.quantization,
            )
            for name, b in built.items()
            if name != RAW
        },
    )
    summary["model_version"] = manifest.version
    (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (reports / "summary.md").write_text(summary_markdown(summary, manifest))
    manifest.write(out_dir / MANIFEST_FILE)
    ServingSpec(
        input_names=onnx_export.input_names,
        max_length=options.max_length,
        labels=model_labels,
        tensorrt=TensorRTProfile(max_seq=max(options.max_length, TensorRTProfile.max_seq)),
    ).write(out_dir / SPEC_FILE)
    # Dev, not test, in the log: whoever chooses between candidates reads this line (test is in the report).
    log.info(
        "export of %s passed all gates in %.0f s: %s (dev macro-F1 %s %.4f; test in %s)",
        model_ref,
        summary["seconds"],
        manifest.version,
        reference_variant,
        accuracy.results[reference_variant]["at_tuned"]["macro_f1"],
        reports / "summary.md",
    )
    return manifest


@dataclass(frozen=True)
class SignalReport:
    """The learning signals' fits (learner dev) per variant and their gate; the test report is added to
    the export's test report under ``learning_signals``."""

    fits: dict[str, Any]
    gate: GateReport


def signal_gate_drop(options: ExportOptions) -> float:
    """The learning signals' allowed macro-F1 drop: their own, never tighter than the accuracy gate's."""
    return max(options.max_macro_f1_drop, options.max_signal_f1_drop)


def _learning_signals(
    reference: Any,
    classifiers: dict[str, Any],
    signals: list[str],
    options: ExportOptions,
    reference_variant: str,
    first: int,
    test_report: dict[str, Any],
) -> SignalReport:
    """Temperatures and thresholds of the signal columns fitted on the learner *dev* split per variant;
    a gate (every variant within ``max_signal_f1_drop`` of the reference there); precision/recall per
    signal on the learner *test* split, reported only."""
    messages = load_learner_messages()
    dev_texts, dev_targets = learner_targets("dev", messages)
    test_texts, test_targets = learner_targets("test", messages)
    columns = slice(first, None)
    runners = {"torch": reference, **classifiers}
    log.info("learning signals %s: fitted on the learner dev split (%d texts)", signals, len(dev_texts))
    dev_logits = {k: c.predict(dev_texts, options.batch_size)[:, columns] for k, c in runners.items()}
    dev_gold = dev_targets[:, columns]
    mappings = {k: fit_mapping(v, dev_gold, options.calibration) for k, v in dev_logits.items()}
    dev_probs = {k: calibrated_probabilities(v, mappings[k].temperatures) for k, v in dev_logits.items()}
    # a signal with a precision floor is cut for its most dev recall instead of its best dev F1
    floors = np.array([options.signal_min_precision.get(s, np.nan) for s in signals])
    fits = {
        k: replace(
            m,
            thresholds=recall_first_thresholds(
                dev_probs[k], dev_gold, floors, m.thresholds, confidence=options.signal_precision_confidence
            ),
        )
        for k, m in mappings.items()
    }
    gate = accuracy_gate(
        dev_gold,
        dev_probs,
        {k: f.thresholds for k, f in fits.items()},
        reference=reference_variant,
        max_macro_f1_drop=signal_gate_drop(options),
        name="signal_accuracy",
        split="learner dev",
    )
    for name, runner in runners.items():
        logits = runner.predict(test_texts, options.batch_size)[:, columns]
        probs = calibrated_probabilities(logits, fits[name].temperatures)
        test_report[name]["learning_signals"] = bootstrap_per_label(
            probs, test_targets[:, columns], fits[name].thresholds, signals
        )
    test_report["_about"]["learning_signals"] = f"learner test split, {len(test_texts)} texts"
    return SignalReport(fits, gate)


def _joined(fits: dict[str, Any], signals: SignalReport | None, name: str, field_name: str) -> list[float]:
    """A variant's per-label values: the GoEmotions labels', then the learning signals' (if any)."""
    values = [float(x) for x in getattr(fits[name], field_name)]
    if signals is not None:
        values += [float(x) for x in getattr(signals.fits[name], field_name)]
    return values


def summary_markdown(summary: dict[str, Any], manifest: Manifest) -> str:
    """The export's gates (dev) and test report as tables: what `results/` keeps of an export."""
    test = summary["test"]
    lines = [
        f"# Export of `{manifest.version}`",
        "",
        f"Source `{summary['model']}`, max_length {manifest.max_length}; export took {summary['seconds']} s. "
        "Every decision (temperatures, thresholds, gates) on dev; test only reported "
        f"({test['_about']['texts']} texts, {test['_about']['interval']}).",
        "",
        "| variant | execution | parity max abs dlogit (dev) | dev macro-F1 "
        "| dev ECE before / after (cross-fitted) | **test macro-F1 [95% CI]** | test micro-F1 [95% CI] "
        "| test ECE |",
        "|---|---|---:|---:|---|---|---|---:|",
    ]
    for name in ["torch", "raw", *manifest.variants]:
        if name not in test:
            continue
        execution = manifest.variants[name].execution if name in manifest.variants else "batch"
        parity = summary["parity"].get(name, {}).get("max_abs_logit_diff")
        cal = summary["calibration_dev"]["per_variant"].get(name)
        ece = "" if cal is None else f"{cal['ece_before']:.5f} / {cal['ece_after']:.5f}"
        t = test[name]["at_tuned"]
        lines.append(
            f"| {name} | {execution} | {'' if parity is None else f'{parity:.3g}'} "
            f"| {summary['accuracy_dev'][name]['at_tuned']['macro_f1']:.4f} "
            f"| {ece} "
            f"| **{t['macro_f1']:.4f}** [{t['macro_f1_ci95'][0]:.4f}, {t['macro_f1_ci95'][1]:.4f}] "
            f"| {t['micro_f1']:.4f} [{t['micro_f1_ci95'][0]:.4f}, {t['micro_f1_ci95'][1]:.4f}] "
            f"| {test[name]['ece']:.5f} |"
        )
    lines += ["", "torch is scored with its own dev-fitted temperatures and thresholds, as a reference.", ""]
    signal_names = manifest.labels[len(manifest.labels) - len(LEARNING_SIGNALS) :]
    if "learning_signals" in test["_about"]:
        lines += [
            f"Learning signals on the {test['_about']['learning_signals']} (thresholds and temperatures "
            f"fitted on the learner dev split{_operating_points(summary)}; precision / recall / F1):",
            "",
            "| variant | " + " | ".join(signal_names) + " |",
            "|---|" + "---:|" * len(signal_names),
        ]
        for name in ["torch", *manifest.variants]:
            if name in test and "learning_signals" in test[name]:
                cells = [
                    "{precision:.3f} / {recall:.3f} / {f1:.3f}".format(**test[name]["learning_signals"][s])
                    for s in signal_names
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _operating_points(summary: dict[str, Any]) -> str:
    floors = summary.get("signal_min_precision") or {}
    confidence = summary.get("signal_precision_confidence")
    bound = f" (its one-sided {confidence:.0%} lower bound)" if confidence else ""
    cuts = ", ".join(
        f"{s} for the most recall at precision{bound} >= {p:g}" for s, p in sorted(floors.items())
    )
    return f"; {cuts}, the others for the best F1" if cuts else ", each for the best F1"


def _calibration_summary(results: dict[str, Any]) -> dict[str, Any]:
    return {k: results[k] for k in ("ece_before", "ece_after", "uncalibrated_tuned", "calibrated_tuned")}


def _check_training_max_length(model_ref: str, max_length: int) -> None:
    """A model trained here must be exported at the length it was trained at (one max_length)."""
    report = Path(model_ref) / "training_report.json"
    if not report.is_file():
        return
    trained = json.loads(report.read_text()).get("config", {}).get("max_length")
    if trained is not None and int(trained) != max_length:
        raise ValueError(
            f"{model_ref} was trained with max_length {trained} but would be exported with {max_length}; "
            "train and serve must truncate alike (retrain, or pass --max-length to match)"
        )


def _check_label_order(model_ref: str, label_names: list[str]) -> list[str]:
    """The model's id2label must name the GoEmotions labels in data order, else every label is wrong;
    the learning signals may follow them (all of them, in contract order). Returns the model's labels."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_ref)
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    model_names = [id2label.get(i, "") for i in range(len(id2label))]
    if model_names not in (label_names, [*label_names, *LEARNING_SIGNALS]):
        raise ValueError(
            f"the model's id2label {model_names[:5]}... does not match the GoEmotions labels "
            f"{label_names[:5]}... in order (optionally followed by {list(LEARNING_SIGNALS)}); "
            "refusing to export a model whose outputs would be mislabelled"
        )
    return model_names
