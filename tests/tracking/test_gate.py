"""The safety gate: each rule refuses what it must and nothing refused reaches the mount.

The property tests drive a real :class:`SimMount` (its dynamics on a manual clock) through
the gate with random limits, horizon masks, Sun positions and command sequences, and
check with an independent brute-force checker that (1) every command the controller
received is allowed, (2) the mount's true position, sampled every 0.1 s of its motion,
never enters a forbidden direction, and (3) streamed and program-track rates stay within
the limits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from drivers.mount.base import TrackPoint
from drivers.mount.sim import SimMount
from station.clock import SimClock
from station.config.mount import SafetyConfig
from station.config.site import SiteConfig
from station.orbit.geometry import angular_separation_deg
from station.tracking.gate import CommandRefused, GatedMount, Rule, box_sun_distance_deg
from tests.tracking.conftest import fixed_sun

T0 = 1_700_000_000.0


class RecordingSimMount(SimMount):
    """The real simulated mount, noting every command it receives and when."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, float, Any]] = []
        self.op = ""

    async def slew_to(self, az_deg: float, el_deg: float) -> None:
        self.received.append((self.op or "slew", self.clock.now_s(), (az_deg, el_deg)))
        await super().slew_to(az_deg, el_deg)

    async def load_track(self, points: Any) -> None:
        self.received.append(("program", self.clock.now_s(), list(points)))
        await super().load_track(points)

    async def park(self) -> None:
        o = self.options
        self.received.append(("park", self.clock.now_s(), (o.park_az_deg, o.park_el_deg)))
        await super().park()


def site_with(mask: list[tuple[float, float]]) -> SiteConfig:
    return SiteConfig(name="t", latitude_deg=40.0, longitude_deg=117.0, height_m=100,
                      horizon_mask=mask, pressure_mbar=0)


def make(clock: SimClock, *, mask: list[tuple[float, float]] | None = None,
         sun: tuple[float, float] = (180.0, -40.0), safety: SafetyConfig | None = None,
         park: tuple[float, float] = (0.0, 90.0), **options: Any) -> tuple[GatedMount, RecordingSimMount]:
    opts = {"encoder_noise_deg": 0.0, "encoder_resolution_deg": 0.0, **options}
    backend = RecordingSimMount(SimMount.Options(**opts), clock=clock)
    gate = GatedMount(backend, site=site_with(mask or [(0.0, 10.0)]),
                      safety=safety or SafetyConfig(), clock=clock,
                      park_az_deg=park[0], park_el_deg=park[1], sun_altaz=fixed_sun(*sun))
    return gate, backend


# -- one rule at a time ------------------------------------------------------------------

async def test_each_rule_refuses_and_nothing_reaches_the_mount() -> None:
    clock = SimClock(T0, manual=True)
    gate, mount = make(clock, mask=[(0.0, 10.0), (90.0, 30.0), (180.0, 10.0), (270.0, 10.0)],
                       sun=(270.0, 20.0), safety=SafetyConfig(min_el_deg=5.0, az_max_deg=200.0))
    await gate.connect()
    cases = [
        ((float("nan"), 45.0), Rule.NOT_FINITE),
        ((250.0, 45.0), Rule.AZIMUTH),          # beyond the configured 200°
        ((-300.0, 45.0), Rule.AZIMUTH),         # beyond the sim's -270° wrap stop
        ((10.0, 95.0), Rule.ELEVATION),         # sim cannot flip over the zenith
        ((0.0, 3.0), Rule.ELEVATION),           # under safety.min_el_deg
        ((90.0, 25.0), Rule.HORIZON),           # under the 30° mask bump at az 90
        ((-90.0, 30.0), Rule.SUN),              # 10° from the Sun at az 270, el 20
    ]
    for (az, el), rule in cases:
        with pytest.raises(CommandRefused) as info:
            await gate.slew_to(az, el)
        assert info.value.rule == rule, (az, el, info.value)
        assert info.value.reason
    assert mount.received == []
    assert gate.refused_count == len(cases)
    # Allowed ones do reach it.
    await gate.slew_to(0.0, 45.0)
    assert mount.received[-1][2] == (0.0, 45.0)


