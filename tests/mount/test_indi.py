"""IndiMount: coordinate conversion, and the real indi_simulator_telescope under indiserver."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.mount._sky import (
    equatorial_to_horizontal,
    horizontal_to_equatorial,
    local_sidereal_time_h,
)
from drivers.mount.base import MountConnectionLost, MountLimitError, MountNotConnected
from drivers.mount.indi import IndiMount
from station.clock import RealClock
from tests.conftest import free_port

XINGLONG = {"latitude_deg": 40.39587, "longitude_deg": 117.57746, "height_m": 890.0}


@given(az=st.floats(0, 359.999), el=st.floats(-89, 89), lat=st.floats(-89, 89),
       lst=st.floats(0, 23.999))
def test_horizontal_equatorial_round_trip(az: float, el: float, lat: float, lst: float) -> None:
    ra, dec = horizontal_to_equatorial(az, el, latitude_deg=lat, lst_h=lst)
    az2, el2 = equatorial_to_horizontal(ra, dec, latitude_deg=lat, lst_h=lst)
    assert el2 == pytest.approx(el, abs=1e-7)
    # Azimuth is undefined at the zenith; compare directions, scaled by cos(el).
    d_az = (az2 - az + 180.0) % 360.0 - 180.0
    assert abs(d_az) * math.cos(math.radians(el)) < 1e-6


def test_conversion_against_known_geometry() -> None:
    # On the meridian, due south: hour angle 0, Dec = latitude - zenith distance.
    ra, dec = horizontal_to_equatorial(180.0, 50.0, latitude_deg=40.0, lst_h=5.0)
    assert ra == pytest.approx(5.0) and dec == pytest.approx(0.0, abs=1e-9)
    # The celestial pole sits due north at an elevation equal to the latitude.
    az, el = equatorial_to_horizontal(3.0, 90.0, latitude_deg=40.0, lst_h=11.0)
    assert el == pytest.approx(40.0) and az % 360.0 == pytest.approx(0.0, abs=1e-9)
    # Rising due east on the equator: hour angle -6 h.
    az, el = equatorial_to_horizontal(11.0, 0.0, latitude_deg=40.0, lst_h=5.0)
    assert (az, el) == (pytest.approx(90.0), pytest.approx(0.0, abs=1e-9))


def test_sidereal_time_against_the_almanac() -> None:
    # GMST at 2000-01-01 12:00 UT1 is 18.697374558 h (IAU 1982); apparent differs by the
    # equation of the equinoxes (< 1.2 s) and UT1-UTC (< 0.9 s).
    lst = local_sidereal_time_h(946728000.0, 0.0)
    assert lst == pytest.approx(18.697374558, abs=3.0 / 3600.0)
    assert local_sidereal_time_h(946728000.0, 90.0) == pytest.approx((lst + 6.0) % 24.0)


def test_options_have_descriptions() -> None:
    for name, field in IndiMount.Options.model_fields.items():
        assert field.description, name


async def test_unreachable_server_is_a_lost_link() -> None:
    mount = IndiMount(IndiMount.Options(port=free_port(), connect_timeout_s=0.5),
                      clock=RealClock())
    with pytest.raises(MountNotConnected):
        await mount.position()
    with pytest.raises(MountConnectionLost, match="cannot reach indiserver"):
        await mount.connect()
    assert not (await mount.status()).connected
    await mount.close()


async def wait_until(predicate, *, within_s: float = 60.0, poll_s: float = 0.25) -> None:
    """Poll a device condition; the deadline only guards against a hang."""
    async with asyncio.timeout(within_s):
        while True:
            if await predicate():
                return
            await asyncio.sleep(poll_s)


async def test_real_simulator_connect_slew_read_back_park(indi_telescope) -> None:
    mount = IndiMount(IndiMount.Options(port=indi_telescope.port, **XINGLONG), clock=RealClock())
    await mount.connect()
    try:
        status = await mount.status()
        assert status.connected
        with pytest.raises(MountLimitError):
            await mount.slew_to(120.0, -5.0)
        target = (100.0, 20.0)
        await mount.slew_to(*target)
        assert (await mount.status()).moving

        async def arrived() -> bool:
            return not (await mount.status()).moving

        await wait_until(arrived)
        pos = await mount.position()
        # The device's RA/Dec of date, converted back with our sidereal time: the
        # simulator's GOTO ends within a few arcseconds of the target.
        d_az = (pos.az_deg - target[0] + 180.0) % 360.0 - 180.0
        assert abs(d_az) < 0.01 and abs(pos.el_deg - target[1]) < 0.01

        await mount.park()

        async def parked() -> bool:
            return (await mount.status()).parked

        await wait_until(parked)
        # A parked mount is unparked before the next slew.
        await mount.slew_to(200.0, 30.0)
        assert not (await mount.status()).parked
        await mount.stop()
    finally:
        await mount.close()
    with pytest.raises(MountNotConnected):
        await mount.position()


async def test_real_simulator_going_away_is_a_lost_link(indi_telescope) -> None:
    mount = IndiMount(IndiMount.Options(port=indi_telescope.port, **XINGLONG), clock=RealClock())
    await mount.connect()
    try:
        await mount.position()
        indi_telescope.process.terminate()
        indi_telescope.process.wait(5)

        async def link_down() -> bool:
            return not (await mount.status()).connected

        await wait_until(link_down, within_s=10.0, poll_s=0.05)
        with pytest.raises(MountConnectionLost, match="down"):
            await mount.position()
        with pytest.raises(MountConnectionLost):
            await mount.slew_to(100.0, 20.0)
    finally:
        await mount.close()
