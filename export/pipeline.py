"""Model -> ONNX variants -> gates -> thresholds -> model repository, as one function per step."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from export.calibration import (
    CALIBRATION_METHODS,
    PER_LABEL,
    calibrated_probabilities,
    carry_thresholds,
    fit_temperatures,
    reliability,
    reliability_diagram,
    retune_thresholds,
)
from export.data import DATA_DIR, load_dataset
from export.gates import (
    DEFAULT_MAX_CALIBRATION_F1_DROP,
    DEFAULT_MAX_MACRO_F1_DROP,
    GateFailed,
    accuracy_gate,
    calibration_gate,
    parity_gate,
)
from export.labels import LABELS_FILE, LabelSet, model_version
from export.metrics import tune_thresholds
from export.repository import write_configs
from export.runtime import DEFAULT_MAX_LENGTH, load_tokenizer, onnx_classifier, torch_classifier
from export.spec import MANIFEST_FILE, SPEC_FILE, Manifest, ServingSpec, TensorRTProfile, VariantFile
from export.tensorrt import write_build_script
from export.variants import FP32, ONNX_VARIANTS, RAW, VARIANT_FILES, build_variants, export_onnx

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
CLASSIFIER_DIR = "classifier"
TOKENIZER_DIR = "tokenizer"
REPORTS_DIR = "reports"
RELIABILITY_PNG = "reliability.png"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
PARITY_SAMPLE = 256
PARITY_SEED = 2020


@dataclass(frozen=True)
class ExportOptions:
    variants: tuple[str, ...] = ONNX_VARIANTS
    max_length: int = DEFAULT_MAX_LENGTH
    opset: int | None = None
    int8_config: str = "auto"
    int8_per_channel: bool = True
    parity_tolerance: dict[str, float] = field(default_factory=dict)
    max_macro_f1_drop: float = DEFAULT_MAX_MACRO_F1_DROP
    min_macro_f1: float = 0.0
    eval_limit: int | None = None  # tests: evaluate on the first N texts of dev/test
    batch_size: int = 32
    calibration: str = PER_LABEL  # temperature scaling: per-label, global or none
    max_calibration_f1_drop: float = DEFAULT_MAX_CALIBRATION_F1_DROP

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:  # before minutes of ONNX export, not after
            raise ValueError(
                f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calibration!r}"
            )


def model_slug(model_ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", model_ref.strip("/")).strip("-") or "model"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parity_sample(texts: list[str], n: int = PARITY_SAMPLE, seed: int = PARITY_SEED) -> list[str]:
    """A fixed, seeded sample of the test split: the same texts on every run and every variant."""
    rng = random.Random(seed)
    return rng.sample(texts, min(n, len(texts)))


def export_model(
    model_ref: str, out_dir: Path, options: ExportOptions, data_dir: Path = DATA_DIR
) -> Manifest:
    """Export ``model_ref`` (hub id or local dir) into ``out_dir``; raise GateFailed when a gate fails."""
    started = time.monotonic()
    label_names, splits = load_dataset(data_dir)
    _check_label_order(model_ref, label_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (
        out_dir / LABELS_FILE,
        out_dir / SPEC_FILE,
        out_dir / MANIFEST_FILE,
        out_dir / REPORTS_DIR / "summary.json",
        out_dir / REPORTS_DIR / "calibration.json",
        out_dir / REPORTS_DIR / RELIABILITY_PNG,
    ):
        stale.unlink(missing_ok=True)
    onnx_export = export_onnx(model_ref, out_dir, options.opset)
    paths = build_variants(onnx_export, options.variants, options.int8_config, options.int8_per_channel)

    tokenizer = load_tokenizer(out_dir)
    dev, test = splits["dev"], splits["test"]
    n = options.eval_limit
    dev_texts, dev_labels = dev.texts[:n], dev.labels[:n]
    test_texts, test_labels = test.texts[:n], test.labels[:n]

    reference = torch_classifier(model_ref, tokenizer, onnx_export.input_names, options.max_length)
    classifiers = {name: onnx_classifier(path, tokenizer, options.max_length) for name, path in paths.items()}

    log.info("parity gate: %d fixed test texts, torch vs %s", PARITY_SAMPLE, ", ".join(classifiers))
    sample = parity_sample(test.texts)
    # Fixed batches of 16 in sample order, identical on every path.
    ref_logits = reference.predict(sample, batch_size=16)
    parity = parity_gate(
        ref_logits,
        {k: c.predict(sample, batch_size=16) for k, c in classifiers.items()},
        options.parity_tolerance,
    )

    tuning_variant = FP32 if FP32 in classifiers else RAW
    log.info(
        "fitting %s temperatures, then tuning per-label thresholds on dev (%d texts) with the %s model",
        options.calibration,
        len(dev_texts),
        tuning_variant,
    )
    dev_logits = classifiers[tuning_variant].predict(dev_texts, options.batch_size)
    fit = fit_temperatures(dev_logits, dev_labels, options.calibration)
    uncalibrated_thresholds = tune_thresholds(calibrated_probabilities(dev_logits), dev_labels)
    thresholds = retune_thresholds(
        calibrated_probabilities(dev_logits, fit.temperatures),
        dev_labels,
        carry_thresholds(uncalibrated_thresholds, fit.temperatures),
    )

    log.info("accuracy gate on test (%d texts): torch + %s", len(test_texts), ", ".join(classifiers))
    test_logits = {"torch": reference.predict(test_texts, options.batch_size)}
    for name, clf in classifiers.items():
        test_logits[name] = clf.predict(test_texts, options.batch_size)
    # Every variant is scored as served: through the temperatures, at the thresholds tuned after them.
    test_probs = {k: calibrated_probabilities(v, fit.temperatures) for k, v in test_logits.items()}
    accuracy = accuracy_gate(
        test_labels,
        test_probs,
        thresholds,
        reference=tuning_variant,
        max_macro_f1_drop=options.max_macro_f1_drop,
        min_macro_f1=options.min_macro_f1,
    )
    log.info("calibration gate on test: ECE and macro-F1 before/after temperature scaling")
    calibration = calibration_gate(
        test_labels,
        test_logits[tuning_variant],
        fit.temperatures,
        uncalibrated_thresholds,
        thresholds,
        label_names,
        max_macro_f1_drop=options.max_calibration_f1_drop,
    )
    calibration.results = {
        "method": fit.method,
        "fitted_on": "dev",
        "dev_samples": len(dev_texts),
        "variant": tuning_variant,
        "global_temperature": fit.global_temperature,
        "fallback_labels": [label_names[i] for i in fit.fallback_labels],
        **calibration.results,
    }

    reports = out_dir / REPORTS_DIR
    parity.write(reports)
    accuracy.write(reports)
    calibration.write(reports)
    reliability_diagram(
        reliability(calibrated_probabilities(test_logits[tuning_variant]), test_labels),
        reliability(test_probs[tuning_variant], test_labels),
        reports / RELIABILITY_PNG,
        title=f"{Path(model_ref).name}: test split, {len(test_texts)} texts x {len(label_names)} labels, "
        f"{fit.method} temperatures fitted on dev",
    )
    # Name + hash of the weights and the label mapping: new weights, thresholds or temperatures give a
    # new version (and new cache keys).
    name = Path(model_ref).name if Path(model_ref).is_dir() else model_slug(model_ref)
    version = model_version(name, file_digest(paths[RAW]), thresholds.tolist(), fit.temperatures.tolist())
    calibration_block = {
        "method": fit.method,
        "fitted_on": "dev",
        "evaluated_on": "test",
        "bins": calibration.results["bins"],
        "ece_before": calibration.results["ece_before"],
        "ece_after": calibration.results["ece_after"],
    }
    summary = {
        "model": model_ref,
        "model_version": version,
        "seconds": round(time.monotonic() - started, 1),
        "parity": parity.results,
        "accuracy": accuracy.results,
        "calibration": {
            **calibration_block,
            "uncalibrated_tuned": calibration.results["uncalibrated_tuned"],
            "calibrated_tuned": calibration.results["calibrated_tuned"],
        },
        "passed": parity.passed and accuracy.passed and calibration.passed,
    }
    (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    failures = parity.failures + accuracy.failures + calibration.failures
    if failures:  # no labels file or spec: nothing downstream can pick up a failed export
        raise GateFailed("; ".join(failures) + f" (reports in {reports})")

    LabelSet(
        label_names,
        thresholds.tolist(),
        version,
        temperatures=fit.temperatures.tolist(),
        calibration=calibration_block,
    ).write(out_dir / LABELS_FILE)
    manifest = Manifest(
        source=model_ref,
        model_version=version,
        variants={
            name: VariantFile(VARIANT_FILES[name], file_digest(p), p.stat().st_size)
            for name, p in paths.items()
        },
    )
    manifest.write(out_dir / MANIFEST_FILE)
    ServingSpec(
        input_names=onnx_export.input_names,
        max_length=options.max_length,
        labels=label_names,
        tensorrt=TensorRTProfile(max_seq=max(options.max_length, TensorRTProfile.max_seq)),
    ).write(out_dir / SPEC_FILE)
    log.info("export of %s passed all gates in %.0f s", model_ref, summary["seconds"])
    return manifest


def _check_label_order(model_ref: str, label_names: list[str]) -> None:
    """The model's id2label must name the GoEmotions labels in data order, else every label is wrong."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_ref)
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    model_names = [id2label.get(i, "") for i in range(len(id2label))]
    if model_names != label_names:
        raise ValueError(
            f"the model's id2label {model_names[:5]}... does not match the GoEmotions labels "
            f"{label_names[:5]}... in order; refusing to export a model whose outputs would be mislabelled"
        )


