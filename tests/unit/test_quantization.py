"""Static INT8 (QDQ) and per-row dynamic INT8: a row's answer must not depend on its batch neighbours."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from export.bench import batch_invariance, invariance_markdown, longest_texts
from export.packaging.runtime import BATCH, PER_ROW, Classifier, load_tokenizer, onnx_classifier
from export.packaging.variants import (
    DEFAULT_STATIC_INT8,
    INT8,
    INT8_DYNAMIC,
    RAW,
    VARIANT_FILES,
    BuiltVariant,
    Calibration,
    OnnxExport,
    StaticInt8Settings,
    build_variants,
    calibration_sample,
    export_onnx,
    ffn_output_matmuls,
    quantize_int8_static,
)
from export.training.data import load_split

MAX_LENGTH = 64
INVARIANT = 1e-6  # max |Δlogit| alone vs in a padded batch


@pytest.fixture(scope="module")
def texts(tiny_data: Path) -> dict[str, list[str]]:
    return {split: load_split(split, tiny_data).texts for split in ("train", "dev")}


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, texts: dict[str, list[str]]
) -> tuple[dict[str, BuiltVariant], object, list[str]]:
    export = export_onnx(str(tiny_model), tmp_path_factory.mktemp("quant"))
    tokenizer = load_tokenizer(export.directory)
    calibration = Calibration(tokenizer, calibration_sample(texts["train"], 64), MAX_LENGTH)
    return (
        build_variants(export, (INT8, INT8_DYNAMIC), calibration=calibration),
        tokenizer,
        list(calibration.texts),
    )


def companions(tokenizer: object, dev: list[str]) -> list[str]:
    return longest_texts(tokenizer, dev, 7, MAX_LENGTH)


def max_row_drift(clf: Classifier, texts: list[str], long_texts: list[str]) -> float:
    """Max |Δlogit| of each text alone vs as row 0 of a batch padded to the long texts."""
    worst = 0.0
    for text in texts:
        alone = clf.logits([text])[0]
        batched = clf.logits([text, *long_texts])[0]
        worst = max(worst, float(np.abs(alone - batched).max()))
    return worst


def test_static_int8_is_a_qdq_graph_with_fixed_scales(built):
    variants, _, _ = built
    int8 = variants[INT8]
    assert int8.path.name == VARIANT_FILES[INT8] and int8.path.is_file()
    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "DynamicQuantizeLinear" not in ops  # no scale computed from the batch at run time
    assert (int8.precision, int8.execution) == ("int8", BATCH)
    assert variants[RAW].execution == BATCH and variants[RAW].precision == "fp32"
    assert (variants[INT8_DYNAMIC].precision, variants[INT8_DYNAMIC].execution) == ("int8", PER_ROW)
    assert variants[INT8_DYNAMIC].path.name == VARIANT_FILES[INT8_DYNAMIC]


def test_static_int8_rows_do_not_depend_on_the_batch(built, texts):
    variants, tokenizer, _ = built
    clf = onnx_classifier(variants[INT8].path, tokenizer, MAX_LENGTH, execution=variants[INT8].execution)
    long_texts = companions(tokenizer, texts["dev"])
    assert max_row_drift(clf, texts["dev"][:40], long_texts) <= INVARIANT


def test_dynamic_int8_depends_on_the_batch_unless_run_per_row(built, texts):
    """The reason for per_row: batched, dynamic INT8 answers change with the neighbours."""
    variants, tokenizer, _ = built
    path = variants[INT8_DYNAMIC].path
    long_texts = companions(tokenizer, texts["dev"])
    batched = onnx_classifier(path, tokenizer, MAX_LENGTH, execution=BATCH)
    assert max_row_drift(batched, texts["dev"][:40], long_texts) > 1e-3
    per_row = onnx_classifier(path, tokenizer, MAX_LENGTH, execution=variants[INT8_DYNAMIC].execution)
    assert max_row_drift(per_row, texts["dev"][:40], long_texts) <= INVARIANT


def test_per_row_predict_is_independent_of_batch_size_and_order(built, texts):
    variants, tokenizer, _ = built
    clf = onnx_classifier(
        variants[INT8_DYNAMIC].path, tokenizer, MAX_LENGTH, execution=variants[INT8_DYNAMIC].execution
    )
    sample = texts["dev"][:60]
    one = clf.predict(sample, batch_size=1)
    for batch_size in (8, 32):
        assert np.abs(clf.predict(sample, batch_size=batch_size) - one).max() <= INVARIANT
    mixed = companions(tokenizer, texts["dev"]) + sample
    assert np.abs(clf.predict(mixed, batch_size=16)[7:] - one).max() <= INVARIANT


def test_bench_invariance_reports_the_dynamic_batch_drift(built, texts):
    variants, tokenizer, _ = built
    long_texts = companions(tokenizer, texts["dev"])
    sample = [t for t in texts["dev"] if t not in long_texts][:30]
    static = batch_invariance(onnx_classifier(variants[INT8].path, tokenizer, MAX_LENGTH), sample, long_texts)
    assert static["within_target"] and static["texts"] == 30 and static["companions"] == 7
    dynamic = batch_invariance(
        onnx_classifier(variants[INT8_DYNAMIC].path, tokenizer, MAX_LENGTH, execution=BATCH),
        sample,
        long_texts,
    )
    assert not dynamic["within_target"] and dynamic["execution"] == BATCH


def test_quantization_settings_are_recorded(built):
    variants, _, calibration_texts = built
    q = variants[INT8].quantization
    assert json.loads(json.dumps(q, allow_nan=False)) == q
    assert q["method"] == "static" and q["format"] == "QDQ"
    assert (
        q["op_types"]
        and q["per_channel"] is True
        and q["preset"] in ("avx2", "avx512", "avx512_vnni", "arm64")
    )
    assert q["calibration_method"] in ("minmax", "percentile", "entropy")
    assert q["calibration_texts"] == len(calibration_texts) == 64
    digest = hashlib.sha256(
        json.dumps(calibration_texts, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()
    assert q["calibration_sha256"] == digest
    d = variants[INT8_DYNAMIC].quantization
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["method"] == "dynamic" and d["per_channel"] is True and "MatMul" in d["op_types"]
    assert variants[RAW].quantization == {}


def test_graph_rewrites_keep_the_arithmetic(built, texts, tmp_path):
    """FP32 bypass of the residual stream and the bias fused into MatMulIntegerToFloat: same kernels'
    math as ORT's own QDQ fusion (no rewrite), only fewer nodes."""
    variants, tokenizer, calibration_texts = built
    # The tiny model's biases are all zero (BERT init): give them values, or a dropped bias would pass.
    model = onnx.load(str(variants[RAW].path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.name.endswith("bias") and len(init.dims) == 1:
            values = rng.normal(0, 0.5, size=init.dims[0]).astype(np.float32)
            init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(model, str(tmp_path / VARIANT_FILES[RAW]))
    export = OnnxExport(tmp_path, ["input_ids", "attention_mask", "token_type_ids"], ["logits"], 17)
    settings = StaticInt8Settings()
    plain = dataclasses.replace(settings, fp32_bypass=False, fuse_bias=False)
    bypass_only = dataclasses.replace(settings, fuse_bias=False)
    sample = texts["dev"][:40]
    logits, ops = {}, {}
    for name, s in (("plain", plain), ("bypass", bypass_only), ("default", settings)):
        b = quantize_int8_static(export, Calibration(tokenizer, calibration_texts, MAX_LENGTH, s))
        logits[name] = onnx_classifier(b.path, tokenizer, MAX_LENGTH).predict(sample, batch_size=8)
        ops[name] = [n.op_type for n in onnx.load(str(b.path)).graph.node]
    assert ops["default"].count("MatMulIntegerToFloat") == 2 * 6  # 2 layers x (Q, K, V, out, FFN in/out)
    assert ops["default"].count("DequantizeLinear") < ops["bypass"].count("DequantizeLinear")
    assert np.abs(logits["default"] - logits["bypass"]).max() <= 1e-4
    # The bypass changes answers on purpose (the residual stream is no longer rounded to 8 bits), but
    # only by quantization noise.
    assert 0 < np.abs(logits["bypass"] - logits["plain"]).max() < 0.5


def _activation_ranges(path: Path) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of each activation's QuantizeLinear, by the tensor it quantizes."""
    model = onnx.load(str(path))
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.input[0]: (float(init[n.input[1]].ravel()[0]), int(init[n.input[2]].ravel()[0]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in init
    }


def test_ffn_outputs_can_stay_fp32_and_ranges_can_be_asymmetric(built, tmp_path):
    variants, tokenizer, calibration_texts = built
    raw = onnx.load(str(variants[RAW].path))
    found = ffn_output_matmuls(raw)
    # Found by structure (a MatMul reading GELU); the names only confirm it: one per layer.
    assert len(found) == 2 and all(n.endswith("/output/dense/MatMul") and "attention" not in n for n in found)
    (tmp_path / VARIANT_FILES[RAW]).symlink_to(variants[RAW].path)
    export = OnnxExport(tmp_path, ["input_ids", "attention_mask", "token_type_ids"], ["logits"], 17)
    # The other range rule than the default's, and the FFN outputs in FP32.
    symmetric = not DEFAULT_STATIC_INT8.symmetric_range
    settings = StaticInt8Settings(symmetric_range=symmetric, fp32_matmuls=("ffn_out",))
    b = quantize_int8_static(export, Calibration(tokenizer, calibration_texts, MAX_LENGTH, settings))
    nodes = onnx.load(str(b.path)).graph.node
    assert [n.op_type for n in nodes].count("MatMulIntegerToFloat") == 2 * 5  # FFN out left out
    kept = [n for n in nodes if n.name in found]
    assert [n.op_type for n in kept] == ["MatMul", "MatMul"]
    producers = {o: n.op_type for n in nodes for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for n in kept for i in n.input)  # FP32 inputs
    q = b.quantization
    assert (q["fp32_matmuls"], q["fp32_matmul_count"], q["calibration_symmetric_range"]) == (
        ["ffn_out"],
        2,
        symmetric,
    )
    # Each tail clipped at its own percentile, or both at that of |x|: other ranges for the same tensors.
    default, other = _activation_ranges(variants[INT8].path), _activation_ranges(b.path)
    common = default.keys() & other.keys()
    assert len(common) >= 10  # 7 a layer: the inputs of QKV, QK^T (2), PV (2), out, FFN in
    assert sum(default[t] != other[t] for t in common) > len(common) / 2
    assert variants[INT8].quantization["fp32_matmuls"] == []


def test_a_gelu_op_is_found_and_other_activations_are_not():
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Gelu", ["x"], ["g"]),
            helper.make_node("MatMul", ["g", "w"], ["a"], name="after_gelu"),
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["b"], name="after_relu"),
            helper.make_node("MatMul", ["g", "r"], ["c"], name="no_weight"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "abc"],
        [w],
    )
    assert ffn_output_matmuls(helper.make_model(graph)) == ["after_gelu"]
    with pytest.raises(ValueError, match="fp32_matmuls"):
        StaticInt8Settings(fp32_matmuls=("attention",))


def test_int8_without_calibration_raises_before_any_work(tmp_path):
    export = OnnxExport(tmp_path, ["input_ids", "attention_mask"], ["logits"], 17)
    with pytest.raises(ValueError, match="calibration"):
        build_variants(export, (INT8,))
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown variant"):
        build_variants(export, ("int4",))


def test_calibration_sample_and_settings_are_checked(texts):
    train = texts["train"]
    assert calibration_sample(train, 20) == calibration_sample(list(train), 20)
    assert len(calibration_sample(train, 10_000)) == len(train)
    with pytest.raises(ValueError):
        Calibration(object(), [], MAX_LENGTH)
    with pytest.raises(ValueError):
        StaticInt8Settings(calibration_method="kl")
    with pytest.raises(ValueError):
        StaticInt8Settings(percentile=0.0)


def test_bench_report_has_the_invariance_table(built, texts):
    variants, tokenizer, _ = built
    long_texts = companions(tokenizer, texts["dev"])
    sample = [t for t in texts["dev"] if t not in long_texts][:10]
    rows = {
        "int8": batch_invariance(
            onnx_classifier(variants[INT8].path, tokenizer, MAX_LENGTH), sample, long_texts
        ),
        "int8_dynamic (batch execution, not served)": batch_invariance(
            onnx_classifier(variants[INT8_DYNAMIC].path, tokenizer, MAX_LENGTH), sample, long_texts
        ),
    }
    lines = invariance_markdown(rows)
    assert lines[0] == "## batch invariance: max |Δp| alone vs in a batch with 7 long texts"
    assert "Target: max |Δp| ≤ 1e-05." in lines[2]
    table = [line for line in lines if line.startswith("| int8")]
    assert len(table) == 2 and table[0].endswith("| yes |") and table[1].endswith("| no |")