async def test_path_through_the_sun_or_under_the_mask_is_refused() -> None:
    clock = SimClock(T0, manual=True)
    gate, mount = make(clock, mask=[(0.0, 10.0), (90.0, 40.0), (100.0, 10.0)], sun=(180.0, 30.0),
                       start_az_deg=120.0, start_el_deg=30.0)
    await gate.connect()
    # Both ends are fine, but the sweep through azimuth 180 at el 30 crosses the Sun.
    with pytest.raises(CommandRefused) as info:
        await gate.slew_to(240.0, 30.0)
    assert info.value.rule == Rule.SUN
    # Both ends are above the mask, the sweep at el 30 passes the 40° bump at az 90.
    with pytest.raises(CommandRefused) as info:
        await gate.slew_to(60.0, 30.0)
    assert info.value.rule == Rule.HORIZON
    assert mount.received == []
    # In two legs over the top it is allowed.
    await gate.slew_to(120.0, 60.0)
    await clock.advance(20)
    await gate.slew_to(60.0, 60.0)
    assert len(mount.received) == 2


async def test_stream_rate_and_order() -> None:
    clock = SimClock(T0, manual=True)
    gate, mount = make(clock, safety=SafetyConfig(max_az_rate_deg_s=2.0), start_el_deg=45.0)
    await gate.connect()
    t = clock.now_s()
    await gate.track_to(0.0, 45.0, t)
    await clock.advance(0.1)
    await gate.track_to(0.15, 45.0, t + 0.1)           # 1.5°/s: fine
    await clock.advance(0.1)
    with pytest.raises(CommandRefused) as info:
        await gate.track_to(0.5, 45.0, t + 0.2)        # 3.5°/s > 2°/s
    assert info.value.rule == Rule.RATE
    with pytest.raises(CommandRefused) as info:
        await gate.track_to(0.2, 45.0, t + 0.05)       # earlier than the last target
    assert info.value.rule == Rule.MALFORMED
    assert len(mount.received) == 2


async def test_stream_extrapolation_under_the_horizon_is_refused() -> None:
    clock = SimClock(T0, manual=True)
    gate, mount = make(clock, start_az_deg=100.0, start_el_deg=11.0)
    await gate.connect()
    t = clock.now_s()
    # Setting at 1°/s, 0.5° above the 10° horizon: one more second of extrapolation is under it.
    await gate.track_to(100.0, 11.0, t)
    await clock.advance(0.1)
    with pytest.raises(CommandRefused) as info:
        await gate.track_to(100.0, 10.9, t + 0.1)
    assert info.value.rule == Rule.HORIZON
    assert len(mount.received) == 1


async def test_program_track_checks_every_segment() -> None:
    clock = SimClock(T0, manual=True)
    gate, mount = make(clock, sun=(90.0, 40.0), start_az_deg=0.0, start_el_deg=40.0)
    await gate.connect()
    t = clock.now_s()
    through_sun = [TrackPoint(t + i, 20.0 * i, 40.0) for i in range(9)]  # az 0 → 160 at 20°/s
    with pytest.raises(CommandRefused) as info:
        await gate.load_track(through_sun)
    assert info.value.rule == Rule.RATE            # 20°/s beats the sim's 10°/s first
    slow = [TrackPoint(t + 4 * i, 20.0 * i, 40.0) for i in range(9)]
    with pytest.raises(CommandRefused) as info:
        await gate.load_track(slow)
    assert info.value.rule == Rule.SUN
    away = [TrackPoint(t + 4 * i, -20.0 * i, 40.0) for i in range(9)]
    await gate.load_track(away)
    assert [r[0] for r in mount.received] == ["program"]


async def test_park_is_checked_and_uses_a_safe_move() -> None:
    clock = SimClock(T0, manual=True)
    # The Sun 20° from the zenith: parking at the zenith would look into it.
    gate, mount = make(clock, sun=(0.0, 70.0), start_az_deg=180.0, start_el_deg=30.0)
    await gate.connect()
    with pytest.raises(CommandRefused) as info:
        await gate.park()
    assert info.value.rule == Rule.SUN
    await gate.stop()                               # stop is never refused
    assert mount.received == []
    # A park position under the horizon mask is a configuration error.
    with pytest.raises(CommandRefused):
        make(clock, park=(0.0, 5.0))


def test_box_sun_distance_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        a0 = rng.uniform(-300, 300)
        a1 = a0 + rng.uniform(0, 200)
        e0 = rng.uniform(0, 170)
        e1 = min(180.0, e0 + rng.uniform(0, 60))
        saz, sel = rng.uniform(0, 360), rng.uniform(-30, 90)
        got = box_sun_distance_deg(a0, a1, e0, e1, saz, sel)
        aa, ee = np.meshgrid(np.linspace(a0, a1, 400), np.linspace(e0, e1, 400))
        taz = np.where(ee > 90, aa + 180, aa)
        tel = np.where(ee > 90, 180 - ee, ee)
        brute = float(angular_separation_deg(taz, tel, saz, sel).min())
        assert got <= brute + 1e-9             # a lower bound ...
        assert got >= brute - 0.3              # ... and a tight one


