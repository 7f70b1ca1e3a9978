"""``qkd-station run --config FILE``: the daemon."""

from __future__ import annotations

import argparse

from station.cli._common import add_config_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run the station daemon (until SIGTERM/Ctrl-C)")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.daemon.app import run_daemon

    return run_daemon(args.config)
