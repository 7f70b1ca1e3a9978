# ruff: noqa: E402  (BLAS thread limits must be set before numpy is imported)
"""Tracking control-loop timing: how late is each command against its schedule?

    .venv/bin/python bench/tracking.py [--seconds 10]

The real tracking loop (Tracker -> GatedMount -> SimMount, streamed targets, telemetry)
runs on the real clock at 20 and 50 Hz, first idle, then with a second thread doing heavy
numpy work (matrix products and sorts) in the same process. For every tick the lateness
of the command (command time minus scheduled tick time: the wake-up delay plus the
position read and the gate's checks) is taken from the telemetry stream; p50, p99 and
max are printed side by side, with the load/idle ratio. Target: p99 < 5 ms at 50 Hz
under load.

Loads: ``numpy`` is one thread doing matrix products, sorts and ufuncs; BLAS is limited
to one thread (set before numpy loads: a BLAS pool on every core starves any process, the
event loop included). ``numpy-nice`` is the same thread at nice +10, as the station runs
its own worker threads (Linux threads have their own nice value).

The track is the Micius 2016-12-19 pass moved to now and turned in azimuth away from
today's Sun, so the gate's Sun check runs on real data and passes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skyfield.api import EarthSatellite

from drivers.mount.sim import SimMount
from station.clock import RealClock
from station.config.mount import SafetyConfig, TrackingConfig
from station.config.site import SiteConfig
from station.daemon.app import GIL_SWITCH_INTERVAL_S
from station.orbit.geometry import load_timescale, sun_altaz
from station.tracking import GatedMount, Tracker, TrackingSample, plan_track

REPO = Path(__file__).resolve().parent.parent
SITE = SiteConfig(name="Xinglong (NAOC)", latitude_deg=40.39587, longitude_deg=117.57746,
                  height_m=890, horizon_mask=[(0.0, 10.0)], temperature_C=-5, pressure_mbar=900)
MICIUS_AOS = 1482166123.0  # 2016-12-19T16:48:43Z
MICIUS_LOS = 1482166541.0


def numpy_load(stop: threading.Event, counter: list[int], nice: int) -> None:
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    rng = np.random.default_rng(0)
    a = rng.random((400, 400))
    x = rng.random(500_000)
    while not stop.is_set():
        b = a @ a
        np.sort(x)
        np.sqrt(x) * np.sin(x)
        a = b / np.abs(b).max()
        counter[0] += 1


def micius_now(limits_src: GatedMount, seconds: float, start_s: float) -> object:
    name, l1, l2 = (REPO / "config/elements/micius-2016-12-18.tle").read_text().splitlines()[:3]
    sat = EarthSatellite(l1, l2, name, load_timescale())
    cfg = TrackingConfig()
    plan = plan_track(sat, SITE, MICIUS_AOS, MICIUS_LOS, limits=limits_src.limits, tracking=cfg,
                      from_az_deg=0.0)
    # The fastest stretch of the pass (culmination), starting now.
    tca = float(plan.time_s[np.argmax(plan.sky_el_deg)])
    plan = plan.window(tca - seconds / 2 - 1, tca + seconds / 2 + 1)
    plan = plan.shifted(start_s - plan.aos_s)
    # Turn it in azimuth to face away from today's Sun (wrap turn kept inside -270…270).
    sun_az, _ = sun_altaz(SITE, np.array([start_s]))
    mid_az = float(np.mean(plan.az_deg))
    turn = float((sun_az[0] + 180.0 - mid_az + 180.0) % 360.0 - 180.0)
    return replace(plan, az_deg=plan.az_deg + turn, sky_az_deg=plan.sky_az_deg + turn)


def gated_sim(clock: RealClock, **options: float) -> GatedMount:
    backend = SimMount(SimMount.Options(command_latency_s=0.0, **options), clock=clock)
    return GatedMount(backend, site=SITE, safety=SafetyConfig(), clock=clock,
                      park_az_deg=0.0, park_el_deg=90.0)


async def one_case(rate_hz: float, seconds: float) -> dict[str, float]:
    clock = RealClock()
    plan = micius_now(gated_sim(clock), seconds, clock.now_s() + 2.0)
    # The mount starts on the rise point: no minutes of slewing before each case.
    start_az, start_el = plan.start  # type: ignore[attr-defined]
    gate = gated_sim(clock, start_az_deg=start_az, start_el_deg=start_el)
    await gate.connect()
    cfg = TrackingConfig(rate_hz=rate_hz, mode="stream", park_after_pass=False)
    tracker = Tracker(gate, clock, cfg)
    samples: list[TrackingSample] = []
    sub = tracker.subscribe(maxsize=100_000)

    async def reader() -> None:
        async for s in sub:
            samples.append(s)

    task = asyncio.create_task(reader())
    await tracker.preposition(plan)  # type: ignore[arg-type]
    stats = await tracker.track(plan)  # type: ignore[arg-type]
    tracker.close()
    await task
    late_ms = np.array([s.lateness_s for s in samples if s.phase == "tracking"]) * 1e3
    return {"ticks": float(stats.ticks), "skipped": float(stats.skipped_ticks),
            "p50": float(np.percentile(late_ms, 50)), "p99": float(np.percentile(late_ms, 99)),
            "max": float(late_ms.max()), "refused": float(stats.refused_commands),
            "rms": stats.rms_error_arcsec}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="tracking time per case")
    ap.add_argument("--switch-interval-ms", type=float, default=GIL_SWITCH_INTERVAL_S * 1e3,
                    help="sys.setswitchinterval for the run in ms (default: the daemon's, "
                         f"{GIL_SWITCH_INTERVAL_S * 1e3:g} ms; Python's own is 5 ms)")
    args = ap.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    print(f"tracking loop lateness, real clock, {args.seconds:g} s per case, "
          f"{os.cpu_count()} CPUs (shared: other work on the machine shows up here), "
          f"GIL switch interval {sys.getswitchinterval() * 1e3:g} ms")
    rows = []
    for rate in (20.0, 50.0):
        for load in ("idle", "numpy", "numpy-nice"):
            stop = threading.Event()
            counter = [0]
            nice = 10 if load == "numpy-nice" else 0
            worker = threading.Thread(target=numpy_load, args=(stop, counter, nice), daemon=True)
            if load != "idle":
                worker.start()
            t0 = time.perf_counter()
            try:
                r = asyncio.run(one_case(rate, args.seconds))
            finally:
                stop.set()
                if worker.is_alive():
                    worker.join()
            r["load_iter_s"] = counter[0] / (time.perf_counter() - t0)
            rows.append((rate, load, r))
    print(f"{'rate':>5} {'load':>6} {'ticks':>6} {'skipped':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'refused':>7} {'rms_as':>6} {'numpy it/s':>10}")
    for rate, load, r in rows:
        print(f"{rate:5.0f} {load:>6} {r['ticks']:6.0f} {r['skipped']:7.0f} {r['p50']:7.2f} "
              f"{r['p99']:7.2f} {r['max']:7.2f} {r['refused']:7.0f} {r['rms']:6.1f} "
              f"{r['load_iter_s']:10.1f}")
    by = {(rate, load): r for rate, load, r in rows}
    for rate in (20.0, 50.0):
        idle = by[(rate, "idle")]
        for load in ("numpy", "numpy-nice"):
            loaded = by[(rate, load)]
            print(f"{rate:.0f} Hz {load:>10}: p99 load/idle = "
                  f"{loaded['p99'] / max(idle['p99'], 1e-9):.1f}x, max load/idle = "
                  f"{loaded['max'] / max(idle['max'], 1e-9):.1f}x")
    for load in ("numpy", "numpy-nice"):
        p99 = by[(50.0, load)]["p99"]
        print(f"target p99 < 5 ms at 50 Hz under load ({load}): {p99:.2f} ms -> "
              f"{'met' if p99 < 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
