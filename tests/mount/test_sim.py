"""SimMount: dynamics, tracking accuracy, limits, encoder model, faults, on simulated clocks."""

from __future__ import annotations

import asyncio
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers import registry
from drivers.mount.base import (
    MountCommandRejected,
    MountConnectionLost,
    MountLimitError,
    MountNotConnected,
    TrackPoint,
)
from drivers.mount.sim import SimMount
from station.clock import SimClock

T0_S = 1_482_166_000.0  # 2016-12-19, the night of the Micius pass
ARCSEC = 1.0 / 3600.0


def make(clock: SimClock, **opts: object) -> SimMount:
    return SimMount(SimMount.Options(**opts), clock=clock, name="sim-mount")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(T0_S, manual=True)


async def stream_track(mount: SimMount, clock: SimClock, target, *, rate_hz: float,
                       duration_s: float, settle_s: float) -> list[float]:
    """Stream ``target(t)`` at ``rate_hz``; return the true pointing errors (arcsec) after
    ``settle_s``, sampled just before each command."""
    errors = []
    start = clock.now_s()
    while clock.now_s() - start < duration_s:
        t = clock.now_s()
        pos = mount.true_position()
        az, el = target(t)
        if t - start >= settle_s:
            errors.append(math.hypot(pos.az_deg - az, pos.el_deg - el) / ARCSEC)
        await mount.slew_to(az, el)
        await clock.advance(1.0 / rate_hz)
    return errors


@pytest.mark.parametrize("rate_hz", [20.0, 50.0])
async def test_streamed_tracking_of_a_1p5_deg_s_target_converges_to_arcseconds(
        clock: SimClock, rate_hz: float) -> None:
    mount = make(clock, encoder_noise_deg=0.0)
    await mount.connect()
    t0 = clock.now_s()

    def target(t: float) -> tuple[float, float]:
        return 20.0 + 1.5 * (t - t0), 30.0 + 0.2 * (t - t0)

    errors = await stream_track(mount, clock, target, rate_hz=rate_hz, duration_s=60.0,
                                settle_s=20.0)
    # Starting from park (0°, 90°), acquiring a target 60° away and running at 1.5°/s
    # takes well under 20 s for a 10°/s, 10°/s² mount; after that the error is sub-arcsec.
    assert max(errors) < 1.0
    status = await mount.status()
    assert status.tracking and status.moving and not status.parked


async def test_streamed_tracking_of_an_accelerating_target_stays_within_arcseconds(
        clock: SimClock) -> None:
    """Near the zenith a pass accelerates in azimuth; the three-point estimate follows."""
    mount = make(clock, encoder_noise_deg=0.0, start_az_deg=0.0, start_el_deg=40.0)
    await mount.connect()
    t0 = clock.now_s()

    def target(t: float) -> tuple[float, float]:
        s = t - t0
        return 0.5 * s + 0.05 * s * s, 40.0 + 0.3 * s

    errors = await stream_track(mount, clock, target, rate_hz=20.0, duration_s=30.0,
                                settle_s=10.0)
    assert max(errors) < 1.0


async def test_point_slew_obeys_rate_and_acceleration_limits_and_takes_trapezoid_time(
        clock: SimClock) -> None:
    mount = make(clock, az_max_rate_deg_s=4.0, az_max_accel_deg_s2=2.0, encoder_noise_deg=0.0,
                 start_az_deg=0.0, start_el_deg=45.0)
    await mount.connect()
    await mount.slew_to(100.0, 45.0)
    # Trapezoid: 100° at 4°/s with 2°/s² ramps takes 100/4 + 4/2 = 27 s.
    prev_v = 0.0
    arrived_s = None
    t_start = clock.now_s()
    for _ in range(int(35 / 0.05)):
        await clock.advance(0.05)
        v_az, v_el = mount.true_velocity()
        assert abs(v_az) <= 4.0 + 1e-9
        assert abs(v_az - prev_v) / 0.05 <= 2.0 + 1e-6
        assert v_el == 0.0
        prev_v = v_az
        if arrived_s is None and abs(mount.true_position().az_deg - 100.0) < 1e-3:
            arrived_s = clock.now_s() - t_start
    assert arrived_s is not None
    # The square-root braking law gives away a little to the ideal profile near the end.
    assert 27.0 <= arrived_s <= 29.5
    assert abs(mount.true_position().az_deg - 100.0) < 1e-6
    assert not (await mount.status()).moving


