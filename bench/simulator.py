"""How fast the simulated downlink generates events.

Two cases, each through the full async SimTimeTagger on an autojump SimClock (batches
generated in a worker thread, as in the station) and through the bare generator:

* a bright bench link (``lab`` preset, static geometry): the link itself gives
  >= 10 M detections/s; we print how many events per wall second the simulator makes;
* the Micius pass over Xinglong, 2016-12-19 16:49:58-16:54:30 UTC (273 s), Micius preset.

For each: simulated events, wall time, events generated per wall second, and the ratio of
simulated time to wall time (target for the Micius pass: >= 50x faster than real time).

Usage: .venv/bin/python bench/simulator.py [--lab-seconds S] [--pass-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from skyfield.api import EarthSatellite  # noqa: E402

from drivers.timetagger.base import Channel, LinkGeometry  # noqa: E402
from drivers.timetagger.link import StaticLinkGeometry  # noqa: E402
from drivers.timetagger.sim import DownlinkGenerator, SimOptions, SimTimeTagger  # noqa: E402
from station.clock import SimClock  # noqa: E402
from station.config.site import SiteConfig  # noqa: E402
from station.orbit.geometry import SatelliteLinkGeometry, load_timescale  # noqa: E402

PASS_START_S = datetime(2016, 12, 19, 16, 49, 58, tzinfo=UTC).timestamp()


def micius_geometry() -> SatelliteLinkGeometry:
    lines = (REPO / "config/elements/micius-2016-12-18.tle").read_text().strip().splitlines()
    satellite = EarthSatellite(lines[-2], lines[-1], "MICIUS", load_timescale())
    site = SiteConfig(name="Xinglong", latitude_deg=40.39587, longitude_deg=117.57746,
                      height_m=890, pressure_mbar=0)
    return SatelliteLinkGeometry(satellite, site)


async def through_tagger(options: SimOptions, geometry: LinkGeometry, start_s: float,
                         seconds: float) -> dict[str, Any]:
    clock = SimClock(start_s, speed=math.inf)
    tagger = SimTimeTagger(options, clock=clock)
    await tagger.connect()
    tagger.set_link(geometry)
    await tagger.start()
    events = detections = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    async for batch in tagger.batches():
        events += len(batch)
        detections += int(np.count_nonzero(batch.events["channel"] <= Channel.A))
        if batch.info.end_ps >= round(seconds * 1e12):
            await tagger.stop()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await tagger.close()
    return {"events": events, "detections": detections, "wall_s": wall, "cpu_s": cpu,
            "missed": tagger.totals["missed_events"]}


def through_generator(options: SimOptions, geometry: LinkGeometry, start_s: float,
                      seconds: float) -> dict[str, Any]:
    gen = DownlinkGenerator(options, round(start_s * 1e6) * 1_000_000)
    gen.set_geometry(geometry)
    batch_ps = round(options.batch_s * 1e12)
    n_batches = math.ceil(seconds / options.batch_s)
    events = detections = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for k in range(n_batches):
        out = gen.generate(k * batch_ps, (k + 1) * batch_ps, k)
        events += len(out.events)
        detections += int(np.count_nonzero(out.events["channel"] <= Channel.A))
    return {"events": events, "detections": detections,
            "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}


def row(name: str, path: str, seconds: float, r: dict[str, Any]) -> str:
    return (f"{name:<14} {path:<10} {seconds:>8.1f} {r['detections'] / seconds:>14,.0f} "
            f"{r['events']:>12,d} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} "
            f"{r['events'] / r['wall_s']:>14,.0f} {seconds / r['wall_s']:>9.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab-seconds", type=float, default=2.0)
    parser.add_argument("--pass-seconds", type=float, default=273.0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"cores {os.cpu_count()}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          "(other work on the machine slows these figures)")
    print(f"{'case':<14} {'path':<10} {'sim s':>8} {'detections/s':>14} {'events':>12} "
          f"{'wall s':>8} {'cpu s':>7} {'events/wall s':>14} {'sim:wall':>10}")
    lab = SimOptions(preset="lab", seed=1)
    bench = StaticLinkGeometry(0.001, 90.0)
    r = asyncio.run(through_tagger(lab, bench, PASS_START_S, args.lab_seconds))
    print(row("lab link", "tagger", args.lab_seconds, r))
    r = through_generator(lab, bench, PASS_START_S, args.lab_seconds)
    print(row("lab link", "generator", args.lab_seconds, r))
    micius = SimOptions(preset="micius", seed=2016)
    geometry = micius_geometry()
    r = asyncio.run(through_tagger(micius, geometry, PASS_START_S, args.pass_seconds))
    print(row("Micius pass", "tagger", args.pass_seconds, r))
    tagger_ratio = args.pass_seconds / r["wall_s"]
    r = through_generator(micius, micius_geometry(), PASS_START_S, args.pass_seconds)
    print(row("Micius pass", "generator", args.pass_seconds, r))
    verdict = "meets" if tagger_ratio >= 50 else "MISSES"
    print(f"Micius pass through the tagger: {tagger_ratio:.0f}x faster than real time "
          f"({verdict} the >= 50x target)")


if __name__ == "__main__":
    main()
