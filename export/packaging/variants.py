"""ONNX export with optimum and the optimized variants served by Triton.

Files (all take ``input_ids``, ``attention_mask`` [+ ``token_type_ids``], give FP32 ``logits``):
- ``model.onnx``       optimum's export: standard ONNX ops only, the input of the TensorRT build.
- ``model.fp32.onnx``  ORT "extended" (O2) fusions: contrib ops both the CPU and CUDA providers run.
  Layout optimizations (the level above) are hardware specific, so they are left to session load.
- ``model.fp16.onnx``  for the GPU: FP16 weights, FP32 I/O, normalization and softmax kept in FP32
  (FP16 LayerNorm overflows on real activations).
- ``model.int8.onnx``  static INT8 (QDQ) for the CPU: every activation scale was fixed by calibration
  on training texts, so a row's answer does not depend on the other rows of its batch. Two exact
  rewrites after ORT's quantizer: unquantized ops (the residual stream) read FP32 tensors, not
  their Q/DQ copies, and each weight MatMul takes its bias inside (MatMulIntegerToFloat).
- ``model.int8-dynamic.onnx``  dynamic INT8, kept for comparison: its activation scale is computed
  over the whole input tensor (the batch, padding included), so it must run one row at a time
  (execution ``per_row``) to give batch-independent answers.

Both INT8 files are made from the raw export: quantizing the fused graph failed in ORT's shape
inference (dynamic), and ORT fuses the quantized graph at load anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contract.names import LOGITS
from export.arrays import Array
from export.packaging.runtime import BATCH, PER_ROW

log = logging.getLogger(__name__)

RAW, FP32, FP16, INT8, INT8_DYNAMIC = "raw", "fp32", "fp16", "int8", "int8_dynamic"
VARIANT_FILES = {
    RAW: "model.onnx",
    FP32: "model.fp32.onnx",
    FP16: "model.fp16.onnx",
    INT8: "model.int8.onnx",
    INT8_DYNAMIC: "model.int8-dynamic.onnx",
}
ONNX_VARIANTS = (FP32, FP16, INT8, INT8_DYNAMIC)
# BATCH: a row's result does not depend on its batch neighbours. PER_ROW: it would, so every row
# runs alone at its own length (dynamic INT8 scales activations over the whole input tensor).
PRECISION = {RAW: "fp32", FP32: "fp32", FP16: "fp16", INT8: "int8", INT8_DYNAMIC: "int8"}
EXECUTION = {RAW: BATCH, FP32: BATCH, FP16: BATCH, INT8: BATCH, INT8_DYNAMIC: PER_ROW}
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

# Static INT8 calibration: a fixed, seeded sample of the TRAIN split (never dev/test, which tune and
# judge the model), each text run alone at its own length, truncated at max_length.
CALIBRATION_TEXTS = 512
CALIBRATION_SEED = 1234
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Groups of weight MatMuls that static INT8 may leave in FP32 (``StaticInt8Settings.fp32_matmuls``).
# ffn_out: the feed-forward output projection, which reads GELU's output: nearly all of its mass is
# >= 0 with a long positive tail, so one 8-bit scale covers it worst of the layer's inputs.
FFN_OUT = "ffn_out"
FP32_MATMUL_GROUPS = (FFN_OUT,)


@dataclass(frozen=True)
class StaticInt8Settings:
    """What static quantization quantizes and how activation ranges are calibrated."""

    op_types: tuple[str, ...] = ("MatMul",)
    calibration_method: str = "percentile"
    percentile: float = 99.99  # percentile calibration only
    # True: only MatMuls with a constant (weight) input; attention's activation x activation
    # MatMuls (QK^T, PV) stay FP32.
    weight_matmuls_only: bool = False
    # False: MatMul outputs stay FP32 (ORT runs MatMulIntegerToFloat); True: they are requantized to
    # 8 bits too (QLinearMatMul), one more rounding per layer.
    quantize_outputs: bool = False
    # True: only the quantized ops read an activation through its QuantizeLinear/DequantizeLinear
    # pair; every other consumer (residual adds, layer norms, Shape) reads the FP32 tensor itself.
    fp32_bypass: bool = True
    # True: DQ(x), DQ(W) -> MatMul -> Add(bias) becomes one com.microsoft MatMulIntegerToFloat with
    # the bias inside (same arithmetic; ORT's QDQ fusion leaves the Add, and BiasGelu, outside).
    fuse_bias: bool = True
    # Activation ranges: True is symmetric around 0 (percentile over |x|, ORT's own default for
    # percentile); False clips each tail at its own percentile (MinMax/entropy: the observed ends).
    symmetric_range: bool = False
    # Weight MatMul groups (FP32_MATMUL_GROUPS) kept in FP32.
    fp32_matmuls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {CALIBRATION_METHODS}, got {self.calibration_method!r}"
            )
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if not self.op_types:
            raise ValueError("op_types must name at least one op type")
        unknown = sorted(set(self.fp32_matmuls) - set(FP32_MATMUL_GROUPS))
        if unknown:
            raise ValueError(f"fp32_matmuls must be among {FP32_MATMUL_GROUPS}, got {unknown}")


# Percentile, not MinMax: student macro-F1 dev/test 0.5528/0.5318 vs FP32 0.5523/0.5297 (MinMax:
# 0.5490/0.5240, misses 0.005); 1.00-1.04x dynamic INT8's texts/s (1-2 threads).
# Each tail at its own percentile (asymmetric), chosen on dev over six students (2026-12-04): mean
# |dlogit| vs FP32 0.157 -> 0.130, dev macro-F1 unchanged, 0.99x/0.98x the texts/s (bs1/bs32). FP32
# FFN outputs (ffn_out) took it to 0.084 but to 0.81x/0.69x the texts/s, and were not adopted.
DEFAULT_STATIC_INT8 = StaticInt8Settings()


@dataclass(frozen=True)
class Calibration:
    """The static INT8 calibration data: the model's fast tokenizer, training texts, max_length."""

    tokenizer: Any
    texts: Sequence[str]  # stored as a tuple
    max_length: int
    settings: StaticInt8Settings = field(default=DEFAULT_STATIC_INT8)

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        if not self.texts:
            raise ValueError("calibration needs at least one text")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")

    @property
    def sha256(self) -> str:
        """Digest of the texts in order: the same sample always gives the same scales."""
        payload = json.dumps(list(self.texts), ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def feeds(self, input_names: Sequence[str]) -> list[dict[str, Array]]:
        """One feed per text, unpadded (batch of one at the text's own length)."""
        out = []
        for text in self.texts:
            enc = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="np")
            out.append({name: np.asarray(enc[name], dtype=np.int64) for name in input_names})
        return out