# -- property tests -----------------------------------------------------------------------

@dataclass
class Scenario:
    options: dict[str, Any]
    safety: SafetyConfig
    mask: list[tuple[float, float]]
    sun: tuple[float, float]
    ops: list[tuple[Any, ...]] = field(default_factory=list)


def _ops() -> st.SearchStrategy[tuple[Any, ...]]:
    # Mostly plausible targets, some wild ones.
    az = st.one_of(st.floats(-60, 250), st.floats(-400, 500))
    el = st.one_of(st.floats(5, 85), st.floats(-10, 190))
    rate = st.one_of(st.floats(-3, 3), st.floats(-15, 15))
    return st.one_of(
        st.tuples(st.just("slew"), az, el),
        st.tuples(st.just("stream"), az, el, rate, rate, st.integers(2, 25), st.floats(0.05, 0.6)),
        st.tuples(st.just("program"), az, el, rate, rate, st.integers(2, 12), st.floats(0.2, 3)),
        st.tuples(st.just("burst"), az, el, rate, rate, st.integers(2, 8), st.floats(0.02, 1.5)),
        st.tuples(st.just("park")),
        st.tuples(st.just("stop")),
        st.tuples(st.just("wait"), st.floats(0, 4)),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    az_min = draw(st.floats(-300, 0))
    az_max = draw(st.floats(180, 450))
    options = {
        "az_min_deg": az_min, "az_max_deg": az_max,
        "el_max_deg": draw(st.sampled_from([90.0, 180.0])),
        "az_max_rate_deg_s": draw(st.floats(2, 20)), "el_max_rate_deg_s": draw(st.floats(2, 20)),
        "az_max_accel_deg_s2": draw(st.floats(2, 20)), "el_max_accel_deg_s2": draw(st.floats(2, 20)),
    }
    cfg_az_min = draw(st.one_of(st.none(), st.floats(-200, -1)))
    cfg_az_max = draw(st.one_of(st.none(), st.floats(90, 300)))
    safety = SafetyConfig(
        min_el_deg=draw(st.floats(0, 20)),
        max_el_deg=draw(st.floats(60, 180)),
        az_min_deg=cfg_az_min, az_max_deg=cfg_az_max,
        sun_exclusion_deg=draw(st.floats(0, 60)),
        max_az_rate_deg_s=draw(st.one_of(st.none(), st.floats(0.5, 20))),
        max_el_rate_deg_s=draw(st.one_of(st.none(), st.floats(0.5, 20))),
    )
    n_mask = draw(st.integers(1, 4))
    # Whole degrees: a mask wall of zero width (two points 1e-38° apart) would turn
    # sub-nanodegree azimuth jitter of the simulated axes into a 30° mask difference.
    mask_az = draw(st.lists(st.integers(0, 359), min_size=n_mask, max_size=n_mask, unique=True))
    mask = [(float(a), draw(st.floats(0, 30))) for a in mask_az]
    sun = (draw(st.one_of(st.floats(0, 250), st.floats(0, 359.9))), draw(st.floats(-10, 60)))
    ops = draw(st.lists(_ops(), min_size=1, max_size=10))
    return Scenario(options, safety, mask, sun, ops)


class Checker:
    """Independent, brute-force statement of what is allowed (no gate code reused)."""

    def __init__(self, gate: GatedMount, sc: Scenario, site: SiteConfig):
        lim = gate.limits
        self.az = (lim.az_min_deg, lim.az_max_deg)
        self.el_axis = (lim.el_axis_min_deg, lim.el_axis_max_deg)
        self.min_el = sc.safety.min_el_deg
        self.site = site
        self.sun = sc.sun
        self.excl = sc.safety.sun_exclusion_deg
        self.rates = (lim.az_rate_deg_s * lim.rate_tolerance, lim.el_rate_deg_s * lim.rate_tolerance)

    def problems(self, az: float, el: float, tol: float = 1e-9) -> list[str]:
        out = []
        if not self.az[0] - tol <= az <= self.az[1] + tol:
            out.append(f"azimuth {az}")
        if not self.el_axis[0] - tol <= el <= self.el_axis[1] + tol:
            out.append(f"elevation axis {el}")
        taz, tel = (az + 180.0, 180.0 - el) if el > 90 else (az, el)
        if tel < self.min_el - tol:
            out.append(f"elevation {tel} < floor")
        if tel < float(self.site.horizon_min_el_deg(taz)) - tol:
            out.append(f"elevation {tel} under the mask at {taz % 360}")
        if self.excl > 0:
            d = float(angular_separation_deg(taz, tel, *self.sun))
            if d < self.excl - tol:
                out.append(f"{d:.3f}° from the Sun")
        return out


async def run_scenario(sc: Scenario) -> tuple[int, int]:
    clock = SimClock(T0, manual=True)
    site = site_with(sc.mask)
    try:
        gate, mount = make(clock, mask=sc.mask, sun=sc.sun, safety=sc.safety,
                           encoder_noise_deg=0.0, **sc.options)
    except (CommandRefused, ValueError):
        assume(False)  # limits that leave no travel, or park (zenith) under the mask
        raise
    await gate.connect()
    check = Checker(gate, sc, site)
    if check.problems(0.0, 90.0):
        assume(False)  # the mount starts parked at the zenith, which must be allowed
    trajectory_problems: list[str] = []

    async def run_for(duration_s: float) -> None:
        end = clock.now_s() + duration_s
        while clock.now_s() < end - 1e-9:
            await clock.advance(min(0.1, end - clock.now_s()))
            p = mount.true_position()
            # Braking and the controller's own dynamics may overshoot a target a little.
            for prob in check.problems(p.az_deg, p.el_deg, tol=0.05):
                trajectory_problems.append(f"t={p.time_s - T0:.1f}: mount at {p.az_deg:.3f}, {p.el_deg:.3f}: {prob}")

    async def attempt(coro: Any) -> None:
        try:
            await coro
        except CommandRefused:
            pass

    for op in sc.ops:
        kind = op[0]
        mount.op = kind if kind == "stream" else ""
        if kind == "slew":
            await attempt(gate.slew_to(op[1], op[2]))
        elif kind == "stream":
            _, az0, el0, vaz, vel, n, dt = op
            for i in range(n):
                await attempt(gate.track_to(az0 + vaz * dt * i, el0 + vel * dt * i, clock.now_s()))
                await run_for(dt)
            mount.op = ""
        elif kind == "burst":
            # Plain slews in quick succession: a controller may take them for a stream.
            _, az0, el0, vaz, vel, n, dt = op
            for i in range(n):
                await attempt(gate.slew_to(az0 + vaz * dt * i, el0 + vel * dt * i))
                await run_for(dt)
        elif kind == "program":
            _, az0, el0, vaz, vel, n, dt = op
            t = clock.now_s()
            await attempt(gate.load_track(
                [TrackPoint(t + dt * i, az0 + vaz * dt * i, el0 + vel * dt * i) for i in range(n)]))
        elif kind == "park":
            await attempt(gate.park())
        elif kind == "stop":
            await gate.stop()
        else:
            await run_for(op[1])
        await run_for(1.0)
    await run_for(5.0)

    received_problems = []
    last_stream: tuple[float, float, float] | None = None
    for kind, t, payload in mount.received:
        points = [(p.az_deg, p.el_deg) for p in payload] if kind == "program" else [payload]
        for az, el in points:
            received_problems += [f"{kind} target ({az}, {el}): {p}" for p in check.problems(az, el)]
        if kind == "program":
            ts = np.array([p.time_s for p in payload])
            for i, name in ((0, "az"), (1, "el")):
                x = np.array([pt[i] for pt in points])
                r = float(np.max(np.abs(np.diff(x) / np.diff(ts))))
                if r > check.rates[i] + 1e-9:
                    received_problems.append(f"program {name} rate {r}")
        if kind == "stream":
            if last_stream is not None and 0 < t - last_stream[0] <= 2.0:
                for i in (0, 1):
                    r = abs(payload[i] - last_stream[i + 1]) / (t - last_stream[0])
                    if r > check.rates[i] + 1e-9:
                        received_problems.append(f"stream rate {r} on axis {i}")
            last_stream = (t, *payload)
        else:
            last_stream = None
    assert received_problems == []
    assert trajectory_problems == []
    return gate.accepted_count, gate.refused_count


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_no_violating_command_reaches_the_mount(sc: Scenario) -> None:
    asyncio.run(run_scenario(sc))


#: Found by Hypothesis (the test above) in a fresh-clone run: a program track loaded 22° from
#: the parked mount, starting now, whose points all clear the Sun. The mount chases it at full
#: rate and brakes 1.5° past its end, into the 48° exclusion. The gate checks the points, the
#: segments and the approach, not a chase's overshoot. Padding by the lag (closing L and
#: braking may carry an axis L past the track) refused the tracker's own chunks at the rise
#: point near the mask in the daemon's pass tests, so it is not in yet: a known hole.
CHASED_TRACK = Scenario(
    options={"az_min_deg": 0.0, "az_max_deg": 180.0, "el_max_deg": 90.0, "az_max_rate_deg_s": 2.0,
             "el_max_rate_deg_s": 18.0, "az_max_accel_deg_s2": 2.0, "el_max_accel_deg_s2": 12.0},
    safety=SafetyConfig(min_el_deg=0.0, max_el_deg=90.0, sun_exclusion_deg=48.0),
    mask=[(0.0, 0.0)], sun=(0.0, 16.0),
    ops=[("slew", 0.0, 5.0), ("slew", 0.0, 5.0), ("slew", 0.0, 5.0),
         ("program", 0.0, 68.0, 0.0, -2.0, 2, 1.5)])


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="known gate hole: a chased program track's overshoot is not padded")
def test_a_chased_program_track_does_not_overshoot_into_the_sun() -> None:
    asyncio.run(run_scenario(CHASED_TRACK))


