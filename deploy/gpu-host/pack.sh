#!/usr/bin/env bash
# Pack what the GPU host lacks into build/gpu-host/ (git-ignored; carried with the project, 64 MiB in all):
#   tritonserver.tar.xz  the server parts of the nvidia-pytriton wheel installed in .venv: bin/, the python
#                        backend, caches, the Python 3.12 stub, the bundled libraries (without libpython3.13)
#   site.tar.xz          pure-Python/cp312 packages the host's Python 3.12 lacks: numpy<2 (the python
#                        backend's tensors break on numpy 2), tritonclient (gRPC), psutil, prometheus_client
# Run here, from the project root, after `make install`. See docs/gpu.md and deploy/gpu-host/run.sh.
set -euo pipefail
OUT=build/gpu-host
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/site"
tar -C "$SITE" -cJf "$OUT/tritonserver.tar.xz" \
  --exclude='nvidia_pytriton.libs/libpython3*13*' \
  pytriton/tritonserver/bin pytriton/tritonserver/backends/python pytriton/tritonserver/caches \
  pytriton/tritonserver/python_backend_stubs/3.12 nvidia_pytriton.libs
.venv/bin/pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64 \
  -d "$OUT/wheels" 'numpy==1.26.4' 'tritonclient==2.51.0' 'psutil==7.2.2' 'prometheus_client'
for wheel in "$OUT"/wheels/*.whl; do .venv/bin/python -m zipfile -e "$wheel" "$OUT/site"; done
# perf_analyzer and its libraries are not used by the project's benchmarks: leave them out
rm -rf "$OUT"/site/tritonclient/bin "$OUT"/site/tritonclient/lib "$OUT"/site/*.dist-info/RECORD
tar -C "$OUT/site" -cJf "$OUT/site.tar.xz" .
rm -rf "$OUT/site" "$OUT/wheels"
du -sh "$OUT"/*
