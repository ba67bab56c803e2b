"""Where the embedded server runs the classifier (server.device): auto, cpu, gpu."""

from __future__ import annotations

import pytest

from server.device import CPU_CONFIG, GPU_CONFIG, DeviceError, place

VARIANTS = {"fp32", "int8", "torch_fp16"}


def gpus(n: int):
    calls: list[int] = []

    def count() -> int:
        calls.append(n)
        return n

    count.calls = calls  # type: ignore[attr-defined]
    return count


def test_auto_takes_the_gpu_when_one_is_visible_and_the_model_has_the_variant():
    placed = place("auto", VARIANTS, "torch_fp16", gpus(1))
    assert placed.config_name == GPU_CONFIG and "1 visible" in placed.description
    assert place("auto", VARIANTS, "torch_fp16", gpus(0)).config_name == CPU_CONFIG
    no_variant = gpus(1)
    placed = place("auto", {"fp32", "int8"}, "torch_fp16", no_variant)
    assert placed.config_name == CPU_CONFIG and "no torch_fp16 variant" in placed.description
    assert no_variant.calls == []  # no torch probe when the model cannot run there anyway


def test_cpu_never_probes_and_gpu_refuses_what_cannot_run():
    probe = gpus(4)
    assert place("cpu", VARIANTS, "torch_fp16", probe).config_name == CPU_CONFIG and probe.calls == []
    assert place("gpu", VARIANTS, "torch_fp16", gpus(2)).config_name == GPU_CONFIG
    with pytest.raises(DeviceError, match="no CUDA device"):
        place("gpu", VARIANTS, "torch_fp16", gpus(0))
    with pytest.raises(DeviceError, match="no torch_fp16 variant"):
        place("gpu", {"int8"}, "torch_fp16", gpus(1))
    with pytest.raises(DeviceError, match="one of auto, cpu, gpu"):
        place("tpu", VARIANTS, "torch_fp16", gpus(1))


def test_without_nvidia_smi_no_gpu_is_seen(monkeypatch):
    import server.device as device

    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    assert device.cuda_devices() == 0