def install(export_dir: Path, repository: Path = MODEL_REPOSITORY) -> Manifest:
    """Copy an export's model files, tokenizer and labels file into the repository layout, then
    regenerate the configs: the repository's serving settings, the new model's interface."""
    manifest = Manifest.read(export_dir / MANIFEST_FILE)
    exported = ServingSpec.read(export_dir / SPEC_FILE)
    current = repository / SPEC_FILE
    spec = (
        ServingSpec.read(current).for_model(exported.input_names, exported.max_length, exported.labels)
        if current.is_file()
        else exported
    )
    version_dir = repository / CLASSIFIER_DIR / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    for stale in version_dir.glob("model*.onnx"):
        stale.unlink()
    for variant in manifest.variants.values():
        shutil.copy2(export_dir / variant.file, version_dir / variant.file)
    tok_dir = repository / TOKENIZER_DIR / "1"
    tok_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (export_dir / name).is_file():
            shutil.copy2(export_dir / name, tok_dir / name)
    shutil.copy2(export_dir / LABELS_FILE, repository / LABELS_FILE)
    manifest.write(repository / MANIFEST_FILE)
    spec.write(current)
    write_configs(repository, spec)
    write_build_script(repository / CLASSIFIER_DIR, spec.input_names, spec.tensorrt)
    log.info("installed %s (%s) into %s", manifest.source, manifest.model_version, repository)
    return manifest


def read_installed(repository: Path = MODEL_REPOSITORY) -> Manifest | None:
    """The installed manifest when every file it names is present and intact in size, else None."""
    path = repository / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = Manifest.read(path)
    version_dir = repository / CLASSIFIER_DIR / "1"
    for variant in manifest.variants.values():
        f = version_dir / variant.file
        if not f.is_file() or f.stat().st_size != variant.size_bytes:
            return None
    if (
        not (repository / LABELS_FILE).is_file()
        or not (repository / TOKENIZER_DIR / "1" / "tokenizer.json").is_file()
    ):
        return None
    return manifest
