"""A model repository for speed runs on the GPU host: the installed repository's configs, python models,
spec and tokenizer, with seeded random FP16 weights of the installed model's shape as its only variant
(``torch_fp16``). The trained weights (~45 MB in FP16) do not fit in one 64 MiB transfer beside the
server parts; the shape is what sets the speed. Its answers mean nothing: the manifest says so
(name ``<name>-random``, source ``random weights``), and so does every MODEL_VERSION it serves.

    PYTHONPATH=. python3 deploy/gpu-host/random_repository.py --like model_repository --out /tmp/gh/repo

Defaults are the offline student's architecture (all-MiniLM-L6-v2: BERT, 6 layers, 384 wide, 12 heads).
Imports the standard library, torch, safetensors and the project's contract and torch_classifier only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from contract.manifest import MANIFEST_FILE, FileEntry, Manifest, VariantEntry
from contract.names import CLASSIFIER, POSTPROCESS, TOKENIZER
from contract.spec import SPEC_FILE, ServingSpec
from torch_classifier.weights import Architecture, random_state_dict, save

WEIGHTS = "model.fp16.safetensors"


def build(like: Path, out: Path, arch: dict[str, int], seed: int) -> Manifest:
    installed = Manifest.read(like / MANIFEST_FILE)
    spec = ServingSpec.read(like / SPEC_FILE)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(
        like,
        out,
        ignore=shutil.ignore_patterns("*.onnx", "*.safetensors", "*.plan*", "__pycache__", MANIFEST_FILE),
    )
    architecture = Architecture(
        model_type="bert",
        num_layers=arch["layers"],
        hidden_size=arch["hidden"],
        num_heads=arch["heads"],
        intermediate_size=arch["intermediate"],
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        num_labels=len(installed.labels),
        pad_token_id=0,
    )
    state = random_state_dict(architecture, arch["vocab"], arch["max_positions"], seed=seed)
    weights = save(out / CLASSIFIER / "1" / WEIGHTS, state, architecture)
    # the CPU variant's temperatures and thresholds: plausible numbers for a speed run, nothing more
    reference = installed.variants.get(spec.cpu_variant) or next(iter(installed.variants.values()))
    entry = FileEntry.of(weights)
    variant = VariantEntry(
        entry.file,
        entry.sha256,
        entry.size_bytes,
        "fp16",
        "batch",
        reference.thresholds,
        reference.temperatures,
        {"random_weights_seed": seed, "runtime": "torch"},
    )
    manifest = Manifest(
        name=f"{installed.name}-random",
        source="random weights of the installed model's shape (speed runs only)",
        labels=installed.labels,
        input_names=installed.input_names,
        max_length=installed.max_length,
        tokenizer=installed.tokenizer,
        onnx=entry,  # no ONNX travels: the torch variant is the only model file
        variants={spec.embedded_gpu_variant: variant},
    )
    for model in (TOKENIZER, CLASSIFIER, POSTPROCESS):
        manifest.write(out / model / "1" / MANIFEST_FILE)
    manifest.write(out / MANIFEST_FILE)
    return manifest  # serve it with configs/embedded-gpu.pbtxt only: the CPU variant's files are not here


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--like", type=Path, default=Path("model_repository"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    arch = {
        k: getattr(args, k) for k in ("layers", "hidden", "heads", "intermediate", "vocab", "max_positions")
    }
    manifest = build(args.like, args.out, arch, args.seed)
    sys.stderr.write(f"wrote {args.out} ({manifest.served_version('torch_fp16')})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
