"""The generated Triton configs: committed files match the spec, and each file is a valid ModelConfig."""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from contract.spec import SPEC_FILE, ServingSpec
from export.__main__ import main
from export.packaging.install import MODEL_REPOSITORY
from export.packaging.repository import (
    GENERATED_HEADER,
    WARMUP_TEXT,
    model_configs,
    render,
    stale_configs,
    write_configs,
)

COMMITTED_SPEC = ServingSpec.read(MODEL_REPOSITORY / SPEC_FILE)
README = MODEL_REPOSITORY / "README.md"


def parse(text: bytes) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text.decode(), model_config_pb2.ModelConfig())


def configs(spec: ServingSpec) -> dict[str, model_config_pb2.ModelConfig]:
    return {rel: parse(content) for rel, content in render(spec).items() if rel.endswith(".pbtxt")}


def test_committed_configs_are_what_the_spec_generates():
    assert stale_configs(MODEL_REPOSITORY, COMMITTED_SPEC) == [], "run `python -m export configs` and commit"


def test_each_file_is_its_model_config_message_printed_under_the_header():
    rendered = render(COMMITTED_SPEC)
    messages = model_configs(COMMITTED_SPEC)
    assert set(messages) == {rel for rel in rendered if rel.endswith(".pbtxt")}
    for rel, message in messages.items():
        assert rendered[rel].startswith(GENERATED_HEADER.encode()), rel
        assert parse(rendered[rel]) == message, rel


def test_configs_check_cli(tmp_path: Path):
    (tmp_path / SPEC_FILE).write_text((MODEL_REPOSITORY / SPEC_FILE).read_text())
    assert main(["configs", "--repository", str(tmp_path), "--check"]) == 1  # nothing generated yet
    assert main(["configs", "--repository", str(tmp_path)]) == 0
    assert main(["configs", "--repository", str(tmp_path), "--check"]) == 0
    (tmp_path / "classifier" / "config.pbtxt").write_text("# hand edit\n")
    assert main(["configs", "--repository", str(tmp_path), "--check"]) == 1
    assert (tmp_path / COMMITTED_SPEC.ensemble_name / "1").is_dir()  # ensembles need an (empty) version dir


def test_variants_of_a_model_share_name_io_and_batch_size():
    parsed = configs(COMMITTED_SPEC)
    for model in ("tokenizer", "classifier"):
        files = [cfg for rel, cfg in parsed.items() if rel.startswith(model + "/")]
        assert len(files) >= 2
        for cfg in files[1:]:
            assert cfg.name == files[0].name
            # the GPU embedded configs batch more rows per execution; requests stay <= the ensemble's
            wanted = (
                COMMITTED_SPEC.embedded_gpu_max_batch_size
                if cfg in gpu_embedded(parsed)
                else COMMITTED_SPEC.max_batch_size
            )
            assert cfg.max_batch_size == wanted
            assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
                (i.name, i.data_type, list(i.dims)) for i in files[0].input
            ]
            assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
                (o.name, o.data_type, list(o.dims)) for o in files[0].output
            ]


def gpu_embedded(parsed: dict[str, model_config_pb2.ModelConfig]) -> list[model_config_pb2.ModelConfig]:
    return [cfg for rel, cfg in parsed.items() if rel.endswith("configs/embedded-gpu.pbtxt")]


def test_the_embedded_gpu_configuration_runs_the_torch_variant_on_the_gpu():
    parsed = configs(COMMITTED_SPEC)
    spec = COMMITTED_SPEC
    classifier = parsed["classifier/configs/embedded-gpu.pbtxt"]
    assert classifier.backend == "python" and all(i.allow_ragged_batch for i in classifier.input)
    params = {k: v.string_value for k, v in classifier.parameters.items()}
    assert params == {"runtime": "torch", "variant": "torch_fp16", "torch_device": "cuda"}
    assert [(g.kind, g.count) for g in classifier.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, spec.embedded_gpu_classifier_instances)
    ]
    assert list(classifier.dynamic_batching.preferred_batch_size) == spec.embedded_gpu_preferred_batch_sizes
    assert classifier.dynamic_batching.max_queue_delay_microseconds == spec.embedded_gpu_max_queue_delay_us
    assert {w.batch_size for w in classifier.model_warmup} == {1, spec.embedded_gpu_max_batch_size}
    assert classifier.response_cache.enable
    # tokenizer and postprocess stay CPU python models, more of them, the postprocess on the same variant
    tokenizer, postprocess = (
        parsed["tokenizer/configs/embedded-gpu.pbtxt"],
        parsed["postprocess/configs/embedded-gpu.pbtxt"],
    )
    assert tokenizer.instance_group[0].count == spec.embedded_gpu_tokenizer_instances
    assert tokenizer.parameters["pad_to_multiple_of"].string_value == "1"
    assert postprocess.parameters["variant"].string_value == "torch_fp16"
    for cfg in (classifier, tokenizer, postprocess):
        assert (
            cfg.max_batch_size
            == spec.embedded_gpu_max_batch_size
            >= parsed["goemotions/config.pbtxt"].max_batch_size
        )
        assert cfg.dynamic_batching.default_queue_policy.max_queue_size == spec.embedded_gpu_max_queue_size
    assert "goemotions/configs/embedded-gpu.pbtxt" not in parsed  # the ensemble keeps its config.pbtxt
    on_cpu = configs(
        dataclasses.replace(spec, embedded_gpu_torch_device="cpu", embedded_gpu_instance_kind="cpu")
    )
    cpu_classifier = on_cpu["classifier/configs/embedded-gpu.pbtxt"]
    assert cpu_classifier.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cpu_classifier.parameters["torch_device"].string_value == "cpu"


