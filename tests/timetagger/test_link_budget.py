"""The downlink budget: each factor against its physics and Liao et al. 2017's budget."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from skyfield.api import EarthSatellite

from drivers.timetagger.downlink import _GeometryFit
from drivers.timetagger.link import (
    LinkBudget,
    StaticLinkGeometry,
    airmass,
    db,
    diffraction_efficiency,
    ground_pointing_efficiency,
    sat_pointing_efficiency,
)
from drivers.timetagger.sim import SimOptions
from station.config.site import SiteConfig
from station.orbit.geometry import SatelliteLinkGeometry, load_timescale

REPO = Path(__file__).resolve().parents[2]


def micius_budget() -> LinkBudget:
    return SimOptions(preset="micius").link_budget()


def test_airmass_zenith_horizon_and_below() -> None:
    x = airmass(np.array([90.0, 30.0, 10.0, 0.0, -1.0]))
    assert x[0] == pytest.approx(1.0, abs=1e-3)
    assert x[1] == pytest.approx(2.0, abs=0.01)  # plane-parallel 1/sin(30°), refraction negligible
    assert x[2] == pytest.approx(5.6, abs=0.1)  # Kasten & Young table
    assert x[3] == pytest.approx(38.0, rel=0.02)
    assert np.isinf(x[4])


def test_diffraction_falls_as_inverse_square_in_the_far_field() -> None:
    eff = diffraction_efficiency(np.array([600.0, 1200.0]), divergence_urad=10.0,
                                 tx_aperture_m=0.3, rx_aperture_m=1.0)
    assert float(db(eff[1]) - db(eff[0])) == pytest.approx(20 * np.log10(2), abs=0.1)
    # A receiver larger than the beam collects (almost) all of it.
    near = diffraction_efficiency(0.001, divergence_urad=10.0, tx_aperture_m=0.01, rx_aperture_m=0.1)
    assert float(near) == pytest.approx(1.0, abs=1e-9)


def test_budget_components_match_the_published_budget_at_1200_km() -> None:
    """Liao 2017: diffraction ≈ 22 dB, atmosphere 3–8 dB, pointing < 3 dB at 1200 km."""
    comps = micius_budget().components(1200.0, 25.0)
    assert float(db(comps["diffraction"])) == pytest.approx(22.0, abs=1.5)
    assert 3.0 <= float(db(comps["atmosphere"])) <= 8.0
    assert float(db(comps["sat_pointing"])) < 3.0
    assert float(db(comps["rx_optics"])) == pytest.approx(-10 * np.log10(0.16))


def test_pointing_losses() -> None:
    # No jitter: no loss; jitter equal to the 1/e² half-angle: 1/5.
    assert sat_pointing_efficiency(divergence_urad=10.0, jitter_urad=0.0) == 1.0
    omega = 10.0 / (2 * np.sqrt(np.log(2) / 2))
    assert sat_pointing_efficiency(divergence_urad=10.0, jitter_urad=omega) == pytest.approx(0.2)
    # The station's tracking error at the edge of the field of view costs exp(-2).
    assert float(ground_pointing_efficiency(50.0, rx_fov_urad=100.0)) == pytest.approx(np.exp(-2))
    budget = micius_budget()
    on = float(budget.efficiency(800.0, 40.0, 0.0))
    off = float(budget.efficiency(800.0, 40.0, 25.0))
    assert off / on == pytest.approx(np.exp(-0.5))


def test_below_minimum_elevation_the_link_is_blocked() -> None:
    budget = SimOptions(preset="micius", min_elevation_deg=10.0).link_budget()
    eff = budget.efficiency(np.array([1500.0, 1500.0]), np.array([9.9, 10.1]))
    assert eff[0] == 0.0 and eff[1] > 0.0
    assert np.isinf(budget.loss_db(1500.0, -5.0))
    # Detection efficiency is the link times the detector.
    assert float(budget.detection_efficiency(900.0, 30.0)) == pytest.approx(
        float(budget.efficiency(900.0, 30.0)) * 0.5)


def test_static_geometry_is_vectorised() -> None:
    r, el = StaticLinkGeometry(0.001, 90.0).range_el_at(np.zeros((2, 3)))
    assert r.shape == el.shape == (2, 3)
    assert np.all(r == 0.001) and np.all(el == 90.0)


def test_geometry_fit_follows_the_orbit_code_to_a_centimetre() -> None:
    """The sim fits range/elevation per 4 s block; time of flight must stay ps-exact."""
    lines = (REPO / "config/elements/micius-2016-12-18.tle").read_text().strip().splitlines()
    satellite = EarthSatellite(lines[-2], lines[-1], "MICIUS", load_timescale())
    site = SiteConfig(name="Xinglong", latitude_deg=40.39587, longitude_deg=117.57746,
                      height_m=890, pressure_mbar=0)
    geometry = SatelliteLinkGeometry(satellite, site)
    fit = _GeometryFit(geometry)
    start_s = datetime(2016, 12, 19, 16, 49, 58, tzinfo=UTC).timestamp()
    t = start_s + np.sort(np.random.default_rng(3).uniform(0, 273, 400))
    r_direct, el_direct = geometry.range_el_at(t)
    r_fit, el_fit = fit.range_el_at(t)
    assert np.max(np.abs(r_fit - r_direct)) * 1e5 < 1.0  # km -> cm
    assert np.max(np.abs(el_fit - el_direct)) < 1e-6


def test_efficiency_is_the_product_of_the_components() -> None:
    budget = SimOptions(preset="micius", min_elevation_deg=5.0, extra_loss_db=1.5).link_budget()
    r = np.array([500.0, 900.0, 1500.0, 2000.0])
    el = np.array([80.0, 30.0, 12.0, 3.0])
    product = np.prod(np.stack(list(budget.components(r, el, 20.0).values())), axis=0)
    assert np.allclose(budget.efficiency(r, el, 20.0), product, rtol=1e-12, atol=0)