def calibration_sample(
    train_texts: Sequence[str], n: int = CALIBRATION_TEXTS, seed: int = CALIBRATION_SEED
) -> list[str]:
    """A fixed, seeded sample of training texts for static INT8 calibration."""
    return random.Random(seed).sample(list(train_texts), min(n, len(train_texts)))


@dataclass(frozen=True)
class BuiltVariant:
    path: Path
    precision: str  # "fp32" | "fp16" | "int8"
    execution: str  # BATCH | PER_ROW
    quantization: dict[str, Any] = field(default_factory=dict)  # every answer-changing setting


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
    if outputs != [LOGITS] or not {"input_ids", "attention_mask"} <= set(inputs):
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
    """The best quantization preset for the CPU this runs on."""
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


def _preset(config_name: str, is_static: bool, per_channel: bool) -> tuple[str, Any]:
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if config_name not in INT8_CONFIGS:
        raise ValueError(f"int8 config must be one of {INT8_CONFIGS}, got {config_name!r}")
    name = detect_int8_config() if config_name == "auto" else config_name
    return name, getattr(AutoQuantizationConfig, name)(is_static=is_static, per_channel=per_channel)


def quantize_int8_dynamic(
    export: OnnxExport, config_name: str = "auto", per_channel: bool = True
) -> BuiltVariant:
    """optimum's dynamic quantization (activation scales computed per call over the whole tensor)."""
    from optimum.onnxruntime import ORTQuantizer

    name, qconfig = _preset(config_name, is_static=False, per_channel=per_channel)
    target = export.directory / VARIANT_FILES[INT8_DYNAMIC]
    with tempfile.TemporaryDirectory() as tmp:
        quantizer = ORTQuantizer.from_pretrained(export.directory, file_name=VARIANT_FILES[RAW])
        quantizer.quantize(save_dir=tmp, quantization_config=qconfig, file_suffix="")
        shutil.move(str(Path(tmp) / VARIANT_FILES[RAW]), target)
    log.info("wrote %s (dynamic INT8, %s preset, per_channel=%s)", target, name, per_channel)
    quantization = {
        "method": "dynamic",
        "format": "QOperator",
        "preset": name,
        "op_types": sorted(qconfig.operators_to_quantize),
        "per_channel": per_channel,
        "reduce_range": bool(qconfig.reduce_range),
        "activation_type": qconfig.activations_dtype.name,
        "weight_type": qconfig.weights_dtype.name,
        "weight_symmetric": bool(qconfig.weights_symmetric),
    }
    return BuiltVariant(target, PRECISION[INT8_DYNAMIC], EXECUTION[INT8_DYNAMIC], quantization)


