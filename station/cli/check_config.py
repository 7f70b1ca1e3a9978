"""``qkd-station check-config FILE``: validate a config and summarise it.

Exit 0 when the daemon could start with it; 2 with ``path: value: reason`` lines when a
value is invalid or the machine lacks what it names (files, folders: see
:mod:`station.config.preflight`).
"""

from __future__ import annotations

import argparse
import sys

from station.config import ConfigError, StationConfig, load_config
from station.config.preflight import preflight


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check-config", help="validate a config file and summarise it")
    p.add_argument("file", help="the TOML config file")
    p.set_defaults(func=run)


def summary(cfg: StationConfig) -> str:
    """A one-screen summary of what this config will do."""
    site = cfg.site
    clock = cfg.clock
    clock_txt = "real UTC" if clock.mode == "real" else (
        f"simulated from {clock.start:%Y-%m-%dT%H:%M:%SZ} at speed {clock.speed}"
    )
    mqtt = cfg.mqtt
    broker = f"{mqtt.host}:{mqtt.port}" + (" (embedded)" if mqtt.embedded else "")
    security = "TLS" if mqtt.tls else "plain TCP"
    if mqtt.username:
        security += f", user {mqtt.username}"
    sats = ", ".join(
        f"{s.name or s.norad_id} (prio {s.priority:g})" for s in cfg.orbit.satellites
    ) or "all in the catalog"
    lines = [
        f"station    {cfg.station_id}: {site.name}",
        f"site       {site.latitude_deg:.5f}°, {site.longitude_deg:.5f}°, {site.height_m:.0f} m; "
        f"horizon mask {len(site.horizon_mask)} point(s)",
        f"clock      {clock_txt}",
        f"state dir  {cfg.state_dir}",
        f"mqtt       {broker}, {security}, topics {cfg.topic_prefix}/…",
        f"elements   {len(cfg.orbit.element_sources)} source(s); satellites: {sats}",
        f"mount      {cfg.mount.backend}",
        f"tagger     {cfg.timetagger.backend}",
        f"stream     {cfg.events.stream_endpoint}, "
        + (f"CURVE, {len(cfg.events.curve_consumer_key_files)} consumer key source(s)"
           if cfg.events.curve_secret_key_file else "no CURVE (loopback only)"),
        f"log level  {cfg.log_level}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems = preflight(cfg)
    if problems:
        print(ConfigError(args.file, problems), file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    print(summary(cfg))
    return 0