async def test_retargeting_mid_slew_reverses_smoothly(clock: SimClock) -> None:
    mount = make(clock, encoder_noise_deg=0.0, start_az_deg=0.0, start_el_deg=45.0)
    await mount.connect()
    await mount.slew_to(90.0, 45.0)
    await clock.advance(3.0)
    await mount.slew_to(-30.0, 45.0)
    prev_v = mount.true_velocity()[0]
    for _ in range(400):
        await clock.advance(0.05)
        v = mount.true_velocity()[0]
        assert abs(v - prev_v) <= 10.0 * 0.05 + 1e-9
        prev_v = v
    assert abs(mount.true_position().az_deg + 30.0) < 1e-6


async def test_targets_outside_travel_raise_limit_error_and_never_reach_the_axes(
        clock: SimClock) -> None:
    mount = make(clock, az_min_deg=-270, az_max_deg=270, el_min_deg=5, el_max_deg=88,
                 park_el_deg=88)
    await mount.connect()
    for az, el in ((271.0, 30.0), (-270.5, 30.0), (10.0, 4.0), (10.0, 89.0),
                   (math.nan, 30.0), (10.0, math.inf)):
        with pytest.raises(MountLimitError) as info:
            await mount.slew_to(az, el)
        assert "sim-mount" in str(info.value)
    assert mount.commands == []
    await mount.slew_to(-269.0, 87.0)  # inside the wrap: accepted
    await clock.advance(120.0)
    pos = mount.true_position()
    assert pos.az_deg == pytest.approx(-269.0) and pos.el_deg == pytest.approx(87.0)


def test_capabilities_reflect_options(clock: SimClock) -> None:
    mount = make(clock, az_min_deg=-180, az_max_deg=450, el_max_deg=180,
                 az_max_rate_deg_s=6, el_max_accel_deg_s2=3, command_latency_s=0.1,
                 program_track=False, encoder_resolution_deg=0.001, park_az_deg=180,
                 park_el_deg=80)
    caps = mount.capabilities
    assert (caps.az.min_deg, caps.az.max_deg, caps.az.max_rate_deg_s) == (-180, 450, 6)
    assert caps.el.max_deg == 180 and caps.el.max_accel_deg_s2 == 3
    assert caps.el_over_zenith and not caps.program_track
    assert caps.command_latency_s == 0.1 and caps.encoder_resolution_deg == 0.001
    assert (caps.park_az_deg, caps.park_el_deg) == (180, 80)
    assert not make(clock).capabilities.el_over_zenith


def test_options_are_validated_with_reasons() -> None:
    with pytest.raises(ValidationError, match="az_min_deg"):
        SimMount.Options(az_min_deg=10, az_max_deg=5)
    with pytest.raises(ValidationError, match="park_el_deg"):
        SimMount.Options(park_el_deg=95)
    with pytest.raises(ValidationError, match="extra"):
        SimMount.Options(az_rate=3)
    opts = registry.validate_options("mount", "sim", {"az_max_rate_deg_s": 6})
    assert isinstance(opts, SimMount.Options)
    for name, field in SimMount.Options.model_fields.items():
        assert field.description, name


async def test_encoder_quantises_and_adds_seeded_noise(clock: SimClock) -> None:
    res = 1.0 / 3600.0
    a = make(clock, encoder_resolution_deg=res, encoder_noise_deg=2 * res, seed=7,
             start_az_deg=12.34567, start_el_deg=45.0)
    b = make(clock, encoder_resolution_deg=res, encoder_noise_deg=2 * res, seed=7,
             start_az_deg=12.34567, start_el_deg=45.0)
    await a.connect()
    await b.connect()
    reads_a = [(await a.position()).az_deg for _ in range(2000)]
    reads_b = [(await b.position()).az_deg for _ in range(2000)]
    assert reads_a == reads_b  # same seed, same noise
    for value in reads_a[:50]:
        assert value / res == pytest.approx(round(value / res), abs=1e-6)
    assert statistics.fmean(reads_a) == pytest.approx(12.34567, abs=0.2 * res)
    assert statistics.pstdev(reads_a) == pytest.approx(2 * res, rel=0.1)


