"""``python -m gateway``: serve the gateway with uvicorn (settings from GATEWAY_* env / .env)."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument(
        "--triton-url",
        default=settings.triton_url,
        help="Triton gRPC host:port, or several comma-separated (first = primary, the others for failover)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings.model_copy(
        update={"host": args.host, "port": args.port, "triton_url": args.triton_url}
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        # uvicorn reads a whole WebSocket frame before the gateway can check its size (default 16 MiB)
        ws_max_size=max(settings.stream_max_message_bytes, 1 << 20),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
