"""TensorRT FP16 plan for the GPU deployment (TensorRT 10; not installable on the CPU dev box).

Built from optimum's raw export (standard ONNX ops: the ORT-fused graphs use contrib ops TensorRT
cannot parse), one optimization profile covering batch 1..max and sequence 1..max length.
Normalization layers are pinned to FP32, as in the ONNX FP16 variant. A plan only runs on the GPU
model and TensorRT version that built it, so it is built on the serving host (the compose
``trt-build`` service), with a timing cache so a rebuild takes seconds.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import onnx

from export.spec import TensorRTProfile

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"
NORMALIZATION_OPS = ("LayerNormalization",)


class TensorRTUnavailable(RuntimeError):
    """Neither ``trtexec`` nor the ``tensorrt`` Python package is present (e.g. on a CPU-only machine)."""


def normalization_layers(onnx_path: Path) -> list[str]:
    """ONNX node names of normalization ops; TensorRT names the parsed layers after them."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in NORMALIZATION_OPS and n.name]


def trtexec_command(
    onnx_path: Path,
    plan_path: Path,
    input_names: list[str],
    profile: TensorRTProfile,
    workspace_mib: int = 4096,
    timing_cache: Path | None = None,
    fp32_layers: list[str] | None = None,
    trtexec: str = "trtexec",
) -> list[str]:
    shapes = profile.shapes(input_names)
    cmd = [
        trtexec,
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        "--fp16",
        f"--minShapes={shapes['min']}",
        f"--optShapes={shapes['opt']}",
        f"--maxShapes={shapes['max']}",
        f"--memPoolSize=workspace:{workspace_mib}",
        "--skipInference",
    ]
    if fp32_layers:
        cmd += [
            "--precisionConstraints=obey",
            "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in fp32_layers),
        ]
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def build_with_python_api(
    onnx_path: Path,
    plan_path: Path,
    input_names: list[str],
    profile: TensorRTProfile,
    workspace_mib: int = 4096,
) -> None:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable("the tensorrt Python package is not installed") from exc

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)
    opt = builder.create_optimization_profile()
    for name in input_names:
        opt.set_shape(
            name,
            (profile.min_batch, profile.min_seq),
            (profile.opt_batch, profile.opt_seq),
            (profile.max_batch, profile.max_seq),
        )
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    input_names: list[str],
    profile: TensorRTProfile,
    workspace_mib: int = 4096,
    timing_cache: Path | None = None,
    dry_run: bool = False,
) -> list[str] | None:
    """Build with ``trtexec`` when on PATH, else the Python API. ``dry_run`` returns the command only."""
    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    cmd = trtexec_command(
        onnx_path,
        plan_path,
        input_names,
        profile,
        workspace_mib,
        timing_cache,
        normalization_layers(onnx_path),
        trtexec=trtexec,
    )
    if dry_run:
        return cmd
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    if Path(trtexec).is_file():
        log.info("building TensorRT plan: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
    else:
        log.info("trtexec not found; building with the TensorRT Python API")
        build_with_python_api(onnx_path, plan_path, input_names, profile, workspace_mib)
    log.info("wrote %s", plan_path)
    return cmd
