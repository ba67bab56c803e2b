"""The ``python -m export`` CLI: help, exit codes, build -> install -> tensorrt command, cached prepare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.manifest import read_installed
from export.__main__ import EXIT_BAD_INPUT, EXIT_GATE_FAILED, main

REPO = Path(__file__).resolve().parents[2]
# Random weights: the F1 criteria are meaningless (calibration's too: temperatures end at their bounds).
LOOSE = [
    "--eval-limit",
    "60",
    "--min-macro-f1",
    "0",
    "--max-macro-f1-drop",
    "1",
    "--max-calibration-f1-drop",
    "1",
]


def offline_student_cli(tmp_path, monkeypatch):
    """`python -m export` on a machine where the hub does not answer: the offline student is chosen
    and exports go under ``tmp_path``."""
    import export.__main__ as cli
    from export.source import ModelChoice

    student = tmp_path / "models" / "student"
    monkeypatch.setattr(cli, "EXPORTS_DIR", tmp_path / "exports")
    monkeypatch.setattr(cli, "choose_model", lambda _: ModelChoice(str(student), "student", "offline"))
    return cli


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "export", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for command in ("train", "build", "install", "prepare", "tensorrt", "bench"):
        assert command in out


@pytest.mark.parametrize("command", ["build", "prepare", "tensorrt", "train"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: python -m export" in capsys.readouterr().out


def test_the_signal_gate_has_its_own_tolerance_never_tighter_than_the_accuracy_gates():
    from export.__main__ import _export_options, build_parser
    from export.pipeline import signal_gate_drop

    default = _export_options(build_parser().parse_args(["build", "model"]))
    assert default.max_macro_f1_drop == 0.01 and signal_gate_drop(default) == 0.02
    loose = _export_options(build_parser().parse_args(["build", "model", "--max-macro-f1-drop", "1"]))
    assert signal_gate_drop(loose) == 1.0  # tiny random models: both gates loose
    strict = build_parser().parse_args(["build", "model", "--max-signal-f1-drop", "0.005"])
    assert signal_gate_drop(_export_options(strict)) == 0.01


def test_giving_up_is_cut_for_recall_at_a_precision_floor_unless_told_otherwise():
    from export.__main__ import _export_options, build_parser

    def floors(*extra: str) -> dict[str, float]:
        return _export_options(build_parser().parse_args(["build", "model", *extra])).signal_min_precision

    assert floors() == {"giving_up": 0.7}
    assert floors("--signal-min-precision", "giving_up=none", "--signal-min-precision", "stuck=0.8") == {
        "stuck": 0.8
    }
    for bad, message in [
        ("bordem=0.7", "expected a learning signal"),
        ("stuck=1.5", "in \\(0, 1\\]"),
        ("stuck=high", "expects SIGNAL=P"),
    ]:
        with pytest.raises(SystemExit, match=message):
            floors("--signal-min-precision", bad)


def test_the_precision_floors_hold_at_a_lower_bound_when_given_a_confidence(capsys):
    from export.__main__ import _export_options, build_parser
    from export.pipeline import SIGNAL_PRECISION_CONFIDENCE

    def confidence(*extra: str) -> float | None:
        args = build_parser().parse_args(["build", "model", *extra])
        return _export_options(args).signal_precision_confidence

    assert confidence() == SIGNAL_PRECISION_CONFIDENCE
    assert confidence("--signal-precision-confidence", "0.9") == 0.9
    assert confidence("--signal-precision-confidence", "none") is None
    with pytest.raises(SystemExit, match=r"in \(0\.5, 1\)"):
        confidence("--signal-precision-confidence", "0.4")
    with pytest.raises(SystemExit):
        confidence("--signal-precision-confidence", "high")
    assert "expected a confidence such as 0.95, or none; got 'high'" in capsys.readouterr().err


def test_static_int8_ranges_and_fp32_groups_are_export_options():
    from export.__main__ import _export_options, build_parser
    from export.packaging.variants import DEFAULT_STATIC_INT8

    def settings(*extra: str):
        return _export_options(build_parser().parse_args(["build", "model", *extra])).int8_static

    default = settings()
    assert default.symmetric_range == DEFAULT_STATIC_INT8.symmetric_range
    assert default.fp32_matmuls == DEFAULT_STATIC_INT8.fp32_matmuls
    chosen = settings("--int8-range", "asymmetric", "--int8-fp32", "ffn_out")
    assert chosen.symmetric_range is False and chosen.fp32_matmuls == ("ffn_out",)
    assert settings("--int8-fp32").fp32_matmuls == ()  # none: every weight MatMul in INT8
    with pytest.raises(SystemExit):
        settings("--int8-fp32", "attention")


def _build_and_install(tmp_path: Path, model: Path, data: Path, *variants: str) -> Path:
    out, repo = tmp_path / "export", tmp_path / "repo"
    args = ["build", str(model), "--out", str(out), "--data-dir", str(data), "--variants", *variants, *LOOSE]
    assert main(args) == 0
    assert main(["install", str(out), "--repository", str(repo)]) == 0
    return repo


def test_build_install_tensorrt_dry_run(tmp_path, tiny_model, tiny_data, capsys):
    repo = _build_and_install(tmp_path, tiny_model, tiny_data, "fp32", "fp16", "int8")
    installed = read_installed(repo)
    assert installed is not None and set(installed.variants) == {"fp32", "fp16", "int8"}

    capsys.readouterr()
    assert main(["tensorrt", "--repository", str(repo), "--dry-run"]) == 0
    cmd = capsys.readouterr().out
    assert "--onnx=" + str(repo / "classifier" / "1" / "model.onnx") in cmd
    assert "--saveEngine=" + str(repo / "classifier" / "1" / "model.plan") in cmd
    assert "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1" in cmd
    assert "--maxShapes=input_ids:32x128,attention_mask:32x128,token_type_ids:32x128" in cmd
    assert "--fp16" in cmd and "--precisionConstraints=obey" in cmd
    assert "LayerNorm/LayerNormalization:fp32" in cmd


def test_tensorrt_without_tensorrt_fails_clearly(tmp_path, tiny_model, tiny_data, monkeypatch, caplog):
    repo = _build_and_install(tmp_path, tiny_model, tiny_data, "fp16", "int8")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["tensorrt", "--repository", str(repo)]) == 1
    assert "cannot build the TensorRT plan here" in caplog.text


def test_gate_failure_exit_code(tmp_path, tiny_model, tiny_data):
    code = main(
        [
            "build",
            str(tiny_model),
            "--out",
            str(tmp_path),
            "--data-dir",
            str(tiny_data),
            "--variants",
            "int8",
            "--parity-tolerance",
            "int8=1e-9",
            *LOOSE,
        ]
    )
    assert code == EXIT_GATE_FAILED


def test_the_static_int8_options_reach_the_served_variant(tmp_path, tiny_model, tiny_data):
    from contract.manifest import Manifest

    args = ["build", str(tiny_model), "--out", str(tmp_path), "--data-dir", str(tiny_data), "--variants"]
    assert main([*args, "int8", "--int8-range", "symmetric", "--int8-fp32", "ffn_out", *LOOSE]) == 0
    q = Manifest.read(tmp_path / "manifest.json").variants["int8"].quantization
    assert q["calibration_symmetric_range"] is True  # the default is asymmetric
    assert (q["fp32_matmuls"], q["fp32_matmul_count"]) == (["ffn_out"], 2)


def test_calibration_flag_and_gate_exit_code(tmp_path, tiny_model, tiny_data):
    import json

    from contract.manifest import Manifest

    base = ["build", str(tiny_model), "--data-dir", str(tiny_data), "--variants", "fp32", *LOOSE]
    assert main([*base, "--out", str(tmp_path / "global"), "--calibration", "global"]) == 0
    temperatures = Manifest.read(tmp_path / "global" / "manifest.json").variants["fp32"].temperatures
    assert len(set(temperatures)) == 1 and temperatures[0] != 1.0
    # argparse keeps the last value: a negative allowance fails even an unchanged macro-F1.
    failing = [*base, "--out", str(tmp_path / "failed"), "--max-calibration-f1-drop", "-1"]
    assert main(failing) == EXIT_GATE_FAILED
    assert json.loads((tmp_path / "failed" / "reports" / "calibration.json").read_text())["passed"] is False
    assert not (tmp_path / "failed" / "manifest.json").exists()
    with pytest.raises(SystemExit):
        main([*base, "--calibration", "isotonic"])


def test_bad_inputs_exit_code(tmp_path, tiny_model, caplog):
    assert main(["build", str(tiny_model), "--out", str(tmp_path), "--data-dir", str(tmp_path / "nope")]) == (
        EXIT_BAD_INPUT
    )
    assert "emotions.txt: missing" in caplog.text
    with pytest.raises(SystemExit):
        main(["build", str(tiny_model), "--parity-tolerance", "bogus"])


def test_learner_gap_seeds_need_a_baseline(tmp_path, caplog):
    # seeds are set beside a baseline; without one they would be dropped without a word
    args = ["learner-gap", "--repository", str(tmp_path), "--out", str(tmp_path)]
    assert main([*args, "--model-seed", str(tmp_path)]) == EXIT_BAD_INPUT
    assert main([*args, "--baseline-seed", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "give --baseline too" in caplog.text


def test_prepare_is_cached(tmp_path, tiny_model, tiny_data, monkeypatch, caplog):
    import export.__main__ as cli

    monkeypatch.setattr(cli, "EXPORTS_DIR", tmp_path / "exports")
    args = [
        "prepare",
        "--model",
        str(tiny_model),
        "--repository",
        str(tmp_path / "repo"),
        "--data-dir",
        str(tiny_data),
        "--variants",
        "fp16",
        "int8",
        *LOOSE,
    ]
    assert main(args) == 0
    first = read_installed(tmp_path / "repo")
    calls = []
    monkeypatch.setattr(cli, "export_model", lambda *a, **k: calls.append(a))
    caplog.clear()
    assert main(args) == 0
    assert calls == []  # second run re-exports nothing
    assert "cached export" in caplog.text and "already holds" in caplog.text
    assert read_installed(tmp_path / "repo") == first

    # An export from before the manifest schema (or hand-edited) is rebuilt, not a dead end.
    (export_dir,) = (tmp_path / "exports").iterdir()
    manifest = export_dir / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema": 1}))
    main(args)  # the stand-in export_model above writes nothing, so this run ends without a model
    assert len(calls) == 1 and "rebuilding the cached export" in caplog.text


def test_prepare_serves_a_snapshot_first_and_finishes_in_the_background(
    tmp_path, tiny_model, tiny_data, monkeypatch
):
    """A fresh machine: a first snapshot is trained, gated and installed at once; the full training,
    export and install are left to one background `prepare` (not started twice)."""
    import shutil
    import subprocess

    cli = offline_student_cli(tmp_path, monkeypatch)
    snapshots = []

    def fake_train(output, cfg, data_dir=None, base=None, snapshot=None):
        snapshots.append(snapshot)
        shutil.copytree(tiny_model, snapshot.directory)  # the weights so far
        (snapshot.directory / "training_report.json").write_text('{"config": {"max_length": 128}}')
        return {}

    spawned = []

    class FakePopen:
        pid = 4242

        def __init__(self, command, **kwargs):
            spawned.append((command, kwargs))

    monkeypatch.setattr(cli, "train", fake_train)
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    repo = tmp_path / "repo"
    shutil.copytree(cli.MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("1", "manifest.json"))
    args = [
        "prepare",
        "--repository",
        str(repo),
        "--data-dir",
        str(tiny_data),
        "--first-snapshot-minutes",
        "2",
    ]
    assert main([*args, *LOOSE]) == 0
    assert [s.after_minutes for s in snapshots] == [2.0]
    installed = read_installed(repo)
    assert installed is not None and installed.name == "student-first"
    ((command, kwargs),) = spawned
    assert command[-4:] == ["export", "prepare", "--repository", str(repo)] and kwargs["start_new_session"]

    alive = []
    monkeypatch.setattr(cli, "_alive", lambda pid_file: alive.append(pid_file.read_text()) or True)
    assert main([*args, *LOOSE]) == 0
    assert len(snapshots) == 1 and len(spawned) == 1  # nothing trained or started twice
    assert alive == ["4242\n"]


def test_a_snapshot_that_fails_its_gates_is_not_served(tmp_path, tiny_data, monkeypatch, caplog):
    from export.training.gates import GateFailed

    cli = offline_student_cli(tmp_path, monkeypatch)
    trained = []

    def fake_train(output, cfg, data_dir=None, base=None, snapshot=None):
        trained.append(snapshot)
        if snapshot is not None:
            snapshot.directory.mkdir(parents=True)
            (snapshot.directory / "training_report.json").write_text("{}")
        return {}

    def failing_export(*args, **kwargs):
        raise GateFailed("fp32: macro-F1 0.1000 below the minimum 0.3000")

    monkeypatch.setattr(cli, "train", fake_train)
    monkeypatch.setattr(cli, "export_model", failing_export)
    args = ["prepare", "--repository", str(tmp_path / "repo"), "--data-dir", str(tiny_data)]
    assert main([*args, "--first-snapshot-minutes", "1"]) == cli.EXIT_GATE_FAILED  # the full export too
    assert [s is not None for s in trained] == [True, False]  # the snapshot, then the full training
    assert "training fully first" in caplog.text
    assert cli.read_installed(tmp_path / "repo") is None


def _train_configs(monkeypatch) -> list:
    """The ``TrainConfig`` each ``python -m export train`` hands to a stand-in ``train``, in order."""
    import export.__main__ as cli

    seen: list = []
    monkeypatch.setattr(cli, "train", lambda out, cfg, data_dir: seen.append(cfg) or {"dev_at_tuned": {}})
    return seen


def test_train_passes_the_learner_mix_options_to_its_config(monkeypatch, tmp_path):
    seen = _train_configs(monkeypatch)
    options = ["--learner-repeat", "4", "--signal-negative-weight", "0.1"]
    options += ["--learner-label-weight", "0.75", "--learner-typo-rate", "0.2"]
    options += ["--learner-unused-label-weight", "0.0"]
    assert main(["train", "--output", str(tmp_path / "s"), *options]) == 0
    [cfg] = seen
    assert (cfg.learner_repeat, cfg.signal_negative_weight) == (4, 0.1)
    assert (cfg.learner_label_weight, cfg.learner_typo_rate) == (0.75, 0.2)
    assert cfg.learner_unused_label_weight == 0.0
    assert isinstance(cfg.learner_repeat, int)


def test_train_fits_its_schedule_to_the_budget_only_when_asked(monkeypatch, tmp_path):
    seen = _train_configs(monkeypatch)
    assert main(["train", "--output", str(tmp_path / "s")]) == 0
    assert main(["train", "--output", str(tmp_path / "s"), "--fit-schedule-to-budget"]) == 0
    assert [cfg.fit_schedule_to_budget for cfg in seen] == [False, True]


def test_train_uses_bf16_unless_told_not_to(monkeypatch, tmp_path):
    seen = _train_configs(monkeypatch)
    for flags in ([], ["--bf16"], ["--no-bf16"]):
        assert main(["train", "--output", str(tmp_path / "s"), *flags]) == 0
    assert [cfg.bf16 for cfg in seen] == [True, True, False]


def test_learner_agreement_runs_on_the_readings_alone_and_needs_a_model_otherwise(tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["learner-agreement", "--readings-only", "--out", str(out)]) == 0
    text = (out / "learner_agreement.md").read_text(encoding="utf-8")
    assert "`python -m export learner-agreement --readings-only`" in text and "served model" not in text
    assert main(["learner-agreement", "--repository", str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "no model installed" in caplog.text
