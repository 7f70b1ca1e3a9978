"""Helpers shared by the sub-command modules."""

from __future__ import annotations

import argparse
import os
import sys

from station.config import ConfigError, StationConfig, load_config

DEFAULT_CONFIG = os.environ.get("QKD_STATION_CONFIG", "config/sim.toml")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, metavar="FILE",
        help=f"station config file (default: {DEFAULT_CONFIG}; env QKD_STATION_CONFIG)",
    )


def load_or_exit(path: str) -> StationConfig:
    """Load the config, or print every problem and exit with status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
