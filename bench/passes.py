"""Pass search speed: our vectorised search vs a straightforward skyfield find_events loop.

    .venv/bin/python bench/passes.py [--satellites 200] [--days 7] [--seed 1]

Generates varied but valid element sets (LEO 350-1500 km, a few MEO; inclinations 0-110°;
eccentricities up to 0.05), searches one station (Xinglong, flat 10° mask) with both
methods, checks the pass lists are identical (same passes; AOS/TCA/LOS within 1 s; peak
elevation within 0.01°), and prints the times and their ratio.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sgp4.api import WGS72, Satrec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from station.config.site import SiteConfig
from station.orbit.catalog import ElementSet
from station.orbit.geometry import load_timescale, site_position
from station.orbit.passes import find_passes

EPOCH = datetime(2024, 10, 15, tzinfo=UTC)
SITE = SiteConfig(
    name="Xinglong (NAOC)", latitude_deg=40.39587, longitude_deg=117.57746, height_m=890,
    horizon_mask=[(0.0, 10.0)],
)


def generate(n: int, seed: int) -> list[ElementSet]:
    """``n`` random, valid element sets with epoch 2024-10-15 (catalog numbers 90000+)."""
    rng = np.random.default_rng(seed)
    out = []
    epoch_days = (EPOCH - datetime(1949, 12, 31, tzinfo=UTC)).total_seconds() / 86400.0
    mu = 398600.8  # WGS72, km^3/s^2
    for i in range(n):
        if i % 25 == 24:  # a few MEO navigation-like orbits
            alt_km = rng.uniform(8000, 20000)
        else:
            alt_km = rng.uniform(350, 1500)
        a_km = 6378.135 + alt_km
        n_rad_min = math.sqrt(mu / a_km**3) * 60.0
        sat = Satrec()
        sat.sgp4init(
            WGS72, "i", 90000 + i, epoch_days,
            float(rng.uniform(0, 1e-4)),  # bstar
            0.0, 0.0,
            float(rng.uniform(0, 0.05 if alt_km > 5000 else 0.01)),  # eccentricity
            float(rng.uniform(0, 2 * math.pi)),  # argument of perigee
            float(math.radians(rng.uniform(0, 110))),  # inclination
            float(rng.uniform(0, 2 * math.pi)),  # mean anomaly
            n_rad_min,
            float(rng.uniform(0, 2 * math.pi)),  # RAAN
        )
        out.append(ElementSet.from_satrec(sat, f"GEN-{i:03d}"))
    return out


def find_events_loop(sets: list[ElementSet], start_s: float, end_s: float, min_el_deg: float):
    """The straightforward way: skyfield's find_events per satellite, events paired up."""
    ts = load_timescale()
    topos = site_position(SITE)
    t0 = ts.from_datetime(datetime.fromtimestamp(start_s, tz=UTC))
    t1 = ts.from_datetime(datetime.fromtimestamp(end_s, tz=UTC))
    passes = []
    for es in sets:
        t, events = es.satellite.find_events(topos, t0, t1, altitude_degrees=min_el_deg)
        secs = (t.tt - t0.tt) * 86400.0 + start_s
        rise = None
        culm: list[tuple[float, float]] = []
        alts = None
        if len(t):
            alts = (es.satellite - topos).at(t).altaz()[0].degrees
        for k, ev in enumerate(events):
            if ev == 0:
                rise, culm = secs[k], []
            elif ev == 1:
                culm.append((secs[k], float(alts[k])))
            elif ev == 2 and rise is not None and culm:
                tca, el = max(culm, key=lambda c: c[1])
                passes.append((es.norad_id, rise, tca, secs[k], el))
                rise = None
    return passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--satellites", type=int, default=200)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs of each method")
    args = parser.parse_args()

    sets = generate(args.satellites, args.seed)
    start_s = EPOCH.timestamp()
    end_s = start_s + args.days * 86400.0
    print(f"{len(sets)} satellites, {args.days:g} days, station {SITE.name}, mask 10°")

    # Warm both paths up (first-call imports and table loads) on one satellite-day.
    find_passes(sets[:1], SITE, start_s, start_s + 86400)
    find_events_loop(sets[:1], start_s, start_s + 86400, 10.0)
    # Wall time, and this process's CPU time: on a machine shared with other jobs the
    # CPU time is the steadier figure (it does not count time spent descheduled).
    ours_s = ref_s = ours_cpu = ref_cpu = float("inf")
    for _ in range(max(1, args.repeat)):
        t, c = time.perf_counter(), time.process_time()
        ours = find_passes(sets, SITE, start_s, end_s)
        ours_s, ours_cpu = min(ours_s, time.perf_counter() - t), min(ours_cpu, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        ref = find_events_loop(sets, start_s, end_s, 10.0)
        ref_s, ref_cpu = min(ref_s, time.perf_counter() - t), min(ref_cpu, time.process_time() - c)

    # Compare complete passes inside the window (find_events does not report the rise
    # of a pass already up at the start, nor the set of one still up at the end).
    mine = sorted(
        (p.norad_id, p.aos_s, p.tca_s, p.los_s, p.max_el_deg)
        for p in ours.passes if p.aos_s >= start_s and p.los_s <= end_s
    )
    ref = sorted(p for p in ref if p[1] >= start_s + 1 and p[3] <= end_s - 1)
    mine = [p for p in mine if start_s + 1 <= p[1] and p[3] <= end_s - 1]
    identical = len(mine) == len(ref)
    worst = [0.0, 0.0, 0.0, 0.0]
    higher = 0  # peaks where find_events' 0.5 s resolution misses the top and ours is higher
    if identical:
        for a, b in zip(mine, ref, strict=True):
            if a[0] != b[0] or max(abs(x - y) for x, y in zip(a[1:4], b[1:4], strict=True)) > 1.0:
                identical = False
                break
            for j, (x, y) in enumerate(zip(a[1:4], b[1:4], strict=True)):
                worst[j] = max(worst[j], abs(x - y))
            d_el = a[4] - b[4]
            if abs(d_el) <= 0.01:
                worst[3] = max(worst[3], abs(d_el))
            elif d_el > 0:
                higher += 1
            else:
                identical = False
    print(f"passes: ours {len(mine)}, find_events {len(ref)}; identical: {identical}")
    if identical:
        print(
            f"largest differences: AOS {worst[0]:.3f} s, TCA {worst[1]:.3f} s, LOS {worst[2]:.3f} s, "
            f"max el {worst[3]:.4f}°"
        )
        if higher:
            print(
                f"({higher} near-zenith peak(s) where ours is higher by > 0.01°: find_events stops "
                "refining at 0.5 s, where the elevation of an overhead pass still changes fast)"
            )
    print(f"{'':<24}{'wall':>9}  {'cpu':>9}")
    print(f"{'our search':<24}{ours_s:8.3f}s  {ours_cpu:8.3f}s")
    print(f"{'find_events loop':<24}{ref_s:8.3f}s  {ref_cpu:8.3f}s")
    print(f"{'ratio':<24}{ref_s / ours_s:8.1f}x  {ref_cpu / ours_cpu:8.1f}x   (target >= 5x)")
    if args.repeat > 1:
        print(f"(best of {args.repeat} runs each)")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
