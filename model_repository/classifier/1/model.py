"""Triton python backend (embedded CPU server only): ONNX Runtime over the whole dynamic batch.

The GPU container serves this model with the onnxruntime or TensorRT backend instead (config.pbtxt,
configs/tensorrt.pbtxt); this file is used with `--model-config-name=embedded`. Requests arrive with
their own sequence lengths (allow_ragged_batch): they are re-padded to the longest, run as one
batch, and split back per request.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_file = Path(args["model_repository"]) / args["model_version"] / params["model_file"]
        options = ort.SessionOptions()
        # One thread per instance; parallelism comes from instance_group count (measured faster on 2
        # cores than one instance with 2 threads, whose spinning wastes a core on a small model).
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        declared = [i["name"] for i in config["input"]]
        if sorted(declared) != sorted(self.inputs):
            raise pb_utils.TritonModelException(
                f"config inputs {declared} differ from {model_file.name} inputs {self.inputs}"
            )

    def execute(self, requests):
        per_request = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
            for r in requests
        ]
        rows = [arrays[self.inputs[0]].shape[0] for arrays in per_request]
        width = max(arrays[self.inputs[0]].shape[1] for arrays in per_request)
        feed = {}
        for name in self.inputs:
            batch = np.zeros((sum(rows), width), dtype=np.int64)
            start = 0
            for arrays, n in zip(per_request, rows, strict=True):
                a = arrays[name]
                batch[start : start + n, : a.shape[1]] = a
                start += n
            feed[name] = batch
        try:
            logits = self.session.run(["logits"], feed)[0].astype(np.float32, copy=False)
        except Exception as exc:  # every request must get an answer, not a dead stub
            error = pb_utils.TritonError(f"classifier failed: {type(exc).__name__}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for n in rows:
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits[start : start + n])])
            )
            start += n
        return responses
