"""Install an export into the Triton model repository: copy its files, write the configs, then the
manifests.

The manifest goes last, into the root and every model's version directory: the python models verify
their files against the copy next to them, so a half-copied install fails to load instead of serving
a mix.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from contract.manifest import MANIFEST_FILE, Manifest, ManifestError
from contract.names import CLASSIFIER, POSTPROCESS, TOKENIZER
from contract.spec import SPEC_FILE, ServingSpec
from export.packaging.repository import write_configs
from export.packaging.tensorrt import PLAN_FILE, write_build_script

log = logging.getLogger(__name__)

MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
# The fast-tokenizer files an export may hold (which ones depends on the model family).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def install(export_dir: Path, repository: Path = MODEL_REPOSITORY) -> Manifest:
    """Copy an export's files into the repository layout, then regenerate the configs: the repository's
    serving settings, the new model's interface.

    Files of the previous model (variants, a TensorRT plan built for another manifest) are removed.
    """
    manifest = Manifest.read(export_dir / MANIFEST_FILE)
    bad = manifest.mismatched_files(export_dir, manifest.files())
    if bad:
        raise ManifestError(f"{export_dir}: {', '.join(bad)} missing or not what the manifest says")
    exported = ServingSpec.read(export_dir / SPEC_FILE)
    current = repository / SPEC_FILE
    spec = (
        ServingSpec.read(current).for_model(exported.input_names, exported.max_length, exported.labels)
        if current.is_file()
        else exported
    )
    missing = {spec.cpu_variant, spec.gpu_variant} - set(manifest.variants)
    if missing:
        raise ValueError(
            f"the serving spec serves {sorted(missing)} but {export_dir} has only "
            f"{sorted(manifest.variants)}; export them (--variants) or change spec.json"
        )
    version_dir = repository / CLASSIFIER / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    if spec.embedded_gpu_variant not in manifest.variants:  # optional: only BERT-family models have it
        log.info(
            "%s has no %s variant: the embedded server runs on the CPU only (the GPU container's "
            "onnxruntime/TensorRT configs still apply)",
            manifest.version,
            spec.embedded_gpu_variant,
        )
    stale_files = [*version_dir.glob("model*.onnx"), *version_dir.glob("model*.safetensors")]
    for stale in [*stale_files, *version_dir.glob(f"{PLAN_FILE}*")]:
        stale.unlink()  # a plan is only valid for the manifest it was built from (build_plan.sh)
    for name in [manifest.onnx.file, *(v.file for v in manifest.variants.values())]:
        shutil.copy2(export_dir / name, version_dir / name)
    tok_dir = repository / TOKENIZER / "1"
    tok_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        (tok_dir / name).unlink(missing_ok=True)
    for name in manifest.tokenizer:
        shutil.copy2(export_dir / name, tok_dir / name)
    (repository / "labels.json").unlink(missing_ok=True)  # before manifests, thresholds lived there
    spec.write(current)
    write_configs(repository, spec)
    write_build_script(repository / CLASSIFIER, spec.input_names, spec.tensorrt, manifest.digest)
    for model in (TOKENIZER, CLASSIFIER, POSTPROCESS):
        manifest.write(repository / model / "1" / MANIFEST_FILE)
    manifest.write(repository / MANIFEST_FILE)
    log.info("installed %s (%s) into %s", manifest.source, manifest.version, repository)
    return manifest
