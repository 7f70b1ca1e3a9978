"""Tracking real passes with the simulated mount on the simulated clock.

Bound for the Micius pass (sim defaults: 10°/s, 10°/s², 100 ms command latency, encoder
0.5" RMS noise and 0.1" steps): the satellite needs at most ~1°/s and ~0.05°/s², far
inside the dynamics, and the controller feeds the streamed rate forward, so what is
left is encoder noise plus the rate-estimate error of the streamed targets: after
acquisition RMS < 5", 95 % of samples < 5", and none above the acquisition threshold
(120"): the largest errors are the first seconds of motion out of the rise point, where
the 100 ms latency lets the satellite get ahead (the issue's example bound: 30" RMS).
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from skyfield.api import EarthSatellite

from drivers.mount.sim import SimMount
from station.clock import SimClock
from station.config.mount import SafetyConfig, TrackingConfig
from station.config.site import SiteConfig
from station.tracking import (
    GatedMount,
    Tracker,
    TrackingLost,
    TrackingSample,
    WrapError,
    plan_track,
)
from tests.tracking.conftest import MICIUS_AOS, MICIUS_LOS, pass_window, satellite


def sim_gate(clock: SimClock, site: SiteConfig, **options: object) -> tuple[GatedMount, SimMount]:
    backend = SimMount(SimMount.Options(**{"command_latency_s": 0.1, **options}), clock=clock)
    gate = GatedMount(backend, site=site, safety=SafetyConfig(), clock=clock,
                      park_az_deg=backend.options.park_az_deg,
                      park_el_deg=backend.options.park_el_deg)
    return gate, backend


async def collect(sub: object, into: list[TrackingSample]) -> None:
    async for sample in sub:  # type: ignore[attr-defined]
        into.append(sample)


@pytest.mark.parametrize("mode", ["stream", "program"])
async def test_micius_pass_tracked_within_the_bound(
    micius: EarthSatellite, xinglong: SiteConfig, mode: str
) -> None:
    clock = SimClock(MICIUS_AOS - 120, speed=math.inf)
    gate, mount = sim_gate(clock, xinglong)
    await gate.connect()
    cfg = TrackingConfig(mode=mode)
    # The program-track run covers the published QKD window only, to keep the test short.
    aos, los = (MICIUS_AOS, MICIUS_LOS) if mode == "stream" else (
        datetime(2016, 12, 19, 16, 49, 58, tzinfo=UTC).timestamp(),
        datetime(2016, 12, 19, 16, 54, 30, tzinfo=UTC).timestamp())
    plan = await asyncio.to_thread(plan_track, micius, xinglong, aos, los, limits=gate.limits,
                                   tracking=cfg, from_az_deg=0.0, pass_id="41731-micius")
    assert plan.keyhole == "none" and plan.expected_error_deg.max() < 1e-6
    tracker = Tracker(gate, clock, cfg)
    samples: list[TrackingSample] = []
    sub = tracker.subscribe()
    reader = asyncio.create_task(collect(sub, samples))
    try:
        reached_s = await tracker.preposition(plan)
        assert reached_s < plan.aos_s                    # on the rise point before AOS
        stats = await tracker.track(plan)
        assert await tracker.wait_parked(60.0)
    finally:
        tracker.close()
        await reader
    assert stats.outcome == "complete" and stats.parked
    assert stats.acquired_at_s is not None and stats.acquired_at_s - plan.aos_s < 2.0
    assert stats.rms_error_arcsec < 5.0 and stats.p95_error_arcsec < 5.0
    assert stats.max_error_arcsec < cfg.acquisition_error_arcsec
    assert stats.refused_commands == 0 and stats.telemetry_dropped == 0
    if mode == "program":
        assert stats.chunks_uploaded >= plan.duration_s / cfg.program_chunk_s
    tracking = [s for s in samples if s.phase == "tracking"]
    assert len(tracking) == stats.ticks and samples[0].phase == "preposition"
    assert tracking[0].time_s >= plan.aos_s and tracking[-1].time_s <= plan.los_s + 0.2
    assert mount.commands[-1].kind == "park"


async def test_slow_telemetry_reader_loses_oldest_samples_counted(
    micius: EarthSatellite, xinglong: SiteConfig
) -> None:
    clock = SimClock(MICIUS_AOS - 10, manual=True)
    gate, _ = sim_gate(clock, xinglong)
    await gate.connect()
    cfg = TrackingConfig(mode="stream")
    plan = plan_track(micius, xinglong, MICIUS_AOS, MICIUS_AOS + 5, limits=gate.limits,
                      tracking=cfg, from_az_deg=0.0)
    tracker = Tracker(gate, clock, cfg)
    sub = tracker.subscribe(maxsize=10)             # nobody reads it during the pass
    task = asyncio.create_task(tracker.track(plan))
    await clock.advance(30)
    stats = await task
    assert stats.ticks > 50
    assert sub.dropped == stats.telemetry_dropped == stats.ticks - 10
    tracker.close()
    kept = [s async for s in sub]
    assert len(kept) == 9                            # one slot went to the end marker
    assert kept[-1].phase == "tracking"


async def test_cancelled_tracking_parks(micius: EarthSatellite, xinglong: SiteConfig) -> None:
    clock = SimClock(MICIUS_AOS - 5, manual=True)
    gate, mount = sim_gate(clock, xinglong)
    await gate.connect()
    cfg = TrackingConfig(mode="stream")
    plan = plan_track(micius, xinglong, MICIUS_AOS, MICIUS_LOS, limits=gate.limits,
                      tracking=cfg, from_az_deg=0.0)
    tracker = Tracker(gate, clock, cfg)
    task = asyncio.create_task(tracker.track(plan))
    await clock.advance(40)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracker.stats.outcome == "cancelled" and tracker.stats.parked
    assert mount.commands[-1].kind == "park"
    assert tracker.stats.ticks > 100


async def test_stuck_axis_is_tracking_loss_and_parks(micius: EarthSatellite, xinglong: SiteConfig) -> None:
    clock = SimClock(MICIUS_AOS - 60, speed=math.inf)
    gate, mount = sim_gate(clock, xinglong)
    await gate.connect()
    cfg = TrackingConfig(mode="stream", loss_error_deg=0.5, loss_duration_s=2.0)
    plan = plan_track(micius, xinglong, MICIUS_AOS, MICIUS_LOS, limits=gate.limits,
                      tracking=cfg, from_az_deg=0.0)
    tracker = Tracker(gate, clock, cfg)
    await tracker.preposition(plan)
    mount.inject_stuck_axis("az", at_s=MICIUS_AOS + 100, reported=False)
    with pytest.raises(TrackingLost) as info:
        await tracker.track(plan)
    stats = info.value.stats
    assert stats.outcome == "lost" and stats.parked
    # Lost 0.5° later than the jam plus 2 s: at ~0.5-1°/s of azimuth that is within ~5 s.
    assert MICIUS_AOS + 100 < clock.now_s() < MICIUS_AOS + 110
    assert mount.commands[-1].kind == "park"


# -- cable wrap ---------------------------------------------------------------------------

@pytest.fixture
def arctic() -> SiteConfig:
    """A site at 70° N where Micius passes north of the station, crossing azimuth 0."""
    return SiteConfig(name="70N", latitude_deg=70.0, longitude_deg=117.57746, height_m=890,
                      horizon_mask=[(0.0, 10.0)], temperature_C=-5, pressure_mbar=900)


async def test_north_crossing_pass_tracked_on_one_wrap_turn(
    micius: EarthSatellite, arctic: SiteConfig
) -> None:
    start = datetime(2016, 12, 19, 22, 53, tzinfo=UTC).timestamp()
    aos, los = pass_window(micius, arctic, start, 900)
    clock = SimClock(aos - 100, speed=math.inf)
    # A rotator-style travel 0…450°: the pass (azimuth 42° → 0° → 342°) only fits as
    # 402° → 342° on the upper turn.
    gate, mount = sim_gate(clock, arctic, az_min_deg=0.0, az_max_deg=450.0)
    await gate.connect()
    cfg = TrackingConfig(mode="stream")
    plan = plan_track(micius, arctic, aos, los, limits=gate.limits, tracking=cfg, from_az_deg=0.0)
    assert plan.wrap_offset_deg == 360.0
    sky = np.mod(plan.sky_az_deg, 360.0)
    assert sky.max() > 350 and sky.min() < 10              # it does cross north
    tracker = Tracker(gate, clock, cfg)
    samples: list[TrackingSample] = []
    sub = tracker.subscribe()
    reader = asyncio.create_task(collect(sub, samples))
    try:
        await tracker.preposition(plan)
        n_before = len(mount.commands)
        stats = await tracker.track(plan)
    finally:
        tracker.close()
        await reader
    assert stats.outcome == "complete" and stats.refused_commands == 0
    assert stats.rms_error_arcsec < 5.0
    slews = [c.az_deg for c in mount.commands[n_before:] if c.kind == "slew"]
    assert stats.ticks - 3 <= len(slews) <= stats.ticks     # none past LOS
    assert stats.parked            # direct park crosses the Sun's side: rises first
    assert min(slews) > 340 and max(slews) < 405          # never unwound to 0…60
    assert np.max(np.abs(np.diff(slews))) < 0.2            # no jump between targets
    actual = np.array([s.actual_az_deg for s in samples if s.phase == "tracking"])
    assert np.max(np.abs(np.diff(actual))) < 0.2


def test_pass_that_fits_no_wrap_turn_is_refused_before_it_starts(
    micius: EarthSatellite, arctic: SiteConfig
) -> None:
    start = datetime(2016, 12, 19, 22, 53, tzinfo=UTC).timestamp()
    aos, los = pass_window(micius, arctic, start, 900)
    gate, _ = sim_gate(SimClock(aos, manual=True), arctic, az_min_deg=0.0, az_max_deg=360.0)
    with pytest.raises(WrapError, match="does not fit on one wrap turn"):
        plan_track(micius, arctic, aos, los, limits=gate.limits, tracking=TrackingConfig())


# -- zenith keyhole -------------------------------------------------------------------------

@pytest.fixture
def keyhole_pass(xinglong: SiteConfig) -> tuple[EarthSatellite, float, float]:
    """The synthetic microsatellite culminating at 88.6° over Xinglong, 2024-10-17."""
    sat = satellite("sim-microsat-2024-10-15.tle")
    aos, los = pass_window(sat, xinglong, datetime(2024, 10, 17, 16, 55, tzinfo=UTC).timestamp(), 900)
    return sat, aos, los


@pytest.mark.parametrize("el_max_deg", [90.0, 180.0], ids=["rate-limited", "flip"])
async def test_keyhole_pass_behaves_as_documented(
    keyhole_pass: tuple[EarthSatellite, float, float], xinglong: SiteConfig, el_max_deg: float
) -> None:
    sat, aos, los = keyhole_pass
    clock = SimClock(aos, speed=math.inf)
    gate, mount = sim_gate(clock, xinglong, el_max_deg=el_max_deg)
    await gate.connect()
    cfg = TrackingConfig(mode="stream")
    full = plan_track(sat, xinglong, aos, los, limits=gate.limits, tracking=cfg, from_az_deg=0.0)
    zenith_distance = 90.0 - full.max_el_deg
    assert 1.0 < zenith_distance < 2.0
    az_rate, _ = full.max_rates_deg_s()
    assert az_rate <= 0.9 * 10.0 + 1e-4                    # the planner kept the rate margin
    if el_max_deg > 90:
        # docs/tracking.md: over the zenith the error is at most the zenith distance.
        assert full.keyhole == "flip" and full.el_deg.max() > 160
        assert full.expected_error_deg.max() <= zenith_distance + 0.01
    else:
        # docs/tracking.md: the azimuth lags; this mount (10°/s) leaves about 2.6°.
        assert full.keyhole == "rate_limited"
        assert 2.0 < full.expected_error_deg.max() < 3.0
    # Track the two minutes around culmination.
    tca = float(full.time_s[np.argmax(full.sky_el_deg)])
    plan = full.window(tca - 60, tca + 60)
    tracker = Tracker(gate, clock, cfg)
    samples: list[TrackingSample] = []
    sub = tracker.subscribe()
    reader = asyncio.create_task(collect(sub, samples))
    try:
        await tracker.preposition(plan)
        stats = await tracker.track(plan)
    finally:
        tracker.close()
        await reader
    assert stats.outcome == "complete" and stats.refused_commands == 0
    # The mount follows the planned (rate- and acceleration-limited) path closely ...
    assert stats.rms_error_arcsec < 60.0
    # ... and its error against the satellite is the plan's own expected error.
    sky = np.array([s.sky_error_arcsec for s in samples if s.phase == "tracking"]) / 3600.0
    assert abs(sky.max() - plan.expected_error_deg.max()) < 0.1
    if el_max_deg > 90:
        assert max(s.actual_el_deg for s in samples) > 100   # really went over the top