class _TextFeeds:
    """CalibrationDataReader over per-text feeds; ``set_range`` lets ORT collect them one by one."""

    def __init__(self, feeds: list[dict[str, Array]]) -> None:
        self._feeds = feeds
        self._window = iter(feeds)

    def get_next(self) -> dict[str, Array] | None:
        return next(self._window, None)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._window = iter(self._feeds[start_index:end_index])


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMuls with no constant input (attention's QK^T and PV)."""
    constants = _constant_names(model)
    return [
        n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)
    ]


GELU_OPS = ("Gelu", "FastGelu", "BiasGelu")
GELU_MARKERS = ("Erf", "Tanh")  # in a GELU written out as elementary ops (exact, tanh approximation)


def ffn_output_matmuls(model: onnx.ModelProto, depth: int = 3) -> list[str]:
    """Names of the weight MatMuls that read a GELU's output (the feed-forward output projection).

    A GELU is a Gelu-type op, or a Mul with an Erf/Tanh at most ``depth`` ops above it (the exported
    form of ``0.5 * x * (1 + erf(x / sqrt(2)))``), so this finds them by structure, not by name.
    """
    producer = _producers(model)

    def is_gelu(node: onnx.NodeProto | None) -> bool:
        if node is None:
            return False
        if node.op_type in GELU_OPS:
            return True
        if node.op_type != "Mul":
            return False
        frontier = [node]
        for _ in range(depth):
            frontier = [p for n in frontier for i in n.input if (p := producer.get(i)) is not None]
            if any(p.op_type in GELU_MARKERS for p in frontier):
                return True
        return False

    weights = _constant_names(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and is_gelu(producer.get(n.input[0]))
    ]


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node that writes each tensor."""
    return {out: node for node in model.graph.node for out in node.output}


def _constant_names(model: onnx.ModelProto) -> set[str]:
    constants = {i.name for i in model.graph.initializer}
    return constants | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def bypass_qdq_for_unquantized_consumers(
    model: onnx.ModelProto, op_types: Sequence[str], excluded: Sequence[str] = ()
) -> int:
    """Rewire ops not quantized (outside ``op_types`` or in ``excluded``) that read ``DQ(Q(x))`` of
    an activation to read ``x``.

    ORT's QDQ quantizer inserts one Q/DQ pair per quantized tensor and points *every* consumer at
    the DQ output, so the residual stream (Add, SkipLayerNormalization) would carry quantization
    error and ORT would run DQ kernels just to feed them. Quantized ops keep their pair, so the
    int8 kernels are unchanged. Returns the number of inputs rewired.
    """
    graph = model.graph
    producer = _producers(model)
    outputs = {o.name for o in graph.output}
    skip = set(excluded)
    source_of = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        q = producer.get(node.input[0])
        if q is not None and q.op_type == "QuantizeLinear":  # an activation, not a stored weight
            source_of[node.output[0]] = q.input[0]
    rewired = 0
    for node in graph.node:
        quantized = node.op_type in op_types and node.name not in skip
        if quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in source_of:
                node.input[i] = source_of[name]
                rewired += 1
    return rewired


def fuse_matmul_bias(model: onnx.ModelProto) -> int:
    """``Add(MatMul(DQ(xq), DQ(Wq)), bias)`` -> ``MatMulIntegerToFloat(xq, Wq, scales, zps, bias)``.

    The contrib op computes exactly what the QDQ pattern means (int8 x int8 -> int32, scaled to
    FP32, plus bias) with the bias in the same kernel. Only MatMuls whose weight is a stored
    per-tensor or per-column (axis 1) quantized initializer and whose single consumer adds a
    constant 1-D bias are fused. Returns the number fused.
    """
    from onnx import helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = _producers(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def dequantize(name: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    fused: list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]] = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.output[0] in outputs:
            continue
        dq_x, dq_w = dequantize(node.input[0]), dequantize(node.input[1])
        users = consumers.get(node.output[0], [])
        if dq_x is None or dq_w is None or len(users) != 1 or users[0].op_type != "Add":
            continue
        weight = initializers.get(dq_w.input[0])
        axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
        if weight is None or len(weight.dims) != 2 or axis not in (1, -1):
            continue
        add = users[0]
        bias_name = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        while bias_name in producer and producer[bias_name].op_type == "Identity":  # shared constants
            bias_name = producer[bias_name].input[0]
        bias = initializers.get(bias_name)
        if bias is None or list(bias.dims) != [weight.dims[1]]:
            continue
        fused.append(
            (
                node,
                add,
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [
                        dq_x.input[0],
                        dq_w.input[0],
                        dq_x.input[1],
                        dq_w.input[1],
                        dq_x.input[2] if len(dq_x.input) > 2 else "",
                        dq_w.input[2] if len(dq_w.input) > 2 else "",
                        bias_name,
                    ],
                    [add.output[0]],
                    name=node.name + "_bias_fused",
                    domain="com.microsoft",
                ),
            )
        )
    if not fused:
        return 0
    for matmul, add, replacement in fused:
        index = list(graph.node).index(add)
        graph.node.insert(index, replacement)
        graph.node.remove(matmul)
        graph.node.remove(add)
    # Dequantize nodes nothing reads any more (the weights' and some activations').
    read = {name for node in graph.node for name in node.input} | outputs
    for node in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in read]:
        graph.node.remove(node)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(fused)


def quantize_int8_static(
    export: OnnxExport,
    calibration: Calibration,
    config_name: str = "auto",
    per_channel: bool = True,
) -> BuiltVariant:
    """Static QDQ quantization: weight and activation scales fixed at build time by calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    settings = calibration.settings
    name, qconfig = _preset(config_name, is_static=True, per_channel=per_channel)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[settings.calibration_method]
    extra_options: dict[str, Any] = {
        "ActivationSymmetric": bool(qconfig.activations_symmetric),
        "WeightSymmetric": bool(qconfig.weights_symmetric),
        "OpTypesToExcludeOutputQuantization": [] if settings.quantize_outputs else list(settings.op_types),
        # One text per collection step: texts differ in length, and ORT's histogram collector
        # cannot stack tensors of different shapes; it also bounds calibration memory.
        "CalibStridedMinMax": 1,
    }
    if settings.calibration_method == "percentile":
        extra_options["CalibPercentile"] = settings.percentile
    extra_options["CalibTensorRangeSymmetric"] = settings.symmetric_range  # pinned, not ORT's default
    target = export.directory / VARIANT_FILES[INT8]
    source = export.directory / VARIANT_FILES[RAW]
    # ORT's MatMulConstBOnly option is honoured by the QOperator quantizer only: exclude by name.
    graph = onnx.load(str(source), load_external_data=False)
    exclude = activation_matmuls(graph) if settings.weight_matmuls_only else []
    kept_fp32: list[str] = []
    if FFN_OUT in settings.fp32_matmuls:
        kept_fp32 = ffn_output_matmuls(graph)
        if not kept_fp32:
            raise ValueError(f"fp32_matmuls={settings.fp32_matmuls}: no MatMul reads a GELU in {source}")
    exclude = [*exclude, *kept_fp32]
    reader = _TextFeeds(calibration.feeds(export.input_names))
    # No quant_pre_process: its symbolic shape inference fails on optimum's export ("Incomplete
    # symbolic shape inference"), and ORT applies its graph optimizations at session load anyway.
    quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(settings.op_types),
        per_channel=per_channel,
        reduce_range=bool(qconfig.reduce_range),
        activation_type=qconfig.activations_dtype,
        weight_type=qconfig.weights_dtype,
        calibrate_method=method,
        nodes_to_exclude=exclude,
        extra_options=extra_options,
    )
    if settings.fp32_bypass or settings.fuse_bias:
        model = onnx.load(str(target))
        if settings.fp32_bypass:
            rewired = bypass_qdq_for_unquantized_consumers(model, settings.op_types, exclude)
            log.debug("%d inputs of unquantized ops now read FP32 tensors", rewired)
        if settings.fuse_bias:
            log.debug("%d MatMul + bias pairs fused", fuse_matmul_bias(model))
        onnx.save(model, str(target))
    quantization = {
        "method": "static",
        "format": "QDQ",
        "preset": name,
        "op_types": sorted(settings.op_types),
        "weight_matmuls_only": settings.weight_matmuls_only,
        "quantize_outputs": settings.quantize_outputs,
        "fp32_bypass": settings.fp32_bypass,
        "fuse_bias": settings.fuse_bias,
        "per_channel": per_channel,
        "reduce_range": bool(qconfig.reduce_range),
        "activation_type": qconfig.activations_dtype.name,
        "weight_type": qconfig.weights_dtype.name,
        "activation_symmetric": bool(qconfig.activations_symmetric),
        "weight_symmetric": bool(qconfig.weights_symmetric),
        "calibration_method": settings.calibration_method,
        "calibration_percentile": (
            settings.percentile if settings.calibration_method == "percentile" else None
        ),
        "calibration_symmetric_range": settings.symmetric_range,
        "fp32_matmuls": sorted(settings.fp32_matmuls),
        "fp32_matmul_count": len(kept_fp32),
        "calibration_texts": len(calibration.texts),
        "calibration_sha256": calibration.sha256,
        "calibration_max_length": calibration.max_length,
    }
    log.info(
        "wrote %s (static INT8 QDQ, %s preset, %s, %s calibration on %d texts)",
        target,
        name,
        "+".join(settings.op_types),
        settings.calibration_method,
        len(calibration.texts),
    )
    return BuiltVariant(target, PRECISION[INT8], EXECUTION[INT8], quantization)


