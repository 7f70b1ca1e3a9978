"""``qkd-station kme``: the ETSI GS QKD 014 key manager, a process of its own.

Serves a station's key store to its SAEs over mutual TLS until SIGINT/SIGTERM. The KME
has its own TOML config (docs/key-delivery.md); it never runs in the daemon's loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from station.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kme",
        help="serve the key store to applications by ETSI GS QKD 014 (mutual TLS)",
        description="Run the station's key manager (KME): ETSI GS QKD 014 v1.1.1 over HTTPS "
        "with mutual TLS, serving keys from the key store named in its config. "
        "Wire spec: docs/key-delivery.md.",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="KME config (TOML)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from postprocessing.kme import KmeServer, load_kme_config
    from station.log import setup_logging

    try:
        config = load_kme_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(args.log_level)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with KmeServer(config) as kme:
            # One line on stdout a supervisor (or a test) can wait for.
            print(f"kme {config.kme_id} listening on https://{config.host}:{kme.port}",
                  flush=True)
            await stop.wait()
        logging.getLogger("postprocessing.kme").info("KME %s stopped", config.kme_id)

    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"kme: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0