async def test_stop_brakes_at_max_deceleration_and_park_is_reported(clock: SimClock) -> None:
    mount = make(clock, encoder_noise_deg=0.0, start_az_deg=0.0, start_el_deg=45.0)
    await mount.connect()
    assert not (await mount.status()).parked
    await mount.slew_to(200.0, 45.0)
    await clock.advance(5.0)  # cruising at 10°/s by now
    assert mount.true_velocity()[0] == pytest.approx(10.0)
    az_at_stop = mount.true_position().az_deg
    await mount.stop()
    await clock.advance(2.0)
    status = await mount.status()
    assert not status.moving and not status.tracking
    # v²/2a = 100/20 = 5° of braking.
    assert mount.true_position().az_deg - az_at_stop == pytest.approx(5.0, abs=0.1)
    await mount.park()
    assert not (await mount.status()).parked
    await clock.advance(60.0)
    status = await mount.status()
    assert status.parked and not status.moving
    pos = await mount.position()
    assert pos.az_deg == pytest.approx(0.0, abs=1e-3) and pos.el_deg == pytest.approx(90, abs=1e-3)
    await mount.slew_to(10.0, 60.0)
    assert not (await mount.status()).parked


async def test_program_track_follows_the_uploaded_trajectory(clock: SimClock) -> None:
    mount = make(clock, encoder_noise_deg=0.0)
    await mount.connect()
    t0 = clock.now_s() + 30.0

    def target(t: float) -> tuple[float, float]:
        s = t - t0
        return 20.0 + 1.5 * s + 0.002 * s * s, 20.0 + 0.4 * s - 0.001 * s * s

    points = [TrackPoint(t0 + i, *target(t0 + i)) for i in range(0, 121)]
    await mount.load_track(points)
    await clock.advance(30.0)  # pre-positions on the first point before it is due
    pos = mount.true_position()
    assert (pos.az_deg, pos.el_deg) == pytest.approx(target(t0), abs=1e-6)
    errors = []
    for _ in range(100 * 20):
        await clock.advance(0.05)
        p = mount.true_position()
        az, el = target(p.time_s)
        errors.append(math.hypot(p.az_deg - az, p.el_deg - el) / ARCSEC)
    assert (await mount.status()).tracking
    assert max(errors[40:]) < 1.0
    await clock.advance(30.0)
    status = await mount.status()
    assert not status.tracking and not status.moving


async def test_program_track_rejects_bad_tables(clock: SimClock) -> None:
    mount = make(clock)
    await mount.connect()
    t = clock.now_s()
    with pytest.raises(MountCommandRejected, match="at least 2"):
        await mount.load_track([TrackPoint(t, 0, 45)])
    with pytest.raises(MountCommandRejected, match="increase"):
        await mount.load_track([TrackPoint(t, 0, 45), TrackPoint(t, 1, 45)])
    with pytest.raises(MountLimitError, match="t="):
        await mount.load_track([TrackPoint(t, 0, 45), TrackPoint(t + 1, 300, 45)])
    off = make(clock, program_track=False)
    await off.connect()
    with pytest.raises(MountCommandRejected, match="disabled"):
        await off.load_track([TrackPoint(t, 0, 45), TrackPoint(t + 1, 1, 45)])


async def test_command_latency_delays_the_axes(clock: SimClock) -> None:
    mount = make(clock, command_latency_s=0.5, start_az_deg=0.0, start_el_deg=45.0)
    await mount.connect()
    await mount.slew_to(10.0, 45.0)
    await clock.advance(0.45)
    assert mount.true_velocity() == (0.0, 0.0)
    await clock.advance(0.1)
    assert mount.true_velocity()[0] > 0.0


async def test_not_connected_and_injected_disconnect(clock: SimClock) -> None:
    mount = make(clock, start_az_deg=0.0, start_el_deg=45.0, encoder_noise_deg=0.0)
    with pytest.raises(MountNotConnected):
        await mount.position()
    await mount.connect()
    await mount.slew_to(180.0, 45.0)
    mount.inject_disconnect(at_s=clock.now_s() + 3.0)
    await clock.advance(2.9)
    await mount.position()
    await clock.advance(0.2)
    with pytest.raises(MountConnectionLost):
        await mount.position()
    status = await mount.status()
    assert not status.connected and "link" in (status.fault or "")
    with pytest.raises(MountConnectionLost):
        await mount.connect()
    # The controller's watchdog brakes the axes once the link is gone.
    await clock.advance(5.0)
    assert mount.true_velocity() == (0.0, 0.0)
    az_after = mount.true_position().az_deg
    assert 20.0 < az_after < 40.0
    mount.clear_fault()
    await mount.connect()
    status = await mount.status()
    assert status.connected and status.fault is None
    await mount.close()
    with pytest.raises(MountNotConnected):
        await mount.slew_to(0, 45)
    await mount.close()  # twice is fine