def build_variants(
    export: OnnxExport,
    variants: tuple[str, ...] = ONNX_VARIANTS,
    int8_config: str = "auto",
    int8_per_channel: bool = True,
    calibration: Calibration | None = None,
) -> dict[str, BuiltVariant]:
    """Every requested variant plus RAW; FP16 is derived from the optimized FP32 graph."""
    unknown = set(variants) - set(ONNX_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {ONNX_VARIANTS}")
    if INT8 in variants and calibration is None:  # before minutes of work, not after
        raise ValueError("static INT8 needs calibration data (a Calibration with training texts)")
    if INT8 in variants or INT8_DYNAMIC in variants:
        _preset(int8_config, is_static=True, per_channel=int8_per_channel)  # validate the name early

    def plain(name: str, path: Path) -> BuiltVariant:
        return BuiltVariant(path, PRECISION[name], EXECUTION[name], {})

    built = {RAW: plain(RAW, export.directory / VARIANT_FILES[RAW])}
    if FP32 in variants or FP16 in variants:
        built[FP32] = plain(FP32, optimize_fp32(export))
    if FP16 in variants:
        built[FP16] = plain(FP16, convert_fp16(export))
    if INT8 in variants:
        assert calibration is not None
        built[INT8] = quantize_int8_static(export, calibration, int8_config, int8_per_channel)
    if INT8_DYNAMIC in variants:
        built[INT8_DYNAMIC] = quantize_int8_dynamic(export, int8_config, int8_per_channel)
    for variant in built.values():  # the manifest hashes these settings: fail here, not there
        json.dumps(variant.quantization, allow_nan=False)
    return {k: v for k, v in built.items() if k == RAW or k in variants}
