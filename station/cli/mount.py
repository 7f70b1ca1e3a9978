"""``qkd-station mount status|goto AZ EL|park|stop``: the mount, for operators and
commissioning, through the same safety gate the daemon uses.

Exit status: 0 done, 2 bad config, 3 refused by the safety gate (the reason is printed),
4 mount error (unreachable, rejected), 5 the move did not finish within ``--timeout-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import numpy as np

from drivers.mount.base import MountError
from station.cli._common import add_config_argument, load_or_exit
from station.clock import Clock, RealClock, SimClock
from station.config import StationConfig
from station.tracking import CommandRefused, GatedMount, Tracker, build_mount
from station.tracking.wrap import angle_between_deg

EXIT_REFUSED = 3
EXIT_MOUNT_ERROR = 4
EXIT_TIMEOUT = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mount", help="mount status, goto, park, stop (through the safety gate)",
        description="Drive the configured mount through the safety gate.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    status = verbs.add_parser("status", help="position, state, limits and the Sun")
    goto = verbs.add_parser("goto", help="slew to azimuth and elevation (degrees)")
    goto.add_argument("az_deg", type=float, metavar="AZ", help="azimuth, degrees (wrap-aware)")
    goto.add_argument("el_deg", type=float, metavar="EL", help="elevation, degrees")
    park = verbs.add_parser("park", help="go to the configured park position")
    stop = verbs.add_parser("stop", help="stop both axes")
    for sp in (status, goto, park, stop):
        add_config_argument(sp)
    for sp in (goto, park):
        sp.add_argument("--no-wait", action="store_true", help="return once the command is accepted")
        sp.add_argument("--timeout-s", type=float, default=300.0, metavar="S",
                        help="clock seconds to wait for the move to finish (default 300)")
    p.set_defaults(func=run)


def _clock(cfg: StationConfig) -> Clock:
    if cfg.clock.mode == "real":
        return RealClock()
    assert cfg.clock.start is not None
    return SimClock(cfg.clock.start, speed=cfg.clock.speed_factor)


def run(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    try:
        return asyncio.run(_run(args, cfg))
    except CommandRefused as exc:
        print(f"refused by the safety gate [{exc.rule}]: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    except (MountError, TimeoutError) as exc:
        print(f"mount error: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_MOUNT_ERROR
    except ValueError as exc:
        print(f"configuration: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, cfg: StationConfig) -> int:
    clock = _clock(cfg)
    gate = build_mount(cfg, clock)
    await gate.connect()
    try:
        if args.verb == "status":
            await _status(gate, cfg, clock)
            return 0
        if args.verb == "stop":
            await gate.stop()
            print("stopped")
            await _print_position(gate)
            return 0
        tracker = Tracker(gate, clock, cfg.tracking)
        if args.verb == "goto":
            await gate.slew_to(args.az_deg, args.el_deg)
            target = (args.az_deg, args.el_deg)
        else:
            if not await tracker.park():
                print(f"refused by the safety gate: {gate.last_refusal}; the mount was stopped",
                      file=sys.stderr)
                return EXIT_REFUSED
            target = (gate.park_az_deg, gate.park_el_deg)
        print(f"{args.verb}: accepted (az {target[0]:.4f}°, el {target[1]:.4f}°)")
        if args.no_wait:
            return 0
        if not await _wait_at(gate, clock, *target, timeout_s=args.timeout_s):
            await _print_position(gate)
            print(f"not there after {args.timeout_s:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
        await _print_position(gate)
        return 0
    finally:
        await gate.close()


async def _wait_at(gate: GatedMount, clock: Clock, az: float, el: float, *, timeout_s: float) -> bool:
    tol = max(gate.park_tolerance_deg, gate.capabilities.encoder_resolution_deg)
    end = clock.now_s() + timeout_s
    while True:
        pos = await gate.position()
        if abs(pos.az_deg - az) <= tol and abs(pos.el_deg - el) <= tol:
            if not (await gate.status()).moving:
                return True
        if clock.now_s() >= end:
            return False
        await clock.sleep(0.2)


async def _print_position(gate: GatedMount) -> None:
    pos = await gate.position()
    print(f"position   az {pos.az_deg:.4f}°, el {pos.el_deg:.4f}°"
          + ("  (parked)" if gate.is_parked(pos) else ""))


async def _status(gate: GatedMount, cfg: StationConfig, clock: Clock) -> None:
    pos = await gate.position()
    st = await gate.status()
    lim = gate.limits
    caps = gate.capabilities
    sun_az, sun_el, _ = gate.sun_altaz_at(clock.now_s())
    sun_sep = float(angle_between_deg(np.asarray(pos.az_deg), np.asarray(pos.el_deg), sun_az, sun_el))
    flags: list[Any] = [name for name in ("moving", "tracking", "parked") if getattr(st, name)]
    rows = [
        f"mount      {cfg.mount.backend} ({'connected' if st.connected else 'NOT connected'})"
        + (f", fault: {st.fault}" if st.fault else ""),
        f"time       {clock.now():%Y-%m-%dT%H:%M:%SZ} ({getattr(clock, 'source', 'real')} clock)",
        f"position   az {pos.az_deg:.4f}°, el {pos.el_deg:.4f}°"
        + (f"  [{', '.join(flags)}]" if flags else "  [idle]"),
        f"park       az {gate.park_az_deg:g}°, el {gate.park_el_deg:g}°"
        + ("  (here)" if gate.is_parked(pos) else ""),
        f"travel     az {lim.az_min_deg:g}…{lim.az_max_deg:g}°, el axis "
        f"{lim.el_axis_min_deg:g}…{lim.el_axis_max_deg:g}°"
        + ("  (over the zenith)" if lim.el_over_zenith else ""),
        f"floor      el >= {lim.min_el_deg:g}° and the horizon mask "
        f"({len(cfg.site.horizon_mask)} point(s))",
        f"rates      az {lim.az_rate_deg_s:g}°/s, el {lim.el_rate_deg_s:g}°/s; accel "
        f"{caps.az.max_accel_deg_s2:g}/{caps.el.max_accel_deg_s2:g}°/s²",
        f"sun        az {sun_az:.2f}°, el {sun_el:.2f}°; {sun_sep:.1f}° from the pointing "
        f"(exclusion {lim.sun_exclusion_deg:g}°)",
    ]
    print("\n".join(rows))
