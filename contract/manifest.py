"""The model manifest: the one identity of a served model.

Written by ``python -m export`` next to the exported files and copied by install into the model
repository (the root and every model's version directory, so it travels with each model, also in object
stores). It holds everything that can change an answer: the labels, ``max_length``, the tokenizer files,
and per variant the weights, the quantization settings, the execution mode, the thresholds and the
temperatures. ``digest`` is a sha256 over exactly those fields, so:

- the same files and settings always give the same version, and any change to one of them a new one;
- ``source`` (where the model came from) is recorded but not hashed: the files are what answer.

A served answer is labelled ``served_version(variant)``: ``<name>-<12 hex of the digest>-<variant>``.
Standard library only: the Triton python models read the same JSON with a few lines of their own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.names import CLASSIFIER, POSTPROCESS, TOKENIZER

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 2
# How a variant's rows are run: "batch" when a row's result does not depend on its batch neighbours
# (FP32, FP16, static INT8); "per_row" when it would (dynamic INT8 computes its activation scale over
# the whole input tensor), so every row runs alone at its own length.
EXECUTION_MODES = ("batch", "per_row")
_FLOAT_DECIMALS = 6


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match its digest or files; the message says which."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    file: str
    sha256: str
    size_bytes: int

    @classmethod
    def of(cls, path: Path, name: str | None = None) -> FileEntry:
        return cls(name or path.name, file_sha256(path), path.stat().st_size)


@dataclass(frozen=True)
class VariantEntry:
    file: str
    sha256: str
    size_bytes: int
    precision: str
    execution: str
    thresholds: list[float]
    temperatures: list[float]
    quantization: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.execution not in EXECUTION_MODES:
            raise ManifestError(f"execution must be one of {EXECUTION_MODES}, got {self.execution!r}")
        if len(self.thresholds) != len(self.temperatures):
            raise ManifestError(
                f"{len(self.thresholds)} thresholds but {len(self.temperatures)} temperatures"
            )
        if not all(isinstance(t, (int, float)) and 0.0 < t < 1.0 for t in self.thresholds):
            raise ManifestError(f"thresholds must lie strictly between 0 and 1: {self.thresholds}")
        if not all(isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in self.temperatures):
            raise ManifestError(f"temperatures must be finite and > 0: {self.temperatures}")


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-")[-40:] or "model"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, _FLOAT_DECIMALS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@dataclass(frozen=True)
class Manifest:
    name: str
    source: str
    labels: list[str]
    input_names: list[str]
    max_length: int
    tokenizer: dict[str, FileEntry]
    onnx: FileEntry  # optimum's raw export: the TensorRT plan is built from it on the GPU host
    variants: dict[str, VariantEntry]
    digest: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _sanitize(self.name))
        if len(set(self.labels)) != len(self.labels):
            raise ManifestError("duplicate label names")
        for variant, entry in self.variants.items():
            if len(entry.thresholds) != len(self.labels):
                raise ManifestError(
                    f"variant {variant}: {len(entry.thresholds)} thresholds for {len(self.labels)} labels"
                )
        if not self.digest:
            object.__setattr__(self, "digest", self.compute_digest())

    def answer_fields(self) -> dict[str, Any]:
        """Every field that can change an answer (what the digest covers)."""
        data = asdict(self)
        data.pop("source")
        data.pop("digest")
        return _rounded(data)  # type: ignore[no-any-return]

    def compute_digest(self) -> str:
        payload = json.dumps(self.answer_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    @property
    def version(self) -> str:
        return f"{self.name}-{self.digest[:12]}"

    def served_version(self, variant: str) -> str:
        """What Triton reports with every answer of ``variant`` (MODEL_VERSION)."""
        if variant not in self.variants:
            raise ManifestError(f"variant {variant!r} is not in the manifest ({', '.join(self.variants)})")
        return f"{self.version}-{variant}"

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "version": self.version, **asdict(self)}

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)  # readers never see half a manifest
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        if data.get("schema") != SCHEMA_VERSION:
            raise ManifestError(
                f"{where}: schema {data.get('schema')!r}, expected {SCHEMA_VERSION}; "
                "re-export with `python -m export prepare --force`"
            )
        try:
            manifest = cls(
                name=str(data["name"]),
                source=str(data["source"]),
                labels=[str(x) for x in data["labels"]],
                input_names=[str(x) for x in data["input_names"]],
                max_length=int(data["max_length"]),
                tokenizer={k: FileEntry(**v) for k, v in data["tokenizer"].items()},
                onnx=FileEntry(**data["onnx"]),
                variants={k: VariantEntry(**v) for k, v in data["variants"].items()},
                digest=str(data["digest"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise ManifestError(f"{where}: {exc}") from None
            raise ManifestError(f"{where}: missing or malformed field ({exc})") from None
        if manifest.digest != manifest.compute_digest():
            raise ManifestError(f"{where}: digest does not match its content (edited by hand?)")
        return manifest

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path}: missing; run `python -m export prepare`") from None
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))

    def model_files(self, variants: tuple[str, ...] | None = None) -> list[FileEntry]:
        """The classifier's files: the raw ONNX and the chosen variants' weights (all by default)."""
        chosen = self.variants if variants is None else {v: self.variants[v] for v in variants}
        return [self.onnx, *(FileEntry(e.file, e.sha256, e.size_bytes) for e in chosen.values())]

    def files(self, variants: tuple[str, ...] | None = None) -> list[FileEntry]:
        """Every file the manifest names (tokenizer, raw ONNX, the chosen variants' weights)."""
        return [*self.tokenizer.values(), *self.model_files(variants)]

    def mismatched_files(self, directory: Path, entries: list[FileEntry]) -> list[str]:
        """Names of ``entries`` missing from ``directory`` or differing from the manifest (sha256)."""
        bad = []
        for entry in entries:
            path = directory / entry.file
            if (
                not path.is_file()
                or path.stat().st_size != entry.size_bytes
                or file_sha256(path) != entry.sha256
            ):
                bad.append(entry.file)
        return bad


def installed_digest(repository: Path) -> str | None:
    """The digest of the model installed in ``repository`` once install has finished (the root manifest
    and the copy in every model's version directory agree); None while an install is half-way or
    nothing is installed. Cheap: the launcher polls it."""
    digests = set()
    for path in [repository / MANIFEST_FILE] + [
        repository / model / "1" / MANIFEST_FILE for model in (TOKENIZER, CLASSIFIER, POSTPROCESS)
    ]:
        try:
            digests.add(json.loads(path.read_text(encoding="utf-8"))["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return digests.pop() if len(digests) == 1 else None


def read_installed(repository: Path) -> Manifest | None:
    """The installed manifest when install has finished and every file it names is in its place with
    the right size (the python models check the sha256 at load), else None."""
    digest = installed_digest(repository)
    if digest is None:
        return None
    try:
        manifest = Manifest.read(repository / MANIFEST_FILE)
    except ManifestError as exc:
        log.warning("%s", exc)
        return None
    if manifest.digest != digest:
        return None
    places = [
        (repository / TOKENIZER / "1", list(manifest.tokenizer.values())),
        (repository / CLASSIFIER / "1", manifest.model_files()),
    ]
    for directory, entries in places:
        for entry in entries:
            f = directory / entry.file
            if not f.is_file() or f.stat().st_size != entry.size_bytes:
                return None
    return manifest
