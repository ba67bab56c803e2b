"""The classifier's torch runtime: a BERT-family sequence classifier (BERT, MiniLM, RoBERTa) in plain torch,
loaded from one safetensors file whose metadata carries the architecture. It is what the embedded Triton
runs on a GPU (FP16, ``classifier`` instances ``KIND_GPU``) and runs on a CPU too (FP32), with only torch,
safetensors and numpy: no transformers, so the GPU host's own library versions do not matter.
"""
