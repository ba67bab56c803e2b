# GPU deployment image: the official Triton container (24.10 = tritonserver 2.51, the same server
# version the embedded CPU default runs) plus what the python-backend models import.
# Not built on the development machine (no Docker engine there); see docs/gpu.md.
# Build context: the project root (docker-compose.yml `context: .`).
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# tokenizer/postprocess run in the python backend; numpy 2 silently breaks its tensors.
RUN pip install --no-cache-dir "numpy<2" "tokenizers==0.22.2"

# The serving contract (standard library only) the python-backend models import: tensor names, the
# manifest reader, text normalisation. The stubs inherit tritonserver's environment, so PYTHONPATH
# reaches them.
COPY contract/ /opt/goemotions/contract/
ENV PYTHONPATH=/opt/goemotions

EXPOSE 8000 8001 8002
