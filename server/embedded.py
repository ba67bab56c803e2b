"""The embedded Triton server: the real ``tritonserver`` binary shipped in the nvidia-pytriton wheel.

No Docker, CPU only; every model runs in the python backend (the classifier runs ONNX Runtime in
it). Facts and pitfalls behind each step: ../shared/notes/embedded-triton.md.

Locked down as the containers are (docker-compose.yml, deploy/k8s/triton.yaml): the model-repository
(load/unload), model-config, shared-memory, trace and logging APIs answer only requests that carry the
admin key (``--http-restricted-api`` / ``--grpc-restricted-protocol``, always on); inference, health and
metadata stay open to the gateway. The key is ``ServerConfig.admin_key`` (the launcher takes it from
TRITON_ADMIN_KEY) or, when none is given, a random one per start that nobody else learns. It is never
logged. Triton binds to loopback unless ``host`` says otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from server.lifetime import die_with_parent
from server.probes import (
    answers,
    log_tail,
    loopback_for,
    mapped_files,
    private_bytes,
    process_tree,
    wait_for,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
# The APIs that need the admin key (the same list as docker-compose.yml and deploy/k8s/triton.yaml).
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "trace", "logging")
ADMIN_HEADER = "admin-key"  # over HTTP; gRPC metadata carries it as GRPC_ADMIN_HEADER
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # Triton prefixes gRPC restriction headers
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"


class ServerError(RuntimeError):
    """tritonserver could not be prepared or did not become ready; the message carries its log tail."""


@dataclass(frozen=True)
class ServerConfig:
    repository: Path = REPO_ROOT / "model_repository"
    work_dir: Path = REPO_ROOT / "build" / "tritonserver"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    config_name: str = "embedded"
    cache_bytes: int = 64 * 1024 * 1024  # 0 turns Triton's response cache off
    ready_timeout_s: float = 60.0
    exit_timeout_s: int = 10
    log_file: Path | None = None
    log_verbose: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    env: Mapping[str, str] = field(default_factory=dict)  # on top of this process's environment
    # The restricted APIs' key (header ADMIN_HEADER); None: a random one per start. Kept out of repr.
    admin_key: str | None = field(default=None, repr=False)

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches the server (loopback when it binds every address)."""
        return loopback_for(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


# Where the wheel's server parts are when they are not installed (the GPU host: deploy/gpu-host/run.sh
# unpacks them): the tritonserver directory and the wheel's bundled libraries.
SERVER_DIR_ENV, SERVER_LIBS_ENV = "TRITONSERVER_DIR", "TRITONSERVER_LIBS"


def bundled_server_dir() -> Path:
    path = Path(os.environ.get(SERVER_DIR_ENV) or site_packages() / "pytriton" / "tritonserver")
    if not (path / "bin" / "tritonserver").is_file():
        raise ServerError(
            f"tritonserver not found at {path}: install the nvidia-pytriton wheel (`make install`)"
        )
    return path


def prepare_backends(config: ServerConfig) -> Path:
    """A backend directory whose python backend has the stub for this interpreter's version.

    The wheel ships ``backends/python`` without a stub; a stub of the wrong Python version makes
    model loading hang forever instead of failing.
    """
    server = bundled_server_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"no python backend stub for Python {version} in {server}/python_backend_stubs")
    target = config.work_dir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for item in (server / "backends" / "python").iterdir():
        if item.is_file() and not (target / item.name).exists():
            shutil.copy2(item, target / item.name)
    if not (target / stub.name).is_file() or (target / stub.name).stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target / stub.name)
    return config.work_dir / "backends"


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """tritonserver's environment: this process's, the given variables, and what the stubs need."""
    env = {**os.environ, **(extra or {})}
    env.pop(ADMIN_KEY_ENV, None)  # the key travels in the restriction flags; the models never need it
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # LIBDIR first: the stub must load this interpreter's libpython, not whatever the system has.
    libs = [libdir, env.get(SERVER_LIBS_ENV) or str(site_packages() / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
    # The stub takes its prefix (and so site-packages) from `python3` on PATH: the venv goes first.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The python-backend models import the serving contract (names, manifest, text normalisation).
    env["PYTHONPATH"] = ":".join(p for p in [str(PROJECT_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def restriction_flags(admin_key: str) -> list[str]:
    """The flags that put RESTRICTED_APIS behind the admin key, over HTTP and gRPC (2.51 syntax:
    ``<api>,<api>:<header>=<value>``)."""
    if not admin_key or any(c in admin_key for c in ":=, \t\n"):
        raise ServerError("the Triton admin key must be non-empty, without ':', '=', ',' or whitespace")
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={apis}:{ADMIN_HEADER}={admin_key}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={admin_key}",
    ]


def redacted(cmd: Sequence[str], secret: str) -> str:
    """A command line for the log, with the secret replaced."""
    return " ".join(cmd).replace(secret, "***") if secret else " ".join(cmd)


def server_command(config: ServerConfig, backends: Path, admin_key: str) -> list[str]:
    server = bundled_server_dir()
    return [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={config.repository.resolve()}",
        f"--backend-directory={backends}",
        f"--cache-directory={server / 'caches'}",
        f"--model-config-name={config.config_name}",
        *([f"--cache-config=local,size={config.cache_bytes}"] if config.cache_bytes > 0 else []),
        f"--http-address={config.host}",
        f"--grpc-address={config.host}",
        f"--metrics-address={config.host}",
        f"--http-port={config.http_port}",
        f"--grpc-port={config.grpc_port}",
        f"--metrics-port={config.metrics_port}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size=0:0",
        f"--exit-timeout-secs={config.exit_timeout_s}",
        f"--log-verbose={config.log_verbose}",
        *restriction_flags(admin_key),
        *config.extra_args,
    ]


def shm_regions() -> set[str]:
    try:
        return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(SHM_PREFIX)}
    except OSError:
        return set()


def group_regions(pid: int) -> set[str]:
    """Shared-memory regions mapped by a server and its descendants (its python stubs)."""
    return mapped_files(process_tree(pid), SHM_PREFIX)


def process_role(cmdline: bytes | Sequence[str]) -> str:
    """``tritonserver``, or the model a python-backend stub serves (its first argument is the model
    file path: .../<model>/<version>/model.py). ``cmdline``: psutil's list or /proc's NUL-joined bytes."""
    if isinstance(cmdline, bytes):
        cmdline = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    args = list(cmdline)
    if not args or "triton_python_backend_stub" not in args[0]:
        return Path(args[0]).name if args else "?"
    parts = Path(args[1]).parts if len(args) > 1 else ()
    return f"stub:{parts[-3]}" if len(parts) >= 3 else "stub"


def remove_stale_shm(only: set[str] | None = None) -> list[str]:
    """Remove python-backend shared-memory regions no live process maps (left by a killed server);
    regions another live server maps are never touched."""
    candidates = shm_regions() if only is None else only & shm_regions()
    if not candidates:
        return []
    stale = sorted(candidates - mapped_files(psutil.process_iter(), SHM_PREFIX))
    for name in stale:
        with contextlib.suppress(OSError):
            (SHM_DIR / name).unlink()
    if stale:
        log.info("removed %d stale Triton shared-memory region(s)", len(stale))
    return stale


def is_ready(config: ServerConfig, timeout: float = 1.0) -> bool:
    # Connection refused while loading, 400 while models are not ready.
    return answers(f"http://{config.connect_host}:{config.http_port}/v2/health/ready", timeout_s=timeout)


def serves_metrics(config: ServerConfig, timeout: float = 1.0) -> bool:
    # Triton opens its metrics endpoint after HTTP and gRPC, so HTTP can say ready a moment before it
    # listens (a scrape right after start was refused once in CI).
    return answers(f"http://{config.connect_host}:{config.metrics_port}/metrics", timeout_s=timeout)


class EmbeddedTriton:
    """Start, health-poll and stop one tritonserver process group."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = config.log_file or config.work_dir / "tritonserver.log"
        self.startup_seconds: float | None = None
        self._shm_before: set[str] = set()
        self._admin_key = ""

    @property
    def admin_headers(self) -> dict[str, str]:
        """The header that opens the restricted APIs of the running server (empty before a start)."""
        return {ADMIN_HEADER: self._admin_key} if self._admin_key else {}

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """The same key as gRPC metadata (Triton expects its own prefix there)."""
        return {GRPC_ADMIN_HEADER: self._admin_key} if self._admin_key else {}

    def start(self) -> EmbeddedTriton:
        if is_ready(self.config):
            raise ServerError(f"something already answers on {self.http_url}; stop it or choose other ports")
        remove_stale_shm()
        backends = prepare_backends(self.config)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._admin_key = self.config.admin_key or secrets.token_urlsafe(32)
        cmd = server_command(self.config, backends, self._admin_key)
        if not is_loopback(self.config.host):
            log.warning(
                "tritonserver binds %s: reachable from other machines (restricted APIs need the admin key)",
                self.config.host,
            )
        log.info("starting tritonserver (log: %s)", self.log_file)
        log.debug("command: %s", redacted(cmd, self._admin_key))
        self._shm_before = shm_regions()
        started = time.monotonic()
        with self.log_file.open("wb") as out:
            # Own process group: shutdown reaches the python stubs too.
            self.process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env(self.config.env),
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._wait_ready(started)
        return self

    def _wait_ready(self, started: float) -> None:
        process = self.process
        assert process is not None
        ready = wait_for(
            lambda: is_ready(self.config, timeout=0.5) and serves_metrics(self.config, timeout=0.5),
            self.config.ready_timeout_s,
            abort=lambda: process.poll() is not None,
        )
        if ready:
            self.startup_seconds = time.monotonic() - started
            log.info(
                "tritonserver ready in %.1f s: HTTP %s, gRPC %s, metrics %s",
                self.startup_seconds,
                self.http_url,
                self.grpc_url,
                self.metrics_url,
            )
            return
        code = process.poll()
        if code is not None:
            self._cleanup_shm()
            raise ServerError(
                f"tritonserver exited with code {code} during startup; log tail:\n{log_tail(self.log_file)}"
            )
        self.stop()
        raise ServerError(
            f"tritonserver not ready after {self.config.ready_timeout_s:.0f} s; log tail:\n"
            f"{log_tail(self.log_file)}"
        )

    @property
    def http_url(self) -> str:
        return f"http://{self.config.connect_host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.connect_host}:{self.config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.connect_host}:{self.config.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def shm_regions(self) -> set[str]:
        """The python-backend regions this server's stubs map right now."""
        return group_regions(self.process.pid) if self.process else set()

    def processes(self) -> list[psutil.Process]:
        """tritonserver and its python-backend stubs, while running."""
        return process_tree(self.process.pid) if self.process else []

    def memory(self) -> dict[str, int]:
        """Bytes per part of the server, without double counting: each process's private (anonymous)
        resident memory, keyed by role (``tritonserver`` or the stub's model), plus the python
        backend's shared-memory regions counted once (RSS counts a shared page in every process
        that touches it)."""
        parts: dict[str, int] = {}
        if self.process is None:
            return parts
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                role = process_role(proc.cmdline())
                parts[role] = parts.get(role, 0) + private_bytes(proc.pid)
        parts["shared memory"] = sum(
            (SHM_DIR / name).stat().st_blocks * 512
            for name in self.shm_regions()
            if (SHM_DIR / name).exists()
        )
        return parts

    def rss_bytes(self) -> int:
        """Resident memory of the server and its python stubs."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the group, wait for in-flight work, SIGKILL what is left, remove our shared memory."""
        if self.process is None:
            return None
        timeout = timeout if timeout is not None else self.config.exit_timeout_s + 5
        code = self.process.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not exit in %.0f s; killing it", timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                code = self.process.wait()
        # Stubs may outlive the server by a moment; make sure the whole group is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._cleanup_shm()
        log.info("tritonserver stopped (exit code %s)", code)
        self.process = None
        self._admin_key = ""
        return code

    def _cleanup_shm(self) -> None:
        remove_stale_shm(only=shm_regions() - self._shm_before)

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(config: ServerConfig) -> Iterator[EmbeddedTriton]:
    server = EmbeddedTriton(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
