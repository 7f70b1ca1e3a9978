"""Look angles, Sun/Moon positions and the time tagger's link geometry."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from drivers.timetagger.base import LinkGeometry
from station.orbit.geometry import (
    SatelliteLinkGeometry,
    angular_separation_deg,
    look_angles,
    moon_altaz,
    sun_altaz,
    times_from_epoch_s,
)

QKD_START_S = datetime(2016, 12, 19, 16, 49, 58, tzinfo=UTC).timestamp()


def test_epoch_seconds_round_trip_across_a_leap_second():
    # 2016 ended with a leap second; Unix seconds skip it, like the UTC calendar.
    for when in (datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2017, 1, 1, tzinfo=UTC)):
        t = times_from_epoch_s(np.array([when.timestamp()]))
        assert t[0].utc_datetime() == when


def test_micius_at_the_start_of_the_published_qkd_window(micius, xinglong):
    # Reference README: the window starts at range 1200 km, elevation ~19.6°.
    la = look_angles(micius, xinglong, np.array([QKD_START_S]))
    assert abs(la.range_km[0] - 1200) < 15
    assert abs(la.el_deg[0] - 19.6) < 0.3
    assert la.range_rate_km_s[0] < -5  # approaching


def test_range_rate_matches_the_derivative_of_range(micius, xinglong):
    t = QKD_START_S + np.arange(0.0, 300.0, 10.0)
    la = look_angles(micius, xinglong, t)
    step = look_angles(micius, xinglong, t + 0.01)
    numeric = (step.range_km - la.range_km) / 0.01
    np.testing.assert_allclose(la.range_rate_km_s, numeric, atol=2e-3)  # 2 m/s
    assert np.all((la.az_deg >= 0) & (la.az_deg < 360))


def test_refraction_lifts_the_elevation_only(micius, xinglong):
    t = QKD_START_S + np.array([0.0, 120.0])
    geo = look_angles(micius, xinglong, t)
    refr = look_angles(micius, xinglong, t, refraction=True)
    lift = refr.el_deg - geo.el_deg
    # ~2.4 arcmin at 20° elevation, 900 mbar, -5 °C; less higher up.
    assert np.all((lift > 0.01) & (lift < 0.06))
    np.testing.assert_allclose(refr.az_deg, geo.az_deg)
    no_air = xinglong.model_copy(update={"pressure_mbar": 0.0})
    np.testing.assert_allclose(look_angles(micius, no_air, t, refraction=True).el_deg, geo.el_deg)


def test_sun_and_moon_at_xinglong_that_night(xinglong):
    # 00:50 local time on 20 December: the Sun is far below the horizon.
    _, sun_el = sun_altaz(xinglong, np.array([QKD_START_S]))
    assert sun_el[0] < -60
    moon_az, moon_el = moon_altaz(xinglong, np.array([QKD_START_S, QKD_START_S + 3600]))
    assert moon_az.shape == moon_el.shape == (2,)
    assert np.all(np.abs(moon_el) <= 90)


def test_angular_separation():
    assert np.isclose(angular_separation_deg(0, 0, 90, 0), 90)
    assert np.isclose(angular_separation_deg(10, 90, 200, 90), 0, atol=1e-6)
    assert np.isclose(angular_separation_deg(359.5, 30, 0.5, 30), 2 * 0.5 * np.cos(np.radians(30)), rtol=1e-3)


def test_link_geometry_satisfies_the_driver_protocol(micius, xinglong):
    geometry: LinkGeometry = SatelliteLinkGeometry(micius, xinglong)
    t = QKD_START_S + np.arange(0.0, 273.0, 0.5)
    range_km, el_deg = geometry.range_el_at(t)
    assert range_km.shape == el_deg.shape == t.shape
    assert 640 < range_km.min() < 660  # published minimum range 645 km
