"""``python -m export``: train the student, export ONNX/TensorRT variants, gate, install, benchmark."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from contract.manifest import MANIFEST_FILE, Manifest, ManifestError, read_installed
from contract.names import CLASSIFIER, DEFAULT_MAX_LENGTH
from contract.spec import SPEC_FILE, ServingSpec
from export.packaging.install import MODEL_REPOSITORY, install
from export.packaging.repository import stale_configs, write_configs
from export.packaging.torch_variant import TORCH_FP16
from export.packaging.variants import (
    DEFAULT_STATIC_INT8,
    FP32_MATMUL_GROUPS,
    INT8_CONFIGS,
    ONNX_VARIANTS,
)
from export.pipeline import (
    SIGNAL_MIN_PRECISION,
    SIGNAL_PRECISION_CONFIDENCE,
    ExportOptions,
    export_model,
    model_slug,
)
from export.source import DEFAULT_HUB_MODEL, EXPORTS_DIR, STUDENT_DIR, choose_model
from export.training.calibration import CALIBRATION_METHODS, PER_LABEL
from export.training.data import DATA_DIR, DataError
from export.training.gates import (
    DEFAULT_MAX_CALIBRATION_F1_DROP,
    DEFAULT_MAX_MACRO_F1_DROP,
    DEFAULT_MAX_SIGNAL_F1_DROP,
    GateFailed,
)
from export.training.train import REPORT_FILE, Snapshot, TrainConfig, is_trained, train

log = logging.getLogger("export")

EXIT_GATE_FAILED = 2
EXIT_BAD_INPUT = 3
# Default floor for the reference variant: catches a broken or unrelated checkpoint, not a weak one.
DEFAULT_MIN_MACRO_F1 = 0.30
TRAIN_MINUTES_ESTIMATE = 25
# The first snapshot is gated on this many dev texts (and reported on as many test texts): minutes saved.
SNAPSHOT_EVAL_LIMIT = 1000


def _add_export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variants",
        nargs="+",
        choices=(*ONNX_VARIANTS, TORCH_FP16),
        default=[*ONNX_VARIANTS, TORCH_FP16],
        help="variants to build (default: all): ONNX, and torch_fp16 for the embedded server on a GPU",
    )
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokenizer truncation length")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: optimum's choice)")
    p.add_argument(
        "--int8-config",
        choices=INT8_CONFIGS,
        default="auto",
        help="dynamic quantization preset (auto: from this CPU's flags)",
    )
    p.add_argument(
        "--int8-per-tensor",
        dest="int8_per_channel",
        action="store_false",
        help="one weight scale per tensor (default: per channel, half the logit error on the student)",
    )
    p.add_argument(
        "--int8-range",
        choices=("symmetric", "asymmetric"),
        default="symmetric" if DEFAULT_STATIC_INT8.symmetric_range else "asymmetric",
        help="static INT8 activation ranges: symmetric around 0, or each tail clipped at its own "
        "percentile (default %(default)s)",
    )
    p.add_argument(
        "--int8-fp32",
        nargs="*",
        choices=FP32_MATMUL_GROUPS,
        default=list(DEFAULT_STATIC_INT8.fp32_matmuls),
        metavar="GROUP",
        help=f"weight MatMul groups static INT8 leaves in FP32 ({', '.join(FP32_MATMUL_GROUPS)}; "
        "default: %(default)s)",
    )
    p.add_argument(
        "--max-macro-f1-drop",
        type=float,
        default=DEFAULT_MAX_MACRO_F1_DROP,
        help="accuracy gate: allowed macro-F1 drop of any variant vs FP32 (default %(default)s)",
    )
    p.add_argument(
        "--max-signal-f1-drop",
        type=float,
        default=DEFAULT_MAX_SIGNAL_F1_DROP,
        help="signal gate: allowed learning-signal macro-F1 drop of any variant vs FP32 on the learner dev "
        "split, at least --max-macro-f1-drop (default %(default)s: that split is small)",
    )
    p.add_argument(
        "--min-macro-f1",
        type=float,
        default=DEFAULT_MIN_MACRO_F1,
        help="accuracy gate: minimum FP32 macro-F1 on dev at tuned thresholds (default %(default)s)",
    )
    p.add_argument(
        "--parity-tolerance",
        action="append",
        default=[],
        metavar="VARIANT=TOL",
        help="override the max |Δlogit| allowed for a variant, e.g. int8=0.3 (repeatable)",
    )
    p.add_argument(
        "--calibration",
        choices=CALIBRATION_METHODS,
        default=PER_LABEL,
        help="temperature scaling fitted on dev: one temperature per label, one for all, or none "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-calibration-f1-drop",
        type=float,
        default=DEFAULT_MAX_CALIBRATION_F1_DROP,
        help="calibration gate: allowed dev macro-F1 drop (cross-fitted, thresholds re-tuned) "
        "(default %(default)s)",
    )
    p.add_argument(
        "--signal-min-precision",
        action="append",
        default=[],
        metavar="SIGNAL=P",
        help="cut a learning signal for the most learner-dev recall at precision >= P (repeatable; "
        "SIGNAL=none for the best F1 instead); default: "
        + ", ".join(f"{k}={v:g}" for k, v in SIGNAL_MIN_PRECISION.items()),
    )
    p.add_argument(
        "--signal-precision-confidence",
        type=_confidence,
        default=SIGNAL_PRECISION_CONFIDENCE,
        metavar="C|none",
        help="the floors hold at the one-sided C lower bound (Wilson) of dev precision, not its point "
        "estimate (default %(default)s)",
    )
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N dev/test texts only")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="GoEmotions data directory")


def _confidence(value: str) -> float | None:
    if value == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a confidence such as 0.95, or none; got {value!r}"
        ) from None


def _export_options(args: argparse.Namespace) -> ExportOptions:
    tolerance = {}
    for item in args.parity_tolerance:
        name, _, value = item.partition("=")
        if name not in (*ONNX_VARIANTS, TORCH_FP16, "raw") or not value:
            raise SystemExit(
                "--parity-tolerance expects VARIANT=TOL with VARIANT in "
                f"raw/{'/'.join((*ONNX_VARIANTS, TORCH_FP16))}, "
                f"got {item!r}"
            )
        tolerance[name] = float(value)
    floors = dict(SIGNAL_MIN_PRECISION)
    for item in args.signal_min_precision:
        name, _, value = item.partition("=")
        if value == "none":
            floors.pop(name, None)
            continue
        try:
            floors[name] = float(value)
        except ValueError:
            raise SystemExit(
                f"--signal-min-precision expects SIGNAL=P or SIGNAL=none, got {item!r}"
            ) from None
    try:
        return ExportOptions(
            variants=tuple(args.variants),
            max_length=args.max_length,
            opset=args.opset,
            int8_config=args.int8_config,
            int8_per_channel=args.int8_per_channel,
            int8_static=dataclasses.replace(
                DEFAULT_STATIC_INT8,
                symmetric_range=args.int8_range == "symmetric",
                fp32_matmuls=tuple(args.int8_fp32),
            ),
            parity_tolerance=tolerance,
            max_macro_f1_drop=args.max_macro_f1_drop,
            max_signal_f1_drop=args.max_signal_f1_drop,
            min_macro_f1=args.min_macro_f1,
            eval_limit=args.eval_limit,
            calibration=args.calibration,
            max_calibration_f1_drop=args.max_calibration_f1_drop,
            signal_min_precision=floors,
            signal_precision_confidence=args.signal_precision_confidence,
        )
    except ValueError as e:  # an option the export would reject after minutes of work
        raise SystemExit(str(e)) from None


# How the learner rows are mixed into training: TrainConfig fields, each a `train` option of the same name.
LEARNER_MIX_OPTIONS = (
    ("learner_repeat", "times the learner train split is seen per epoch"),
    ("signal_negative_weight", "weight of GoEmotions rows as negatives for the learning signals (0: masked)"),
    (
        "learner_label_weight",
        "weight of the learner rows' 28 GoEmotions targets (their signal targets keep 1)",
    ),
    (
        "learner_unused_label_weight",
        "weight of learner rows' targets for GoEmotions labels their train split never marks (0: unknown)",
    ),
    (
        "learner_typo_rate",
        "share of words given a typo in each repeat of the learner split after the first (0: none)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", help="fine-tune the offline student (all-MiniLM-L6-v2 -> 28 sigmoids + learning signals)"
    )
    p.add_argument("--output", type=Path, default=STUDENT_DIR, help="model directory (resumable)")
    defaults = TrainConfig()
    p.add_argument("--epochs", type=float, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-length", type=int, default=defaults.max_length)
    p.add_argument("--encoder-lr", type=float, default=defaults.encoder_lr)
    p.add_argument("--head-lr", type=float, default=defaults.head_lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--time-budget-minutes", type=float, default=defaults.time_budget_minutes)
    p.add_argument(
        "--fit-schedule-to-budget",
        action=argparse.BooleanOptionalAction,
        default=defaults.fit_schedule_to_budget,
        help="where the pace says the planned steps will not fit the budget, end the learning-rate "
        "schedule at the steps that do (off: the budget guard stops the run mid-schedule)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=defaults.bf16,
        help="forward and backward in bfloat16 where the CPU has it natively (else float32)",
    )
    p.add_argument("--limit-train", type=int, default=None, help="train on the first N texts only")
    p.add_argument(
        "--no-learning-signals",
        dest="learning_signals",
        action="store_false",
        help="the 28 GoEmotions labels only (no learner data, no giving_up/boredom/stuck outputs)",
    )
    for field, help_text in LEARNER_MIX_OPTIONS:
        default = getattr(defaults, field)
        p.add_argument("--" + field.replace("_", "-"), type=type(default), default=default, help=help_text)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)

    p = sub.add_parser("build", help="export a model to ONNX variants, run the gates, tune thresholds")
    p.add_argument("model", help="Hugging Face hub id or local model directory")
    p.add_argument("--out", type=Path, default=None, help="export directory (default build/exports/<model>)")
    _add_export_options(p)

    p = sub.add_parser("install", help="copy an export into the Triton model repository layout")
    p.add_argument("export_dir", type=Path)
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)

    p = sub.add_parser(
        "prepare",
        help="choose the model (MODEL, hub, or offline student), train/export/install "
        "whatever is missing; cached",
    )
    p.add_argument(
        "--model",
        default=None,
        help="hub id or local dir (default: the hub model if the hub "
        f"answers, else the offline student); hub default {DEFAULT_HUB_MODEL}",
    )
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--force", action="store_true", help="re-export even when a passing export exists")
    p.add_argument(
        "--first-snapshot-minutes",
        type=float,
        default=0.0,
        help="offline student not trained yet: train this many minutes, export and install that snapshot "
        "to serve at once, and finish training in the background (a running `python -m server` swaps the "
        "final model in live). 0 (default): train fully first",
    )
    _add_export_options(p)

    p = sub.add_parser("configs", help="regenerate every Triton config from the repository's spec.json")
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--check", action="store_true", help="exit 1 if a generated file is missing or differs")

    p = sub.add_parser("tensorrt", help="build the TensorRT FP16 plan (GPU host with TensorRT 10)")
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument(
        "--onnx", type=Path, default=None, help="raw ONNX export (default: the repository's model.onnx)"
    )
    p.add_argument(
        "--plan", type=Path, default=None, help="output plan (default: the repository's model.plan)"
    )
    p.add_argument("--workspace-mib", type=int, default=4096)
    p.add_argument(
        "--timing-cache", type=Path, default=None, help="TensorRT timing cache file (reused on rebuild)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the trtexec command and exit")

    p = sub.add_parser(
        "bench", help="accuracy + CPU latency/throughput of every variant vs torch; writes results/"
    )
    p.add_argument(
        "--export-dir", type=Path, default=None, help="export to benchmark (default: the installed one)"
    )
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--invariance-texts",
        type=int,
        default=300,
        help="dev texts for the batch-invariance check (default %(default)s)",
    )
    p.add_argument("--out", type=Path, default=Path("results"))

    p = sub.add_parser(
        "learner-gap",
        help="the served model on the learner-message test split vs GoEmotions test; writes results/",
    )
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another model (repository or export directory) to report beside it, e.g. the student "
        "trained without the learner data",
    )
    p.add_argument(
        "--model-seed",
        type=Path,
        action="append",
        default=[],
        help="the served model's recipe trained with another seed (export directory; repeatable): its "
        "GoEmotions test macro-F1 joins the seed spread",
    )
    p.add_argument(
        "--baseline-seed",
        type=Path,
        action="append",
        default=[],
        help="the baseline's recipe trained with another seed (repeatable; needs --baseline)",
    )
    p.add_argument("--out", type=Path, default=Path("results"))

    p = sub.add_parser(
        "state-distribution",
        help="how the learning-state policy reads GoEmotions test (levels, states, learning emotions)",
    )
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--out", type=Path, default=Path("results"))

    p = sub.add_parser(
        "learner-select",
        help="candidate exports side by side on the dev splits (learner and GoEmotions): how the served "
        "student is chosen without reading the test split",
    )
    p.add_argument("exports", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("results"))
    p = sub.add_parser(
        "learner-agreement",
        help="the learner set's blind second reading against the writers' (dev and test), and the "
        "installed model against each reading (test); writes results/",
    )
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument(
        "--readings-only", action="store_true", help="the two readings alone, no model (none installed)"
    )
    p.add_argument(
        "--reading", type=Path, default=None, help="default: data/learner/second-reading/annotations.tsv"
    )
    p.add_argument("--out", type=Path, default=Path("results"))
    p = sub.add_parser(
        "learner-regroup",
        help="join the groups of learner messages that are near-duplicates of each other, so no pair "
        "straddles two splits (run after adding a part to data/learner)",
    )
    p.add_argument("--directory", type=Path, default=None, help="default: data/learner")
    p.add_argument("--check", action="store_true", help="only list what would move; exit 1 if anything would")
    p = sub.add_parser(
        "fit-bands",
        help="fit the policy's none|preventive and mild|moderate cut points to the learner dev split's "
        "intervention bands for the installed model; report dev and test beside the base policy",
    )
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--policy", type=Path, default=None, help="the base policy (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("results"))
    p = sub.add_parser(
        "fit-policy",
        help="fit the learning-state policy (risk, readiness, cut points) from outcome feedback (or a "
        "synthetic ground truth), judge it against the hand-set policy on a later period, write a new "
        "policy version when it is better",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audit-sqlite", type=Path, help="the gateway's SQLite audit trail")
    source.add_argument("--audit-dsn", help="the gateway's PostgreSQL audit trail (a postgresql:// URI)")
    source.add_argument("--synthetic", type=int, metavar="N", help="N texts from a known process")
    p.add_argument("--policy", type=Path, default=None, help="the base policy (default: the shipped one)")
    p.add_argument("--regularisation", type=float, default=1.0, help="logistic regression C")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("results"))
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        encoder_lr=args.encoder_lr,
        head_lr=args.head_lr,
        seed=args.seed,
        time_budget_minutes=args.time_budget_minutes,
        fit_schedule_to_budget=args.fit_schedule_to_budget,
        bf16=args.bf16,
        limit_train=args.limit_train,
        learning_signals=args.learning_signals,
        **{field: getattr(args, field) for field, _ in LEARNER_MIX_OPTIONS},
    )
    report = train(args.output, cfg, args.data_dir)
    log.info("training report: %s", json.dumps(report["dev_at_tuned"]))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    out = args.out or EXPORTS_DIR / model_slug(args.model)
    manifest = export_model(args.model, out, _export_options(args), args.data_dir)
    log.info("export written to %s (model version %s)", out, manifest.version)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    install(args.export_dir, args.repository)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    choice = choose_model(args.model)
    log.info("model: %s (%s)", choice.ref, choice.reason)
    if choice.kind == "student" and not is_trained(Path(choice.ref)):
        if args.first_snapshot_minutes > 0:
            try:
                return _serve_snapshot_first(args, Path(choice.ref))
            except GateFailed as exc:  # too early a snapshot: serve the trained model instead
                log.warning("the first snapshot did not pass its gates (%s); training fully first", exc)
        log.info(
            "the offline student is not trained yet: training it once now (about %d min on 2 CPU cores; "
            "progress below; resumable if interrupted)",
            TRAIN_MINUTES_ESTIMATE,
        )
        train(Path(choice.ref), TrainConfig())
    out = EXPORTS_DIR / model_slug(choice.ref if choice.kind != "student" else "student")
    summary = out / "reports" / "summary.json"
    passed = summary.is_file() and json.loads(summary.read_text()).get("passed") and _readable(out)
    if args.force or not passed:
        export_model(choice.ref, out, _export_options(args), args.data_dir)
    else:
        log.info("using the cached export in %s (--force to rebuild)", out)
    installed = read_installed(args.repository)
    wanted = Manifest.read(out / MANIFEST_FILE)
    if installed and installed.digest == wanted.digest:
        log.info("model repository %s already holds %s", args.repository, wanted.version)
    else:
        install(out, args.repository)
    return 0


def _serve_snapshot_first(args: argparse.Namespace, student: Path) -> int:
    """A servable model within minutes on a fresh machine: train a snapshot, gate it on a slice of dev,
    install it, and leave the full training (resumed from the snapshot's checkpoint), its export and
    install to a background process. Run again while that process lives, it only reports on it."""
    if read_installed(args.repository) is None:
        snapshot_dir = student.with_name(student.name + "-first")
        if not (snapshot_dir / REPORT_FILE).is_file():
            log.info(
                "the offline student is not trained yet: training a first snapshot for %.0f min "
                "(the full training, ~%d min, continues in the background afterwards)",
                args.first_snapshot_minutes,
                TRAIN_MINUTES_ESTIMATE,
            )
            train(student, TrainConfig(), snapshot=Snapshot(snapshot_dir, args.first_snapshot_minutes))
        spec_file = args.repository / SPEC_FILE
        spec = ServingSpec.read(spec_file if spec_file.is_file() else MODEL_REPOSITORY / SPEC_FILE)
        options = dataclasses.replace(
            _export_options(args),
            variants=tuple(
                dict.fromkeys(("fp32", spec.cpu_variant, spec.gpu_variant, spec.embedded_gpu_variant))
            ),
            eval_limit=args.eval_limit or SNAPSHOT_EVAL_LIMIT,
        )
        out = EXPORTS_DIR / model_slug(snapshot_dir.name)
        export_model(str(snapshot_dir), out, options, args.data_dir)
        install(out, args.repository)
    log_file = EXPORTS_DIR.parent / "logs" / "prepare-final.log"
    pid_file = log_file.with_suffix(".pid")
    if _alive(pid_file):
        log.info("the final model is still being prepared in the background (log: %s)", log_file)
        return 0
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "export", "prepare", "--repository", str(args.repository)]
    with log_file.open("ab") as out_log:
        # Its own session: Ctrl-C on `make serve` does not kill it; it resumes if killed anyway.
        process = subprocess.Popen(command, stdout=out_log, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(f"{process.pid}\n")
    log.info(
        "serving the snapshot now; the full training, export and install run in the background "
        "(pid %d, log %s): a running `python -m server` swaps the final model in when it is installed",
        process.pid,
        log_file,
    )
    return 0


def _readable(export_dir: Path) -> bool:
    """An export whose manifest this version reads (an older schema is rebuilt, not refused)."""
    try:
        Manifest.read(export_dir / MANIFEST_FILE)
    except ManifestError as exc:
        log.info("rebuilding the cached export: %s", exc)
        return False
    return True


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def cmd_configs(args: argparse.Namespace) -> int:
    spec = ServingSpec.read(args.repository / SPEC_FILE)
    if args.check:
        stale = stale_configs(args.repository, spec)
        for rel in stale:
            log.error("%s is missing or differs from what spec.json generates", rel)
        return 1 if stale else 0
    for path in write_configs(args.repository, spec):
        log.info("wrote %s", path)
    return 0


def cmd_tensorrt(args: argparse.Namespace) -> int:
    from export.packaging.tensorrt import PLAN_FILE, PlanBuild, TensorRTUnavailable, build_plan

    spec = ServingSpec.read(args.repository / SPEC_FILE)
    version_dir = args.repository / CLASSIFIER / "1"
    onnx_path = args.onnx or version_dir / "model.onnx"
    plan = args.plan or version_dir / PLAN_FILE
    try:
        build = PlanBuild(
            onnx_path, plan, spec.input_names, spec.tensorrt, args.workspace_mib, args.timing_cache
        )
        cmd = build_plan(build, dry_run=args.dry_run)
    except TensorRTUnavailable as exc:
        log.error(
            "cannot build the TensorRT plan here: %s. Run this on a GPU host with TensorRT 10 "
            "(e.g. `docker compose run trt-build`)",
            exc,
        )
        return 1
    if args.dry_run and cmd:
        sys.stdout.write(shlex.join(cmd) + "\n")
        return 0
    installed = read_installed(args.repository)
    if installed is not None and args.onnx is None:
        # The plan is valid for this manifest only; install removes plans of other manifests.
        plan.with_name(plan.name + ".digest").write_text(installed.digest + "\n")
    return 0


def _installed(repository: Path) -> Manifest | None:
    """The model installed in ``repository``; None (and why, in the log) when there is none."""
    installed = read_installed(repository)
    if installed is None:
        log.error("no model installed in %s; run `python -m export prepare` first", repository)
    return installed


def cmd_learner_gap(args: argparse.Namespace) -> int:
    from export import learner_gap

    if (args.model_seed or args.baseline_seed) and args.baseline is None:
        log.error("--model-seed and --baseline-seed set seeds beside a baseline: give --baseline too")
        return EXIT_BAD_INPUT
    if _installed(args.repository) is None:
        return 1
    report = learner_gap.run(args.repository, args.baseline, args.model_seed, args.baseline_seed)
    command = " ".join(
        [
            "python -m export learner-gap",
            *([f"--baseline {args.baseline}"] if args.baseline else []),
            *(f"--model-seed {d}" for d in args.model_seed),
            *(f"--baseline-seed {d}" for d in args.baseline_seed),
        ]
    )
    for path in learner_gap.write(report, args.out, command):
        log.info("wrote %s", path)
    return 0


def cmd_state_distribution(args: argparse.Namespace) -> int:
    from export import learner_gap

    report = learner_gap.state_distribution(args.repository)
    for path in learner_gap.write_distribution(report, args.out, "python -m export state-distribution"):
        log.info("wrote %s", path)
    return 0


def cmd_learner_agreement(args: argparse.Namespace) -> int:
    from export import learner_agreement
    from export.training.learner_data import SECOND_READING

    if not args.readings_only and _installed(args.repository) is None:
        return 1
    repository = None if args.readings_only else args.repository
    report = learner_agreement.run(repository, args.reading or SECOND_READING)
    command = "python -m export learner-agreement" + (" --readings-only" if args.readings_only else "")
    for path in learner_agreement.write(report, args.out, command):
        log.info("wrote %s", path)
    return 0


def cmd_learner_select(args: argparse.Namespace) -> int:
    from export import learner_gap

    report = learner_gap.select(args.exports)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m export learner-select " + " ".join(str(e) for e in args.exports)
    (args.out / "learner_selection.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "learner_selection.md").write_text(learner_gap.selection_markdown(report, command))
    log.info("wrote %s", args.out / "learner_selection.md")
    return 0


def cmd_learner_regroup(args: argparse.Namespace) -> int:
    from export.training.learner_data import LEARNER_DIR, joined_groups, load_learner_messages, rename_groups

    directory = args.directory or LEARNER_DIR
    messages = load_learner_messages(directory)
    renames = joined_groups(messages)
    counts = Counter(m.group for m in messages)
    for group, joined in renames.items():
        log.info("%s (%d messages) joins %s", group, counts[group], joined)
    if args.check or not renames:
        log.info("%d groups would move", len(renames))
        return 1 if renames else 0
    log.info("renamed the group of %d messages", rename_groups(directory, renames))
    return 0


def cmd_fit_bands(args: argparse.Namespace) -> int:
    from export import band_fit

    if _installed(args.repository) is None:
        return 1
    result = band_fit.fit_bands(args.repository, args.policy)
    written = band_fit.write(result, args.out, args.policy)
    md = args.out / "band_fit.md"
    md.write_text(band_fit.markdown(result, "python -m export fit-bands"))
    for path in [*written, md]:
        log.info("wrote %s", path)
    return 0


def cmd_fit_policy(args: argparse.Namespace) -> int:
    from export import policy_fit

    if args.synthetic:
        records = policy_fit.synthetic_records(args.synthetic, args.seed)
        source = f"--synthetic {args.synthetic} --seed {args.seed}"
    elif args.audit_dsn:
        records = policy_fit.records_from_postgres(args.audit_dsn)
        source = "--audit-dsn <dsn>"
    else:
        records = policy_fit.records_from_sqlite(args.audit_sqlite)
        source = f"--audit-sqlite {args.audit_sqlite}"
    try:
        result = policy_fit.fit_policy(
            records, args.policy, args.regularisation, synthetic=bool(args.synthetic)
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    written = policy_fit.write(result, args.out, args.policy)
    truth = policy_fit.TRUE_WEIGHTS if args.synthetic else None
    md = args.out / "policy_fit.md"
    md.write_text(policy_fit.markdown(result, f"python -m export fit-policy {source}", truth))
    png = policy_fit.chart(result, args.out / "policy_fit.png")
    for path in [*written, md, png]:
        log.info("wrote %s", path)
    if result.get("policy_version"):
        log.info(
            "new policy version %s: copy it into GATEWAY_POLICY_DIR, then PUT /v1/policy",
            result["policy_version"],
        )
    return 0 if result["better"] else 2


def cmd_bench(args: argparse.Namespace) -> int:
    from export.bench import (
        INVARIANCE_COMPANIONS,
        BenchConfig,
        batch_invariance,
        invariance_sample,
        longest_texts,
        machine_info,
        paired_ratios,
        run_bench,
        save_report,
    )
    from export.packaging.runtime import BATCH, load_tokenizer, onnx_classifier, torch_classifier
    from export.packaging.torch_variant import torch_runtime_classifier
    from export.training.data import load_split

    if args.export_dir is None:
        installed = _installed(args.repository)
        if installed is None:
            return 1
        ref = installed.source
        export_dir = EXPORTS_DIR / model_slug("student" if Path(ref).resolve() == STUDENT_DIR else ref)
    else:
        export_dir = args.export_dir
    manifest = Manifest.read(export_dir / MANIFEST_FILE)
    summary = json.loads((export_dir / "reports" / "summary.json").read_text())
    tokenizer = load_tokenizer(export_dir)
    max_length = manifest.max_length
    reference = torch_classifier(manifest.source, tokenizer, manifest.input_names, max_length, args.threads)
    paths = {"torch": reference}
    # raw: the TensorRT input, run on the CPU for reference; the others as served (own execution mode,
    # torch_fp16 by the embedded server's torch runtime: its file is safetensors, not ONNX).
    paths["raw"] = onnx_classifier(export_dir / manifest.onnx.file, tokenizer, max_length, args.threads)
    for name, variant in manifest.variants.items():
        paths[name] = (
            torch_runtime_classifier(export_dir / variant.file, tokenizer, manifest.input_names, max_length)
            if name == TORCH_FP16
            else onnx_classifier(
                export_dir / variant.file, tokenizer, max_length, args.threads, execution=variant.execution
            )
        )
    cfg = BenchConfig(rounds=args.rounds, threads=args.threads)
    test = load_split("test")
    started = time.monotonic()
    bench = run_bench(paths, test.texts, cfg)
    bench_seconds = round(time.monotonic() - started, 1)

    dev = load_split("dev")
    companions = longest_texts(tokenizer, dev.texts, INVARIANCE_COMPANIONS, max_length)
    sample = invariance_sample(dev.texts, companions, args.invariance_texts)
    log.info("batch invariance: %d dev texts alone vs with %d long texts", len(sample), len(companions))
    invariance = {name: batch_invariance(clf, sample, companions) for name, clf in paths.items()}
    for name, variant in manifest.variants.items():
        if variant.execution != BATCH:  # what serving it batched would do: the reason it is not
            batched = onnx_classifier(export_dir / variant.file, tokenizer, max_length, args.threads)
            invariance[f"{name} (batch execution, not served)"] = batch_invariance(
                batched, sample, companions
            )

    source_dir = Path(manifest.source)
    torch_size = sum(f.stat().st_size for f in source_dir.glob("*.safetensors")) if source_dir.is_dir() else 0
    training = None
    if (source_dir / REPORT_FILE).is_file():
        t = json.loads((source_dir / REPORT_FILE).read_text())
        training = {
            **t,
            "train_seconds": t["train_seconds_this_run"],
            "wall_seconds": t["wall_seconds_this_run"],
        }
    dev_accuracy = summary.get("accuracy_dev", {})
    test_accuracy = summary.get("test", {})
    report = {
        "model": manifest.source if source_dir != STUDENT_DIR else "offline student (build/models/student)",
        "model_version": manifest.version,
        "date": dt.date.today().isoformat(),
        "command": "make bench-model",
        "machine": machine_info(),
        "bench_config": cfg.__dict__,
        "bench_seconds": bench_seconds,
        "test_texts": test_accuracy.get("_about", {}).get("texts", len(test)),
        "sizes_mb": {
            "torch": torch_size / 1e6,
            "raw": manifest.onnx.size_bytes / 1e6,
            **{k: v.size_bytes / 1e6 for k, v in manifest.variants.items()},
        },
        "executions": {
            "torch": BATCH,
            "raw": BATCH,
            **{k: v.execution for k, v in manifest.variants.items()},
        },
        "quantization": {k: v.quantization for k, v in manifest.variants.items() if v.quantization},
        "accuracy": {
            "dev": {k: v["at_tuned"] for k, v in dev_accuracy.items() if not k.startswith("_")},
            "test": {k: v["at_tuned"] for k, v in test_accuracy.items() if not k.startswith("_")},
        },
        "parity": summary.get("parity"),
        "bench": bench,
        "comparisons": {
            "int8_vs_int8_dynamic": paired_ratios(bench, "int8", "int8_dynamic"),
            "int8_vs_fp32": paired_ratios(bench, "int8", "fp32"),
        },
        "invariance": invariance,
        "training": training,
    }
    json_path, md_path = save_report(report, args.out)
    log.info("wrote %s and %s", json_path, md_path)
    return 0


COMMANDS = {
    "train": cmd_train,
    "build": cmd_build,
    "install": cmd_install,
    "prepare": cmd_prepare,
    "configs": cmd_configs,
    "tensorrt": cmd_tensorrt,
    "bench": cmd_bench,
    "learner-gap": cmd_learner_gap,
    "fit-policy": cmd_fit_policy,
    "fit-bands": cmd_fit_bands,
    "learner-select": cmd_learner_select,
    "learner-agreement": cmd_learner_agreement,
    "learner-regroup": cmd_learner_regroup,
    "state-distribution": cmd_state_distribution,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Root at WARNING: onnxruntime's quantizer logs every tensor at INFO through the root logger.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except GateFailed as exc:
        log.error("gate failed: %s", exc)
        return EXIT_GATE_FAILED
    except (DataError, FileNotFoundError, ManifestError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