def test_the_checker_catches_a_mount_driven_around_the_gate() -> None:
    """The property's checker is not vacuous: the raw mount, commanded directly, fails it."""
    sc = Scenario(options={}, safety=SafetyConfig(), mask=[(0.0, 10.0)], sun=(90.0, 30.0))

    async def run() -> list[str]:
        clock = SimClock(T0, manual=True)
        gate, mount = make(clock, sun=sc.sun)
        await mount.connect()
        await mount.slew_to(90.0, 35.0)            # bypassing the gate, at the Sun
        await clock.advance(30)
        p = mount.true_position()
        return Checker(gate, sc, site_with(sc.mask)).problems(p.az_deg, p.el_deg)

    problems = asyncio.run(run())
    assert problems and "Sun" in problems[0]


def test_scenarios_exercise_both_outcomes() -> None:
    """Across a fixed sample of scenarios the gate both accepts and refuses commands."""
    accepted = refused = 0
    sc_base = dict(options={"az_min_deg": -270.0, "az_max_deg": 270.0},
                   mask=[(0.0, 10.0), (180.0, 25.0)], sun=(200.0, 20.0))
    for i in range(6):
        ops: list[tuple[Any, ...]] = [
            ("slew", -120.0 + 60 * i, 40.0), ("wait", 2.0),
            ("stream", -120.0 + 60 * i, 40.0, 3.0, -2.0, 20, 0.1),
            ("program", 30.0 * i, 50.0, 4.0, 1.0, 8, 1.0), ("park",),
        ]
        a, r = asyncio.run(run_scenario(Scenario(safety=SafetyConfig(), ops=ops, **sc_base)))
        accepted += a
        refused += r
    assert accepted > 10 and refused > 0


