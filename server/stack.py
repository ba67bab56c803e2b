"""The one harness that starts the stack for the benchmarks, the soak, the load test and the e2e tests:
an embedded Triton, any number of gateways and helper services (peer services, the launcher itself),
on free (or consecutive, from a base) loopback ports, each child with an explicit environment; all
stopped in reverse order of start.

    with Stack(Path("build/bench"), base_port=18100) as stack:
        triton = stack.start_triton(repository)                     # response cache off
        gateway = stack.start_gateway(settings={"GATEWAY_CACHE_BACKEND": "memory"})

Nothing here changes this process's environment: a gateway gets this process's environment without
any ``GATEWAY_*`` variable, plus the settings its caller names, so a run does not depend on the shell
it was started from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server.embedded import EmbeddedTriton, ServerConfig
from server.gateway_process import GATEWAY_READY_PATH, LAUNCHER_READY_LINE, GatewayProcess, ManagedProcess
from server.probes import free_port, port_is_free

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
GATEWAY_PREFIX = "GATEWAY_"
EPHEMERAL_START = 32768  # Linux's default ip_local_port_range starts here
P = TypeVar("P", bound=ManagedProcess)


def gateway_env(
    settings: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: this process's environment) without any ``GATEWAY_*`` variable, plus
    ``settings``."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(GATEWAY_PREFIX)
    }
    return {**env, **(settings or {})}


class Ports:
    """Ports to bind: consecutive from ``base`` (a benchmark's ``--base-port``), or free ones."""

    def __init__(self, base: int | None = None) -> None:
        self.next = base

    def take(self) -> int:
        if self.next is None:
            return free_port()
        port, self.next = self.next, self.next + 1
        return port


@dataclass(frozen=True)
class LauncherPorts:
    http: int
    grpc: int
    metrics: int
    gateway: int
    standby_offset: int = 10


def launcher_ports(standby_offset: int = 10, seed: int | None = None) -> LauncherPorts:
    """Ports for ``python -m server``, with the standby Triton's three at +``standby_offset`` free too,
    all below the ephemeral range: there no outgoing connection can take one between this check and
    the moment a model swap binds it."""
    seed = os.getpid() if seed is None else seed
    for base in range(20_000 + seed % 97 * 97, EPHEMERAL_START - 800, 97):
        ports = [base, base + 1, base + 2, base + 3]
        if all(port_is_free(p) for p in [*ports, *(p + standby_offset for p in ports[:3])]):
            return LauncherPorts(base, base + 1, base + 2, base + 3, standby_offset)
    raise RuntimeError(f"no free launcher ports below {EPHEMERAL_START}")


def launcher_command(
    repository: Path | None = None,
    ports: LauncherPorts | None = None,
    log_file: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``python -m server`` with the given repository, ports and Triton log (its defaults otherwise)."""
    cmd = [sys.executable, "-m", "server"]
    if repository is not None:
        cmd += ["--repository", str(repository)]
    if ports is not None:
        cmd += [
            f"--http-port={ports.http}",
            f"--grpc-port={ports.grpc}",
            f"--metrics-port={ports.metrics}",
            f"--gateway-port={ports.gateway}",
            f"--standby-port-offset={ports.standby_offset}",
        ]
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    return [*cmd, *extra]


class Stack:
    """Triton, gateways and services started for one run; ``close`` (or the ``with`` block's end) stops
    every one of them, last started first."""

    def __init__(self, work_dir: Path, base_port: int | None = None, host: str = HOST) -> None:
        self.work_dir = work_dir
        self.ports = Ports(base_port)
        self.host = host
        self.triton: EmbeddedTriton | None = None
        self.gateways: dict[str, GatewayProcess] = {}
        self.services: dict[str, ManagedProcess] = {}
        self._stops = contextlib.ExitStack()

    # ---- Triton -------------------------------------------------------------------------------------

    def triton_config(self, repository: Path, *, cache_bytes: int = 0, **overrides: Any) -> ServerConfig:
        """A ServerConfig on this stack's next three ports, its work dir and log under ``work_dir``
        (Triton's response cache off unless ``cache_bytes`` says otherwise: cache-off is the headline)."""
        config = ServerConfig(
            repository=repository,
            work_dir=self.work_dir / "tritonserver",
            host=self.host,
            http_port=self.ports.take(),
            grpc_port=self.ports.take(),
            metrics_port=self.ports.take(),
            cache_bytes=cache_bytes,
        )
        return dataclasses.replace(config, **overrides)

    def start_triton(self, repository: Path, *, cache_bytes: int = 0, **overrides: Any) -> EmbeddedTriton:
        """Start an embedded Triton (ServerConfig fields as keywords) and return it once ready. The first
        one becomes ``self.triton``, the default upstream of the gateways."""
        server = self.add_triton(
            EmbeddedTriton(self.triton_config(repository, cache_bytes=cache_bytes, **overrides))
        )
        server.start()
        return server

    def add_triton(self, server: EmbeddedTriton) -> EmbeddedTriton:
        """Have this stack stop ``server`` (started or not) when it closes."""
        self._stops.callback(server.stop)
        if self.triton is None:
            self.triton = server
        return server

    # ---- gateways and other services ----------------------------------------------------------------

    def start_gateway(
        self,
        name: str = "gateway",
        settings: Mapping[str, str] | None = None,
        *,
        triton_url: str | None = None,
        wait: bool = True,
        ready_timeout_s: float = 60,
    ) -> GatewayProcess:
        """A gateway process (``python -m gateway``) in front of ``triton_url`` (default: this stack's
        Triton), configured by exactly ``settings`` (GATEWAY_* variables; see gateway_env)."""
        if triton_url is None:
            if self.triton is None:
                raise RuntimeError("start Triton first, or name the gateway's triton_url")
            triton_url = self.triton.grpc_url
        gateway = GatewayProcess(
            self.host,
            self.ports.take(),
            triton_url,
            self.work_dir / f"{name}.log",
            ready_timeout_s=ready_timeout_s,
            env=gateway_env(settings),
        )
        self.gateways[name] = gateway
        return self._start(gateway, wait)

    def start_service(
        self,
        name: str,
        command: Callable[[int], Sequence[str]],
        *,
        ready_path: str = "/healthz",
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        ready_timeout_s: float = 180,
    ) -> ManagedProcess:
        """Any HTTP service: ``command(port)`` is its command line on this stack's next port."""
        port = self.ports.take()
        service = ManagedProcess(
            name,
            command(port),
            f"http://{self.host}:{port}",
            self.work_dir / f"{name}.log",
            ready_path=ready_path,
            env=env,
            ready_timeout_s=ready_timeout_s,
        )
        self.services[name] = service
        return self._start(service, wait)

    def start_launcher(
        self,
        repository: Path,
        settings: Mapping[str, str] | None = None,
        *,
        ports: LauncherPorts | None = None,
        extra: Sequence[str] = (),
        wait: bool = True,
        ready_timeout_s: float = 120,
    ) -> ManagedProcess:
        """``python -m server`` (Triton + gateway, restarts, model swaps) on ``ports`` (default: free
        ones below the ephemeral range), the gateway configured by ``settings`` (TRITON_ADMIN_KEY there
        keys Triton's restricted APIs) and the launcher by ``extra`` arguments. Its output goes to
        ``work_dir/launcher.log``, Triton's to ``work_dir/triton.log``; ``url`` is the gateway's."""
        ports = ports or launcher_ports()
        launcher = ManagedProcess(
            "launcher",
            launcher_command(repository, ports, self.work_dir / "triton.log", extra),
            f"http://{self.host}:{ports.gateway}",
            self.work_dir / "launcher.log",
            ready_path=GATEWAY_READY_PATH,  # the launcher started Triton first: wait for both
            env=gateway_env(settings),
            ready_timeout_s=ready_timeout_s,
            cwd=ROOT,
            ready_line=LAUNCHER_READY_LINE,  # and for the launcher itself, done with its start-up
        )
        self.services["launcher"] = launcher
        return self._start(launcher, wait, stop_timeout=60)

    def _start(self, process: P, wait: bool, stop_timeout: float = 30) -> P:
        self._stops.callback(process.stop, stop_timeout)
        process.spawn()
        if wait:
            process.wait_ready()
        return process

    def wait_ready(self) -> None:
        """Wait for every gateway and service started with ``wait=False``."""
        for process in [*self.gateways.values(), *self.services.values()]:
            process.wait_ready()

    # ---- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        self._stops.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
