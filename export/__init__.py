"""Train / export stage: GoEmotions model -> ONNX variants -> gates -> Triton model repository."""
