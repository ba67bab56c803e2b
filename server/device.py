"""Where the embedded server runs the classifier: the CPU (ONNX Runtime, ``configs/embedded.pbtxt``) or a
GPU (the torch runtime in FP16, ``configs/embedded-gpu.pbtxt``). ``auto`` takes the GPU when one is visible,
torch sees CUDA there, and the installed model has the torch variant; ``GOEMOTIONS_DEVICE`` or
``python -m server --device`` overrides. The launcher never imports torch: it asks a subprocess.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "gpu")
DEVICE_ENV = "GOEMOTIONS_DEVICE"
CPU_CONFIG, GPU_CONFIG = "embedded", "embedded-gpu"
_PROBE_TIMEOUT_S = 60


class DeviceError(RuntimeError):
    """The requested device cannot serve; the message says why and what to do."""


@dataclass(frozen=True)
class Placement:
    config_name: str  # Triton's --model-config-name
    description: str  # for the log: what runs where, and why


def cuda_devices() -> int:
    """GPUs torch sees (0 without an NVIDIA driver, without torch, or with a CPU-only torch)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=True,
        )
        return int(out.stdout.strip() or 0)
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


def place(
    requested: str, variants: set[str], gpu_variant: str, gpus: Callable[[], int] = cuda_devices
) -> Placement:
    """The config to serve with for ``requested`` (auto, cpu or gpu), given the installed model's variants."""
    if requested not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    cpu = Placement(CPU_CONFIG, "classifier on the CPU (ONNX Runtime, configs/embedded.pbtxt)")
    if requested == "cpu":
        return Placement(cpu.config_name, cpu.description + ": requested")
    has_variant = gpu_variant in variants
    count = gpus() if has_variant or requested == "gpu" else 0
    gpu = Placement(
        GPU_CONFIG,
        f"classifier on the GPU (torch {gpu_variant}, configs/embedded-gpu.pbtxt; {count} visible)",
    )
    if requested == "gpu":
        if not has_variant:
            raise DeviceError(
                f"--device gpu, but the installed model has no {gpu_variant} variant (only BERT-family "
                "models have one); serve it on the CPU or in the GPU container"
            )
        if count == 0:
            raise DeviceError(
                "--device gpu, but torch sees no CUDA device (nvidia-smi, a CUDA build of torch)"
            )
        return gpu
    if count and has_variant:
        return Placement(gpu.config_name, gpu.description + ": auto")
    why = "no CUDA device visible" if has_variant else f"the model has no {gpu_variant} variant"
    return Placement(cpu.config_name, f"{cpu.description}: auto, {why}")
