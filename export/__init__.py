"""Train / export stage: GoEmotions model -> ONNX variants -> gates -> Triton model repository.

- ``export.training``   GoEmotions data, student training, metrics, calibration, gates (torch, numpy).
- ``export.packaging``  ONNX variants, the ONNX/torch runtime used to judge them, TensorRT, the Triton
  configs (ModelConfig protobufs) and install into the model repository.
- ``export.pipeline``, ``export.bench``, ``export.source`` and the CLI (``python -m export``) join them.

Imports go down only: the CLI and pipeline may import training and packaging; training and packaging
never import each other nor the modules above them; all of them may import ``export.arrays`` and the
``contract`` package.
"""
