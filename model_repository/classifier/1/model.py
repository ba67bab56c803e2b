"""Triton python backend (embedded server only): ONNX Runtime or torch over the dynamic batch.

The GPU container serves this model with the onnxruntime or TensorRT backend instead (config.pbtxt,
configs/tensorrt.pbtxt); this file is used with `--model-config-name=embedded` (ONNX Runtime on the
CPU) and `--model-config-name=embedded-gpu` (parameter ``runtime`` = ``torch``: the torch_classifier
package, FP16 on the instance's GPU, or on the device parameter ``torch_device`` names). Parameter ``variant``
names the weights in the manifest next to this file (read with contract.manifest); they are checked
against the manifest's sha256 at load, so a half-installed or swapped file fails loading instead of
answering under a wrong version.

A row's answer never depends on the other rows of the batch:
- execution ``batch`` (FP32, static INT8): requests arrive with their own lengths (allow_ragged_batch),
  are re-padded to the longest and run as one batch; padding is masked and the variant's arithmetic
  is row-independent;
- execution ``per_row`` (dynamic INT8, whose activation scale is computed over the whole input
  tensor): every row runs alone at its own length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from contract.manifest import MANIFEST_FILE, FileEntry, Manifest, ManifestError
from contract.names import LOGITS


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        try:
            manifest = Manifest.read(version_dir / MANIFEST_FILE)
        except ManifestError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        entry = manifest.variants.get(params["variant"])
        if entry is None:
            raise pb_utils.TritonModelException(f"manifest has no variant {params['variant']!r}")
        model_file = version_dir / entry.file
        if manifest.mismatched_files(version_dir, [FileEntry(entry.file, entry.sha256, entry.size_bytes)]):
            raise pb_utils.TritonModelException(
                f"{model_file} is missing or differs from its manifest ({manifest.version}); "
                "reinstall with `python -m export install`"
            )
        self.per_row = entry.execution == "per_row"
        declared = [i["name"] for i in config["input"]]
        if params.get("runtime", "onnxruntime") == "torch":
            self._start_torch(model_file, params, args, declared)
        else:
            self._start_onnxruntime(model_file, params)
        if sorted(declared) != sorted(self.inputs):
            raise pb_utils.TritonModelException(
                f"config inputs {declared} differ from {model_file.name} inputs {self.inputs}"
            )

    def _start_onnxruntime(self, model_file: Path, params: dict[str, str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread per instance; parallelism comes from instance_group count (measured faster on 2
        # cores than one instance with 2 threads, whose spinning wastes a core on a small model).
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in session.get_inputs()]
        self.run = lambda feed: session.run([LOGITS], feed)[0]

    def _start_torch(self, model_file: Path, params: dict[str, str], args: dict, declared: list[str]) -> None:
        import torch

        from torch_classifier.encoder import load_classifier
        from torch_classifier.weights import WeightsError

        device = params.get("torch_device", "cuda")
        if device == "cuda" and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"  # the GPU Triton gave this instance
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise pb_utils.TritonModelException(f"torch_device {device} but torch sees no CUDA device")
        try:
            model = load_classifier(model_file, device)
        except WeightsError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        self.inputs = list(declared)

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            tensors = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in feed.items()}
            return model(**tensors).float().cpu().numpy()

        self.run = run

    def _run_per_row(self, rows: list[dict[str, np.ndarray]]) -> np.ndarray:
        out = []
        for arrays in rows:
            for i in range(arrays["input_ids"].shape[0]):
                # At least one position: warmup rows are all padding.
                n = max(1, int(arrays["attention_mask"][i].sum()))
                feed = {name: arrays[name][i : i + 1, :n] for name in self.inputs}
                out.append(self.run(feed))
        return np.concatenate(out)

    def _run_batch(self, rows: list[dict[str, np.ndarray]], counts: list[int]) -> np.ndarray:
        width = max(arrays[self.inputs[0]].shape[1] for arrays in rows)
        feed = {}
        for name in self.inputs:
            batch = np.zeros((sum(counts), width), dtype=np.int64)
            start = 0
            for arrays, n in zip(rows, counts, strict=True):
                a = arrays[name]
                batch[start : start + n, : a.shape[1]] = a
                start += n
            feed[name] = batch
        return self.run(feed)

    def execute(self, requests):
        per_request = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
            for r in requests
        ]
        counts = [arrays[self.inputs[0]].shape[0] for arrays in per_request]
        try:
            run = self._run_per_row(per_request) if self.per_row else self._run_batch(per_request, counts)
            logits = run.astype(np.float32, copy=False)
        except Exception as exc:  # every request must get an answer, not a dead stub
            error = pb_utils.TritonError(f"classifier failed: {type(exc).__name__}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for n in counts:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(LOGITS, logits[start : start + n])]))
            start += n
        return responses
