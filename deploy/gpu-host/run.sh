#!/usr/bin/env bash
# On the GPU host (Python 3.12, torch with CUDA, tokenizers, numpy 2, grpcio; no registry): unpack what
# deploy/gpu-host/pack.sh packed, build a speed-run repository (random weights of the installed model's
# shape: deploy/gpu-host/random_repository.py) and run the GPU benchmark into $OUT (or results/).
# Carried paths: build/gpu-host, model_repository/manifest.json, model_repository/tokenizer/1.
# Usage: deploy/gpu-host/run.sh [bench_gpu arguments...]   (DEVICE=cpu runs the same steps without a GPU)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/goemotions-gpu}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK/server" "$WORK/site"
[ -x "$WORK/server/pytriton/tritonserver/bin/tritonserver" ] || tar -C "$WORK/server" -xJf "$HERE/build/gpu-host/tritonserver.tar.xz"
[ -d "$WORK/site/numpy" ] || tar -C "$WORK/site" -xJf "$HERE/build/gpu-host/site.tar.xz"
export TRITONSERVER_DIR="$WORK/server/pytriton/tritonserver"
export TRITONSERVER_LIBS="$WORK/server/nvidia_pytriton.libs"
# numpy<2 and the client packages first; the project for contract/, torch_classifier/, server/, loadtest/
export PYTHONPATH="$WORK/site:$HERE${PYTHONPATH:+:$PYTHONPATH}"
# the 3.12 stub loads this interpreter's libpython
export LD_LIBRARY_PATH="$($PYTHON -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$HERE"
$PYTHON deploy/gpu-host/random_repository.py --like model_repository --out "$WORK/repo"
if [ "$DEVICE" = cpu ]; then  # the GPU configuration with the torch device on the CPU (no GPU here)
  sed -i 's/kind: KIND_GPU/kind: KIND_CPU/; s/string_value: "cuda"/string_value: "cpu"/' "$WORK/repo/classifier/configs/embedded-gpu.pbtxt"
fi
$PYTHON -m loadtest.bench_gpu --repository "$WORK/repo" --device "$DEVICE" --cpu-grid '' \
  --work "$WORK/bench" --out "${OUT:-results}" "$@"
