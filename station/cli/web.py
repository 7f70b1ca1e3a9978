"""``qkd-station web``: the operator's web view (docs/web.md).

    qkd-station web --config station.toml       # serve it ([web] section)
    qkd-station web passwd                      # make a password_hash for [[web.accounts]]

The daemon starts the first as a child process when ``[web] enabled = true``; it can also
run on its own (another machine, another user), since all it needs is the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys

from station.cli._common import add_config_argument, load_or_exit
from station.config.web import hash_password

log = logging.getLogger("station.web")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("web", help="serve the operator's web view, or make a password hash")
    p.add_argument("action", nargs="?", choices=["serve", "passwd"], default="serve",
                   help="serve (default) or passwd: print a password_hash for [[web.accounts]]")
    add_config_argument(p)
    p.add_argument("--stdin", action="store_true",
                   help="passwd: read the password from the first line of stdin (scripts)")
    p.add_argument("--parent-pipe", action="store_true",
                   help="serve: exit when stdin closes (how the daemon stops its child, even "
                        "when the daemon itself is killed)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="serve: lower this process's CPU priority by N (the daemon uses 10)")
    p.set_defaults(func=run)


def _passwd(args: argparse.Namespace) -> int:
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("qkd-station web passwd: the passwords differ", file=sys.stderr)
            return 2
    if len(password) < 8:
        print("qkd-station web passwd: use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


async def _serve(cfg, parent_pipe: bool) -> int:  # type: ignore[no-untyped-def]
    from station.web.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher: asyncio.Task[None] | None = None
    if parent_pipe:
        async def watch_parent() -> None:
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while await reader.read(4096):
                pass
            log.info("the daemon went away: stopping the web view")
            stop.set()
        watcher = loop.create_task(watch_parent(), name="web-parent-pipe")
    try:
        await serve(cfg, stop)
    except OSError as exc:
        log.error("the web view cannot listen on %s:%d: %s", cfg.web.host, cfg.web.port, exc.strerror or exc)
        return 3
    finally:
        if watcher is not None:
            watcher.cancel()
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "passwd":
        return _passwd(args)
    from station.log import setup_logging

    cfg = load_or_exit(args.config)
    setup_logging(cfg.log_level)
    if args.nice:
        os.nice(args.nice)
    return asyncio.run(_serve(cfg, args.parent_pipe))
