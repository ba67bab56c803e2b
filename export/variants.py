"""ONNX export with optimum and the optimized variants served by Triton.

Files (all take ``input_ids``, ``attention_mask`` [+ ``token_type_ids``], give FP32 ``logits``):
- ``model.onnx``       optimum's export: standard ONNX ops only, the input of the TensorRT build.
- ``model.fp32.onnx``  ORT "extended" (O2) fusions: contrib ops both the CPU and CUDA providers run.
  Layout optimizations (the level above) are hardware specific, so they are left to session load.
- ``model.fp16.onnx``  for the GPU: FP16 weights, FP32 I/O, normalization and softmax kept in FP32
  (FP16 LayerNorm overflows on real activations).
- ``model.int8.onnx``  dynamic INT8 quantization for the CPU, made from the raw export: quantizing
  the fused graph fails in ORT's shape inference, and ORT fuses the quantized graph at load anyway.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

RAW = "raw"
FP32 = "fp32"
FP16 = "fp16"
INT8 = "int8"
VARIANT_FILES = {RAW: "model.onnx", FP32: "model.fp32.onnx", FP16: "model.fp16.onnx", INT8: "model.int8.onnx"}
ONNX_VARIANTS = (FP32, FP16, INT8)
INT8_CONFIGS = ("auto", "avx2", "avx512", "avx512_vnni", "arm64")
# Ops whose FP16 form loses range or precision in transformers; they stay FP32 in the FP16 model.
FP16_KEEP_FP32_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Softmax",
)


@dataclass(frozen=True)
class OnnxExport:
    directory: Path
    input_names: list[str]
    output_names: list[str]
    opset: int


def graph_io(path: Path) -> tuple[list[str], list[str]]:
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in init], [o.name for o in model.graph.output]


def export_onnx(model_ref: str, out_dir: Path, opset: int | None = None) -> OnnxExport:
    """optimum export (text-classification): dynamic batch and sequence axes, output ``logits``."""
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX with optimum", model_ref)
    main_export(model_ref, output=out_dir, task="text-classification", opset=opset, do_validation=True)
    path = out_dir / VARIANT_FILES[RAW]
    inputs, outputs = graph_io(path)
    if outputs != ["logits"] or not {"input_ids", "attention_mask"} <= set(inputs):
        raise RuntimeError(f"unexpected ONNX signature {inputs} -> {outputs} for {model_ref}")
    version = next(
        o.version
        for o in onnx.load(str(path), load_external_data=False).opset_import
        if o.domain in ("", "ai.onnx")
    )
    return OnnxExport(out_dir, inputs, outputs, version)


def optimize_fp32(export: OnnxExport) -> Path:
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    target = export.directory / VARIANT_FILES[FP32]
    with tempfile.TemporaryDirectory() as tmp:
        optimizer = ORTOptimizer.from_pretrained(export.directory, file_names=[VARIANT_FILES[RAW]])
        optimizer.optimize(save_dir=tmp, optimization_config=AutoOptimizationConfig.O2(), file_suffix="")
        shutil.move(str(Path(tmp) / VARIANT_FILES[RAW]), target)
    log.info("wrote %s (ORT O2 fusions)", target)
    return target


def convert_fp16(export: OnnxExport) -> Path:
    from onnxruntime.transformers.onnx_model import OnnxModel

    source = export.directory / VARIANT_FILES[FP32]
    target = export.directory / VARIANT_FILES[FP16]
    model = OnnxModel(onnx.load(str(source)))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=list(FP16_KEEP_FP32_OPS))
    model.topological_sort()
    onnx.save(model.model, str(target))
    log.info("wrote %s (FP16, normalization/softmax in FP32)", target)
    return target


def detect_int8_config() -> str:
    """The best dynamic-quantization preset for the CPU this runs on."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def quantize_int8(export: OnnxExport, config_name: str = "auto", per_channel: bool = True) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if config_name not in INT8_CONFIGS:
        raise ValueError(f"int8 config must be one of {INT8_CONFIGS}, got {config_name!r}")
    name = detect_int8_config() if config_name == "auto" else config_name
    factory = getattr(AutoQuantizationConfig, name)
    qconfig = factory(is_static=False, per_channel=per_channel)
    target = export.directory / VARIANT_FILES[INT8]
    with tempfile.TemporaryDirectory() as tmp:
        quantizer = ORTQuantizer.from_pretrained(export.directory, file_name=VARIANT_FILES[RAW])
        quantizer.quantize(save_dir=tmp, quantization_config=qconfig, file_suffix="")
        shutil.move(str(Path(tmp) / VARIANT_FILES[RAW]), target)
    log.info("wrote %s (dynamic INT8, %s preset, per_channel=%s)", target, name, per_channel)
    return target


def build_variants(
    export: OnnxExport,
    variants: tuple[str, ...] = ONNX_VARIANTS,
    int8_config: str = "auto",
    int8_per_channel: bool = True,
) -> dict[str, Path]:
    """Every requested variant; FP16 is derived from the optimized FP32 graph."""
    unknown = set(variants) - set(ONNX_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {ONNX_VARIANTS}")
    paths = {RAW: export.directory / VARIANT_FILES[RAW]}
    if FP32 in variants or FP16 in variants:
        paths[FP32] = optimize_fp32(export)
    if FP16 in variants:
        paths[FP16] = convert_fp16(export)
    if INT8 in variants:
        paths[INT8] = quantize_int8(export, int8_config, int8_per_channel)
    return {k: v for k, v in paths.items() if k == RAW or k in variants}
