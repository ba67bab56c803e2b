from pathlib import Path

import pytest

from contract.spec import TensorRTProfile
from export.packaging import tensorrt


def test_trtexec_command_has_profiles_precision_and_cache():
    build = tensorrt.PlanBuild(
        Path("m.onnx"),
        Path("m.plan"),
        ["input_ids", "attention_mask"],
        TensorRTProfile(opt_batch=4, max_batch=16, opt_seq=24, max_seq=64),
        workspace_mib=2048,
        timing_cache=Path("cache.bin"),
    )
    cmd = tensorrt.trtexec_command(build, fp32_layers=["/ln1", "/ln2"])
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan"]
    assert "--fp16" in cmd
    assert "--minShapes=input_ids:1x1,attention_mask:1x1" in cmd
    assert "--optShapes=input_ids:4x24,attention_mask:4x24" in cmd
    assert "--maxShapes=input_ids:16x64,attention_mask:16x64" in cmd
    assert "--memPoolSize=workspace:2048" in cmd
    assert "--layerPrecisions=/ln1:fp32,/ln2:fp32" in cmd
    assert "--precisionConstraints=obey" in cmd
    assert "--timingCacheFile=cache.bin" in cmd


def test_no_precision_flags_without_normalization_layers():
    cmd = tensorrt.trtexec_command(
        tensorrt.PlanBuild(Path("m.onnx"), Path("m.plan"), ["input_ids"], TensorRTProfile())
    )
    assert not any(
        c.startswith(("--layerPrecisions", "--precisionConstraints", "--timingCache")) for c in cmd
    )


def test_python_api_missing_raises_unavailable(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("no tensorrt")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(tensorrt.TensorRTUnavailable):
        tensorrt.build_with_python_api(
            tensorrt.PlanBuild(Path("m.onnx"), Path("m.plan"), ["input_ids"], TensorRTProfile())
        )
