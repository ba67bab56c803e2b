"""``python -m gateway``: serve the gateway with uvicorn (settings from GATEWAY_* env / .env).

``python -m gateway keys create --tenant T --scopes analyse,learners:read --file keys.json`` adds a key to
a keys file and prints it once (the file keeps only its SHA-256); ``keys list`` and ``keys revoke`` manage
the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from gateway import logs
from gateway.app import create_app
from gateway.core.tenants import Scope, create_key, read_keys_file, revoke_key
from gateway.draining import DrainingServer
from gateway.settings import Settings


def keys_main(argv: list[str]) -> int:
    """``python -m gateway keys ...``: manage a keys file (GATEWAY_API_KEYS_FILE)."""
    parser = argparse.ArgumentParser(prog="python -m gateway keys", description="manage the API keys file")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="add a key; prints it once (the file keeps only its hash)")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to (a-z 0-9 _ -)")
    create.add_argument(
        "--scopes",
        default=Scope.ANALYSE.value,
        help=f"comma-separated, of: {', '.join(s.value for s in Scope)} (default: analyse)",
    )
    create.add_argument("--id", dest="key_id", help="the key's id (default: <tenant>-<random>)")
    create.add_argument("--browser", action="store_true", help="a key shipped to browsers: analyse only")
    listing = commands.add_parser("list", help="the keys' ids, tenants and scopes (never a key)")
    revoke = commands.add_parser("revoke", help="remove a key by its id")
    revoke.add_argument("key_id")
    for sub in (create, listing, revoke):
        sub.add_argument("--file", type=Path, required=True, help="the keys file (JSON)")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            record, key = create_key(args.file, args.tenant, scopes, args.key_id, args.browser)
            sys.stdout.write(key + "\n")  # the only time the key is shown
            sys.stderr.write(
                f"key {record.id} for tenant {record.tenant} ({', '.join(sorted(record.scopes))}) added to "
                f"{args.file}; store the key now: it is not kept anywhere\n"
            )
        elif args.command == "list":
            for record in read_keys_file(args.file):
                browser = " (browser)" if record.browser else ""
                sys.stdout.write(
                    f"{record.id}\t{record.tenant}\t{','.join(sorted(record.scopes))}{browser}\n"
                )
        elif not revoke_key(args.file, args.key_id):
            sys.stderr.write(f"no key with id {args.key_id} in {args.file}\n")
            return 1
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        return keys_main(argv[1:])
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
    logs.configure()
    settings = settings.model_copy(
        update={"host": args.host, "port": args.port, "triton_url": args.triton_url}
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        # uvicorn reads a whole WebSocket frame before the gateway can check its size (default 16 MiB)
        ws_max_size=max(settings.stream_max_message_bytes, 1 << 20),
    )
    DrainingServer(config, app.state.drain, settings.shutdown_drain_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
