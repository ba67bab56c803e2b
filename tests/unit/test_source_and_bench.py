import pytest

from export import source
from export.bench import summarize
from export.pipeline import model_slug, parity_sample


def test_explicit_model_wins(tmp_path):
    choice = source.choose_model(str(tmp_path))
    assert choice.kind == "given" and "local directory" in choice.reason
    assert source.choose_model("org/some-model").reason.endswith("(hub id)")


def test_offline_falls_back_to_the_student(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not source.hub_reachable("SamLowe/roberta-base-go_emotions")
    choice = source.choose_model(None)
    assert choice.kind == "student"
    assert choice.ref == str(source.STUDENT_DIR)
    assert "did not answer" in choice.reason


def test_unreachable_endpoint_is_not_reachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    assert not source.hub_reachable("x/y", timeout=1.0)


def test_hub_answer_selects_hub_model(monkeypatch):
    monkeypatch.setattr(source, "hub_reachable", lambda model_id, timeout: True)
    choice = source.choose_model(None)
    assert choice.kind == "hub" and choice.ref == source.DEFAULT_HUB_MODEL


def test_model_slug():
    assert model_slug("SamLowe/roberta-base-go_emotions") == "SamLowe--roberta-base-go_emotions"
    assert model_slug("/abs/dir/") == "abs--dir"


def test_parity_sample_is_fixed():
    texts = [f"t{i}" for i in range(1000)]
    assert parity_sample(texts) == parity_sample(list(texts))
    assert len(parity_sample(texts)) == 256
    assert parity_sample(texts[:10]) == parity_sample(texts[:10]) and len(parity_sample(texts[:10])) == 10


def test_bench_summary_ratios_per_round():
    rounds = {
        "torch": [
            {"bs1_p50_ms": 6.0, "bs1_p95_ms": 7.0, "bs32_texts_per_s": 400.0},
            {"bs1_p50_ms": 8.0, "bs1_p95_ms": 9.0, "bs32_texts_per_s": 300.0},
        ],
        "int8": [
            {"bs1_p50_ms": 2.0, "bs1_p95_ms": 3.0, "bs32_texts_per_s": 1200.0},
            {"bs1_p50_ms": 2.0, "bs1_p95_ms": 3.0, "bs32_texts_per_s": 1200.0},
        ],
    }
    out = summarize(rounds, baseline="torch")
    int8 = out["paths"]["int8"]
    assert int8["bs1_speedup_range"] == [3.0, 4.0]
    assert int8["bs1_speedup_vs_baseline"] == pytest.approx(3.5)
    assert int8["bs32_speedup_range"] == [3.0, 4.0]
    assert out["paths"]["torch"]["bs32_speedup_vs_baseline"] == 1.0
