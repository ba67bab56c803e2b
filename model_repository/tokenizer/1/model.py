"""Triton python backend: TEXT (one string per row) -> input_ids, attention_mask[, token_type_ids].

Uses the `tokenizers` package directly (not transformers): the stub starts in well under a second
instead of ~10 s. Every row is normalised with contract.text.normalize first, the function the
gateway's cache key uses, so two texts the cache treats as one are exactly the texts the model sees as
one. Each request is encoded on its own, with the tokenizer's padding: its rows are padded to that
request's own longest row (rounded up to `pad_to_multiple_of`), never to another request's, so the
same request always gives the same tensors and the classifier's response cache key does not depend on
what else was in flight. A bad row (not UTF-8, empty) fails only its own request.
The tokenizer file is checked against the manifest next to this file at load (contract.manifest), and
max_length must be the manifest's (the one the model was trained and gated with).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from contract.manifest import MANIFEST_FILE, Manifest, ManifestError
from contract.names import TEXT
from contract.text import normalize


def _params(model_config: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def _pad_token(tokenizer: Tokenizer, version_dir: Path) -> tuple[str, int]:
    """The model's pad token (tokenizer_config.json, else the usual names) and its id."""
    config_file = version_dir / "tokenizer_config.json"
    pad = json.loads(config_file.read_text()).get("pad_token") if config_file.is_file() else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    for token in (pad, "[PAD]", "<pad>"):
        if token and tokenizer.token_to_id(token) is not None:
            return token, int(tokenizer.token_to_id(token))
    return tokenizer.id_to_token(0) or "[PAD]", 0


def _texts(request) -> list[str]:
    rows = pb_utils.get_input_tensor_by_name(request, TEXT).as_numpy().reshape(-1)
    texts = []
    for i, raw in enumerate(rows):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{TEXT} row {i} is not valid UTF-8 (byte {exc.start})") from None
        text = normalize(text)
        if not text:
            raise ValueError(f"{TEXT} row {i} is empty")
        texts.append(text)
    if not texts:
        raise ValueError(f"{TEXT} has no rows")
    return texts


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = _params(config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        try:
            manifest = Manifest.read(version_dir / MANIFEST_FILE)
        except ManifestError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        name = params.get("tokenizer_file", "tokenizer.json")
        entry = manifest.tokenizer.get(name)
        if entry is None or manifest.mismatched_files(version_dir, [entry]):
            raise pb_utils.TritonModelException(
                f"{version_dir / name} is missing or differs from its manifest ({manifest.version}); "
                "reinstall with `python -m export install`"
            )
        max_length = int(params["max_length"])
        if max_length != manifest.max_length:
            raise pb_utils.TritonModelException(
                f"config max_length {max_length} differs from the manifest's {manifest.max_length}; "
                "run `python -m export configs`"
            )
        self.tokenizer = Tokenizer.from_file(str(version_dir / name))
        self.tokenizer.enable_truncation(max_length=max_length)
        pad_token, pad_id = _pad_token(self.tokenizer, version_dir)
        multiple = max(1, int(params.get("pad_to_multiple_of", "1")))
        # No fixed length: pad to the longest row of each encode_batch call, i.e. of each request.
        self.tokenizer.enable_padding(
            pad_id=pad_id, pad_token=pad_token, pad_to_multiple_of=multiple if multiple > 1 else None
        )
        self.outputs = [o["name"] for o in config["output"]]

    def _encode(self, texts: list[str]) -> list[pb_utils.Tensor]:
        encodings = self.tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return [pb_utils.Tensor(name, np.array(arrays[name], dtype=np.int64)) for name in self.outputs]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensors = self._encode(_texts(request))
            except ValueError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            except Exception as exc:  # the tokenizer failed on this request: the others still get answers
                error = pb_utils.TritonError(f"tokenizer failed: {type(exc).__name__}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