async def test_a_mount_under_the_horizon_may_only_rise_straight_up() -> None:
    clock = SimClock(T0, manual=True)
    # Stowed pointing at the horizon, under the 10° mask (as Hamlib's dummy rotator starts).
    gate, mount = make(clock, start_az_deg=30.0, start_el_deg=0.0)
    await gate.connect()
    with pytest.raises(CommandRefused) as info:
        await gate.slew_to(60.0, 45.0)
    assert info.value.rule == Rule.HORIZON and "goto 30.00 11.0" in info.value.reason
    with pytest.raises(CommandRefused):
        await gate.slew_to(30.0, 5.0)                 # up, but not out
    await gate.slew_to(30.0, 20.0)                    # straight up and out: allowed
    assert mount.received[-1][2] == (30.0, 20.0)
    with pytest.raises(CommandRefused):
        await gate.slew_to(60.0, 45.0)                # still under the mask: wait
    await clock.advance(10)
    await gate.position()
    await gate.slew_to(60.0, 45.0)                    # out now: anything allowed goes
    assert len(mount.received) == 2


async def test_build_mount_hands_out_only_the_gate() -> None:
    from drivers.mount.base import Mount
    from station.config import load_config
    from station.tracking import build_mount
    from tests.tracking.conftest import REPO

    cfg = load_config(REPO / "config" / "sim.toml")
    clock = SimClock(T0, manual=True)
    gated = build_mount(cfg, clock)
    await gated.connect()
    # No public handle on the backend: the gate's own (name-mangled) reference is the only one.
    exposed = [k for k, v in vars(gated).items() if isinstance(v, Mount)]
    assert exposed == ["_GatedMount__backend"]
    assert gated.limits.min_el_deg == cfg.safety.min_el_deg
    assert gated.limits.sun_exclusion_deg == 30.0
    assert gated.is_parked(await gated.position())
    with pytest.raises(CommandRefused):
        await gated.slew_to(120.0, 5.0)              # under the sim site's 10° mask
    await gated.close()