def test_classifier_backends_and_batching():
    parsed = configs(COMMITTED_SPEC)
    gpu, embedded, trt = (
        parsed[f"classifier/{n}"]
        for n in ("config.pbtxt", "configs/embedded.pbtxt", "configs/tensorrt.pbtxt")
    )
    assert gpu.backend == "onnxruntime" and gpu.default_model_filename == "model.fp16.onnx"
    assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    assert embedded.backend == "python"
    assert embedded.parameters["variant"].string_value == COMMITTED_SPEC.cpu_variant
    assert embedded.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert embedded.instance_group[0].count == COMMITTED_SPEC.cpu_instances
    # ragged requests only where the python model re-pads them itself
    assert all(i.allow_ragged_batch for i in embedded.input)
    assert not any(i.allow_ragged_batch for i in gpu.input)
    for cfg in (gpu, embedded, trt):
        # The response cache lives on the classifier: its single output is fully keyed by its inputs.
        assert cfg.response_cache.enable
        assert list(cfg.dynamic_batching.preferred_batch_size) == COMMITTED_SPEC.preferred_batch_sizes
        assert cfg.dynamic_batching.default_queue_policy.max_queue_size == COMMITTED_SPEC.max_queue_size
        assert {w.batch_size for w in cfg.model_warmup} == {1, COMMITTED_SPEC.max_batch_size}


def test_tokenizer_pads_to_a_multiple_only_for_the_gpu_backends():
    parsed = configs(COMMITTED_SPEC)
    assert parsed["tokenizer/config.pbtxt"].parameters["pad_to_multiple_of"].string_value == "16"
    assert parsed["tokenizer/configs/embedded.pbtxt"].parameters["pad_to_multiple_of"].string_value == "1"
    assert parsed["tokenizer/config.pbtxt"].parameters["max_length"].string_value == str(
        COMMITTED_SPEC.max_length
    )


def test_warmup_text_is_in_tritons_raw_bytes_format():
    raw = render(COMMITTED_SPEC)["tokenizer/warmup/text"]
    (length,) = struct.unpack("<I", raw[:4])
    assert raw[4:].decode() == WARMUP_TEXT and length == len(WARMUP_TEXT.encode())


def test_ensemble_chains_the_three_models_and_reports_the_version_without_a_cache():
    parsed = configs(COMMITTED_SPEC)
    ens = parsed["goemotions/config.pbtxt"]
    # No cache on the ensemble: its key is the inputs only, so a request for a subset of the outputs
    # would store a response that later full requests get (cache poisoning).
    assert ens.platform == "ensemble" and not ens.response_cache.enable
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["tokenizer", "classifier", "postprocess"]
    assert [i.name for i in ens.input] == ["TEXT"]
    assert [o.name for o in ens.output] == ["PROBABILITIES", "LABELS", "MODEL_VERSION"]
    assert list(ens.output[0].dims) == [31]  # the committed spec: the student, 28 labels + 3 signals
    assert not any(
        cfg.response_cache.enable for rel, cfg in parsed.items() if not rel.startswith("classifier")
    )
    # Each deployment's postprocess reports (and applies the thresholds of) the variant it serves.
    assert parsed["postprocess/config.pbtxt"].parameters["variant"].string_value == COMMITTED_SPEC.gpu_variant
    assert (
        parsed["postprocess/configs/embedded.pbtxt"].parameters["variant"].string_value
        == COMMITTED_SPEC.cpu_variant
    )


def test_a_model_without_token_type_ids_gets_matching_configs(tmp_path: Path):
    roberta = COMMITTED_SPEC.for_model(["input_ids", "attention_mask"], 128, COMMITTED_SPEC.labels)
    parsed = configs(roberta)
    assert [i.name for i in parsed["classifier/config.pbtxt"].input] == ["input_ids", "attention_mask"]
    assert [o.name for o in parsed["tokenizer/configs/embedded.pbtxt"].output] == [
        "input_ids",
        "attention_mask",
    ]
    step = parsed["goemotions/config.pbtxt"].ensemble_scheduling.step[1]
    assert set(step.input_map) == {"input_ids", "attention_mask"}
    write_configs(tmp_path, roberta)
    assert stale_configs(tmp_path, roberta) == []
    assert stale_configs(tmp_path, COMMITTED_SPEC) != []


def readme_lists(text: str) -> list[set[str]]:
    """The README's bullet lists of files (``- `path` ...``), one set per list, in order."""
    lists: list[set[str]] = []
    previous_was_item = False
    for line in text.splitlines():
        item = re.match(r"- `([^`]+)`", line)
        if item and not previous_was_item:
            lists.append(set())
        if item:
            lists[-1].add(item.group(1))
        previous_was_item = bool(item)
    return lists


def test_readme_names_exactly_the_generated_files():
    generated, _ = readme_lists(README.read_text(encoding="utf-8"))
    assert generated == set(render(COMMITTED_SPEC)), "update the generated list in model_repository/README.md"


@pytest.mark.skipif(
    shutil.which("git") is None or not (MODEL_REPOSITORY.parent / ".git").exists(),
    reason="needs a git checkout",
)
def test_readme_names_every_committed_file_as_generated_or_hand_written():
    generated, hand_written = readme_lists(README.read_text(encoding="utf-8"))
    assert not generated & hand_written
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "."],
        cwd=MODEL_REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(tracked) == generated | hand_written, "update the lists in model_repository/README.md"
