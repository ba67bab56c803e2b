"""``python -m server``: run the embedded Triton server (CPU, no Docker) and the gateway in front of it,
until Ctrl-C / SIGTERM stops both (gateway first, so in-flight requests finish against a live Triton).

Live model swaps: when another model is installed into the repository (``python -m export install`` or
``prepare``), the launcher starts a standby Triton on the new model (other ports), stops the main one
(the gateway fails over to the standby: no failed request), restarts the main one on the new model and
stops the standby. Each Triton serves one consistent repository snapshot, and every answer carries
the version of the model that produced it (MODEL_VERSION), so nothing is ever labelled with the
other model's version.

Triton binds to loopback (``--triton-host`` to expose it) and its model-repository, model-config,
shared-memory, trace and logging APIs need the admin key: TRITON_ADMIN_KEY from the environment, or a
random key per start (then nobody can use them). ``--host`` is the gateway's bind address only: clients
go through the gateway's auth and limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from contract.manifest import installed_digest, read_installed
from contract.spec import SPEC_FILE, ServingSpec
from server.device import DEVICE_ENV, DEVICES, DeviceError, place
from server.embedded import ADMIN_KEY_ENV, EmbeddedTriton, ServerConfig, ServerError
from server.gateway_process import DRAIN_ENV, GATEWAY_OWN_READY_PATH, LAUNCHER_READY_LINE, GatewayProcess

log = logging.getLogger("server")


class RestartBudget:
    """At most ``limit`` restarts in any ``window_s``: a crash loop stops instead of spinning forever."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.times: deque[float] = deque()

    def allow(self) -> bool:
        now = self.clock()
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


def _keep_log(path: Path) -> Path:
    """Keep a dead process's log as <name>.1 before its successor overwrites it."""
    kept = path.with_suffix(path.suffix + ".1")
    if path.exists():
        path.replace(kept)
    return kept


def _restart(name: str, process: EmbeddedTriton | GatewayProcess, allowed: bool, detail: str = "") -> bool:
    """Start a process that died again (its log kept as <log>.1); False when that is not allowed (no
    restarts, or the budget is spent) or it does not come back."""
    if not allowed:
        log.error("%s exited%s; not restarting; log: %s", name, detail, process.log_file)
        return False
    kept = _keep_log(process.log_file)
    log.error("%s exited unexpectedly%s; restarting (log of the dead one: %s)", name, detail, kept)
    process.stop()
    try:
        process.start()
    except RuntimeError as exc:  # ServerError or ProcessError, with the log tail
        log.error("%s", exc)
        return False
    return True


def _triton_up(server: EmbeddedTriton, may_restart: Callable[[], bool], when: str = "") -> bool:
    """True while tritonserver runs or once it was restarted after exiting; False when it exited and may
    not (or could not) come back."""
    if server.process is None or server.process.poll() is None:
        return True
    return _restart("tritonserver", server, may_restart(), f" (code {server.process.returncode}{when})")


def standby_config(config: ServerConfig, offset: int) -> ServerConfig:
    log_file = config.log_file or config.work_dir / "tritonserver.log"
    return dataclasses.replace(
        config,
        http_port=config.http_port + offset,
        grpc_port=config.grpc_port + offset,
        metrics_port=config.metrics_port + offset,
        log_file=log_file.with_name(log_file.stem + "-standby" + log_file.suffix),
    )


