"""The ``python -m export`` CLI: help, exit codes, build -> install -> tensorrt command, cached prepare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from export.__main__ import EXIT_BAD_INPUT, EXIT_GATE_FAILED, main
from export.pipeline import read_installed

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


def _build_and_install(tmp_path: Path, model: Path, data: Path, *variants: str) -> Path:
    out, repo = tmp_path / "export", tmp_path / "repo"
    args = ["build", str(model), "--out", str(out), "--data-dir", str(data), "--variants", *variants, *LOOSE]
    assert main(args) == 0
    assert main(["install", str(out), "--repository", str(repo)]) == 0
    return repo


def test_build_install_tensorrt_dry_run(tmp_path, tiny_model, tiny_data, capsys):
    repo = _build_and_install(tmp_path, tiny_model, tiny_data, "fp32", "int8")
    installed = read_installed(repo)
    assert installed is not None and set(installed.variants) == {"raw", "fp32", "int8"}

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
    repo = _build_and_install(tmp_path, tiny_model, tiny_data, "int8")
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


def test_calibration_flag_and_gate_exit_code(tmp_path, tiny_model, tiny_data):
    import json

    from export.labels import read_labels

    base = ["build", str(tiny_model), "--data-dir", str(tiny_data), "--variants", "fp32", *LOOSE]
    assert main([*base, "--out", str(tmp_path / "global"), "--calibration", "global"]) == 0
    labels = read_labels(tmp_path / "global" / "labels.json")
    assert labels.calibration is not None and labels.calibration["method"] == "global"
    assert len(set(labels.temperatures)) == 1 and labels.temperatures[0] != 1.0
    # argparse keeps the last value: a negative allowance fails even an unchanged macro-F1.
    failing = [*base, "--out", str(tmp_path / "failed"), "--max-calibration-f1-drop", "-1"]
    assert main(failing) == EXIT_GATE_FAILED
    assert json.loads((tmp_path / "failed" / "reports" / "calibration.json").read_text())["passed"] is False
    assert not (tmp_path / "failed" / "labels.json").exists()
    with pytest.raises(SystemExit):
        main([*base, "--calibration", "isotonic"])


def test_bad_inputs_exit_code(tmp_path, tiny_model, caplog):
    assert main(["build", str(tiny_model), "--out", str(tmp_path), "--data-dir", str(tmp_path / "nope")]) == (
        EXIT_BAD_INPUT
    )
    assert "emotions.txt: missing" in caplog.text
    with pytest.raises(SystemExit):
        main(["build", str(tiny_model), "--parity-tolerance", "bogus"])


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