async def test_stuck_axis_reported_and_silent(clock: SimClock) -> None:
    mount = make(clock, start_az_deg=0.0, start_el_deg=20.0, encoder_noise_deg=0.0)
    await mount.connect()
    await mount.slew_to(60.0, 60.0)
    mount.inject_stuck_axis("el", at_s=clock.now_s() + 1.0)
    await clock.advance(30.0)
    pos = mount.true_position()
    assert pos.az_deg == pytest.approx(60.0)
    assert pos.el_deg < 30.0
    assert "elevation axis stalled" in ((await mount.status()).fault or "")
    mount.clear_fault()
    await clock.advance(30.0)
    assert mount.true_position().el_deg == pytest.approx(60.0)
    assert (await mount.status()).fault is None

    silent = make(clock, start_az_deg=0.0, start_el_deg=20.0)
    await silent.connect()
    await silent.slew_to(60.0, 60.0)
    silent.inject_stuck_axis("az", reported=False)
    await clock.advance(20.0)
    assert (await silent.status()).fault is None
    assert silent.true_position().az_deg == 0.0


async def test_runs_on_an_autojump_clock_with_a_task_sleeping_on_it() -> None:
    clock = SimClock(T0_S, speed=math.inf)
    mount = make(clock, encoder_noise_deg=0.0, start_az_deg=0.0, start_el_deg=45.0)
    await mount.connect()
    await mount.slew_to(90.0, 45.0)
    await clock.sleep(3600.0)  # an hour of simulated time: settled long before
    pos = await mount.position()
    assert pos.time_s == pytest.approx(T0_S + 3600.0)
    assert pos.az_deg == pytest.approx(90.0, abs=1e-4)


async def test_runs_on_a_scaled_clock() -> None:
    clock = SimClock(T0_S, speed=200.0)
    mount = make(clock, encoder_noise_deg=0.0, start_az_deg=0.0, start_el_deg=45.0)
    await mount.connect()
    await mount.slew_to(30.0, 45.0)
    await clock.sleep(10.0)
    assert mount.true_position().az_deg == pytest.approx(30.0, abs=1e-4)


async def test_registry_builds_it() -> None:
    clock = SimClock(T0_S, manual=True)
    mount = registry.create("mount", "sim", {"park_az_deg": 180.0}, clock=clock)
    assert isinstance(mount, SimMount)
    await mount.connect()
    pos = await mount.position()
    assert pos.az_deg == pytest.approx(180.0, abs=0.01)


@settings(max_examples=30, deadline=None)
@given(commands=st.lists(
    st.tuples(st.floats(0.0, 4.0),                      # wait before the command, s
              st.sampled_from(["slew", "stop", "park"]),
              st.floats(-270.0, 270.0), st.floats(0.0, 90.0)),
    min_size=1, max_size=12))
def test_any_command_sequence_respects_rate_acceleration_and_travel(commands) -> None:
    """Whatever is commanded, when, the axes stay within their dynamics and travel."""

    async def run() -> None:
        clock = SimClock(T0_S, manual=True)
        mount = make(clock, az_max_rate_deg_s=5.0, el_max_rate_deg_s=3.0,
                     az_max_accel_deg_s2=4.0, el_max_accel_deg_s2=2.0, start_az_deg=0.0,
                     start_el_deg=45.0)
        await mount.connect()
        dt = 0.05
        prev = mount.true_velocity()

        async def watch(duration_s: float) -> None:
            nonlocal prev
            for _ in range(max(1, round(duration_s / dt))):
                await clock.advance(dt)
                v = mount.true_velocity()
                pos = mount.true_position()
                assert abs(v[0]) <= 5.0 + 1e-9 and abs(v[1]) <= 3.0 + 1e-9
                assert abs(v[0] - prev[0]) <= 4.0 * dt + 1e-9
                assert abs(v[1] - prev[1]) <= 2.0 * dt + 1e-9
                assert -270.0 <= pos.az_deg <= 270.0 and 0.0 <= pos.el_deg <= 90.0
                prev = v

        for wait_s, kind, az, el in commands:
            await watch(wait_s)
            if kind == "slew":
                await mount.slew_to(az, el)
            elif kind == "stop":
                await mount.stop()
            else:
                await mount.park()
        await watch(10.0)
        await clock.advance(200.0)
        # Left alone long enough, it always comes to rest.
        assert mount.true_velocity() == (0.0, 0.0)

    asyncio.run(run())