def swap_model(server: EmbeddedTriton, standby: EmbeddedTriton) -> EmbeddedTriton:
    """Blue/green: the standby loads the new model, the main Triton restarts on it while the gateway
    fails over to the standby, then the standby goes. Returns the Triton that serves afterwards (the
    main one; the old one untouched if the standby cannot load the new model)."""
    try:
        standby.start()
    except ServerError as exc:
        log.error("the new model did not load; still serving the previous one. %s", exc)
        return server
    log.info("standby Triton serves the new model on %s; restarting the main one", standby.grpc_url)
    server.stop()
    try:
        server.start()
    except ServerError as exc:
        log.error("the main Triton did not restart on the new model; the standby keeps serving. %s", exc)
        return standby
    standby.stop()
    log.info("model swap done: %s serves the new model", server.grpc_url)
    return server


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    p.add_argument("--repository", type=Path, default=d.repository, help="Triton model repository")
    p.add_argument("--host", default="127.0.0.1", help="the gateway's bind address (default loopback)")
    p.add_argument(
        "--triton-host",
        default=d.host,
        help="Triton's bind address for HTTP, gRPC and metrics (default loopback; anything else exposes "
        f"Triton, its restricted APIs still behind the admin key from {ADMIN_KEY_ENV})",
    )
    p.add_argument("--http-port", type=int, default=d.http_port)
    p.add_argument("--grpc-port", type=int, default=d.grpc_port)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port)
    p.add_argument("--ready-timeout", type=float, default=d.ready_timeout_s, help="seconds to wait for ready")
    p.add_argument(
        "--cache-bytes",
        type=int,
        default=None,
        help="Triton response cache size (default: the spec's response_cache_bytes; 0 = off)",
    )
    p.add_argument("--log-file", type=Path, default=None, help="server log (default build/tritonserver/)")
    p.add_argument("--no-gateway", dest="gateway", action="store_false", help="run Triton only")
    p.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="exit when Triton or the gateway dies instead of restarting it",
    )
    p.add_argument("--max-restarts", type=int, default=5, help="restarts allowed per minute before giving up")
    p.add_argument("--gateway-port", type=int, default=8080, help="gateway HTTP port (on --host)")
    p.add_argument(
        "--standby-port-offset",
        type=int,
        default=10,
        help="a live model swap runs a standby Triton on the main ports + this offset (default 10)",
    )
    p.add_argument(
        "--no-swap",
        dest="swap",
        action="store_false",
        help="do not watch the repository for a newly installed model",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=os.environ.get(DEVICE_ENV, "auto"),
        help=f"where the classifier runs (default ${DEVICE_ENV} or auto: the GPU when one is visible and the "
        "model has the torch variant, else the CPU)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=float(os.environ.get(DRAIN_ENV) or 0),
        help=f"on SIGTERM/Ctrl-C the gateway answers /readyz with 503 but keeps serving this long, so a load "
        f"balancer can stop sending to it, before the stack stops (default ${DRAIN_ENV} or 0); a second "
        "signal stops at once",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("server").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not (args.repository / "manifest.json").is_file():
        log.error("no model in %s; run `python -m export prepare` (or `make serve`) first", args.repository)
        return 1
    spec = ServingSpec.read(args.repository / SPEC_FILE)
    installed = read_installed(args.repository)
    try:
        placement = place(
            args.device, set(installed.variants) if installed else set(), spec.embedded_gpu_variant
        )
    except DeviceError as exc:
        log.error("%s", exc)
        return 1
    log.info("%s", placement.description)
    config = ServerConfig(
        repository=args.repository,
        host=args.triton_host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        ready_timeout_s=args.ready_timeout,
        cache_bytes=spec.response_cache_bytes if args.cache_bytes is None else args.cache_bytes,
        log_file=args.log_file,
        admin_key=os.environ.get(ADMIN_KEY_ENV) or None,
        config_name=placement.config_name,
    )
    stop = threading.Event()
    gateway: GatewayProcess | None = None
    gateway_stop_s = args.drain_seconds + 15  # its drain, then uvicorn's own shutdown

    def on_signal(*_: object) -> None:
        if stop.is_set() and gateway is not None:
            gateway.send(signal.SIGTERM)  # a second signal: the gateway ends its drain now
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    server = EmbeddedTriton(config)
    standby = EmbeddedTriton(standby_config(config, args.standby_port_offset))
    served_digest = installed_digest(args.repository)
    try:
        server.start()
    except ServerError as exc:
        log.error("%s", exc)
        return 1
    try:
        if args.gateway:
            # The standby endpoint answers only during a model swap; the gateway fails over to it.
            endpoints = f"{server.grpc_url},{standby.grpc_url}" if args.swap else server.grpc_url
            gateway = GatewayProcess(
                args.host,
                args.gateway_port,
                endpoints,
                server.log_file.with_name("gateway.log"),
                # The gateway only infers: it gets no admin key.
                env={k: v for k, v in os.environ.items() if k != ADMIN_KEY_ENV}
                | {DRAIN_ENV: str(args.drain_seconds)},
                # Its own readiness, not its Triton's: Triton was ready a moment ago, and one that dies
                # now is restarted by the loop below; waiting on it here timed out and took the stack down.
                ready_path=GATEWAY_OWN_READY_PATH,
            )
            try:
                gateway.start(abort=stop.is_set)  # a signal during start-up stops at once, not once ready
            except RuntimeError as exc:
                log.error("%s", exc)
                return 1
        if stop.is_set():
            return 0
        log.info(
            "ready. Triton HTTP %s | gRPC %s | metrics %s",
            server.http_url,
            server.grpc_url,
            server.metrics_url,
        )
        if gateway:
            log.info(
                "ready. Gateway %s  (API docs %s/docs, metrics %s/metrics, stream %s/v1/emotions/stream)",
                gateway.url,
                gateway.url,
                gateway.url,
                gateway.url.replace("http://", "ws://", 1),
            )
        log.info(LAUNCHER_READY_LINE)
        restarts = RestartBudget(args.max_restarts, window_s=60.0)

        def may_restart() -> bool:  # asked only when something died: each yes spends the budget
            return bool(args.restart) and restarts.allow()

        while not stop.is_set():
            digest = installed_digest(args.repository) if args.swap else None
            if digest is not None and digest != served_digest:
                log.info("a new model was installed (%s); swapping it in", digest[:12])
                serving = swap_model(server, standby)
                if serving is standby:  # the roles flip; the next swap goes the other way
                    server, standby = standby, server
                served_digest = digest
            # The gateway keeps answering (503 + Retry-After) meanwhile; its gRPC channel reconnects.
            if not _triton_up(server, may_restart):
                return 1
            if gateway and not gateway.alive() and not _restart("gateway", gateway, may_restart()):
                return 1
            stop.wait(0.5)
        if gateway and args.drain_seconds > 0:
            # The gateway still answers while it drains, so its Triton stays supervised until it is gone.
            gateway.send(signal.SIGTERM)
            deadline = time.monotonic() + gateway_stop_s
            while gateway.alive() and time.monotonic() < deadline:
                if not _triton_up(server, may_restart, ", while the gateway drains"):
                    break
                time.sleep(0.5)
    finally:
        if gateway:
            gateway.stop(timeout=gateway_stop_s)
        server.stop()
        standby.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
