"""``qkd-station kme``: the ETSI GS QKD 014 key manager, a process of its own.

Serves a station's key store to its SAEs over mutual TLS until SIGINT/SIGTERM. The KME
has its own TOML config (docs/key-delivery.md); it never runs in the daemon's loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

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
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="serve from N processes on the same port (SO_REUSEPORT), sharing the "
                   "key store; needs a fixed port (default 1)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
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
    if not 1 <= args.workers <= 64:
        print(f"kme: --workers {args.workers}: give 1..64", file=sys.stderr)
        return 2
    if args.workers > 1 and config.port == 0:
        print("kme: --workers needs a fixed port in the config (not 0)", file=sys.stderr)
        return 2
    children = []
    for _ in range(args.workers - 1):
        # Each worker is this command again; the kernel spreads connections over them.
        children.append(subprocess.Popen(
            [sys.executable, "-m", "station", "kme", "--config", args.config,
             "--log-level", args.log_level, "--worker"], stdout=subprocess.PIPE))
    for child in children:
        line = child.stdout.readline().decode() if child.stdout else ""
        if "listening" not in line:
            print(f"kme: a worker did not start: {line.strip()!r}", file=sys.stderr)
            _stop(children)
            return 1
    if args.worker or args.workers > 1:
        config = config.model_copy(update={"reuse_port": True})
    if args.worker:
        config = config.model_copy(update={"mqtt": None})  # the first process publishes

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
        _run_loop(serve())
    except OSError as exc:
        print(f"kme: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(children)
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (``pip install .[uvloop]``: a little less CPU per
    request, bench/key_delivery.py), else on the stdlib loop (``QKD_KME_LOOP=asyncio``
    forces the stdlib loop)."""
    try:
        if os.environ.get("QKD_KME_LOOP") == "asyncio":  # the fallback, on demand
            raise ImportError
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        if child.stdout is not None:
            child.stdout.close()
