"""Fixtures of the orbit tests: the reference sites and element sets (../shared/reference)."""

from __future__ import annotations

from pathlib import Path

import pytest
from skyfield.api import EarthSatellite

from station.config.site import SiteConfig
from station.orbit.geometry import load_timescale

REPO = Path(__file__).resolve().parents[2]
ELEMENTS = REPO / "config" / "elements"


def _satellite(filename: str) -> EarthSatellite:
    name, l1, l2 = (ELEMENTS / filename).read_text().splitlines()[:3]
    return EarthSatellite(l1, l2, name.strip(), load_timescale())


@pytest.fixture
def xinglong() -> SiteConfig:
    """Xinglong (NAOC), flat 10° horizon as in config/sim.toml."""
    return SiteConfig(
        name="Xinglong (NAOC)", latitude_deg=40.39587, longitude_deg=117.57746, height_m=890,
        horizon_mask=[(0.0, 10.0)], temperature_C=-5, pressure_mbar=900,
    )


@pytest.fixture
def stellenbosch() -> SiteConfig:
    """Stellenbosch University rooftop (approximate position)."""
    return SiteConfig(
        name="Stellenbosch", latitude_deg=-33.9321, longitude_deg=18.8602, height_m=120,
        horizon_mask=[(0.0, 10.0)],
    )


@pytest.fixture
def micius() -> EarthSatellite:
    return _satellite("micius-2016-12-18.tle")


@pytest.fixture
def microsat() -> EarthSatellite:
    """The synthetic Jinan-1-class microsatellite (catalog number 99001)."""
    return _satellite("sim-microsat-2024-10-15.tle")


def make_config(
    site: SiteConfig, satellites: list[dict] | None = None, *, safety: dict | None = None, **schedule: object
):
    """A StationConfig with only the sections the planner reads.

    Built with ``model_construct`` so these tests do not depend on which device backends
    exist (the planner never touches mount/tagger sections); the pieces it does read are
    validated models. The full file is exercised by test_cli.py with config/sim.toml.
    """
    from station.config.mount import SafetyConfig
    from station.config.orbit import OrbitConfig, SatelliteConfig, ScheduleConfig
    from station.config.root import StationConfig

    return StationConfig.model_construct(
        station_id="test",
        site=site,
        orbit=OrbitConfig(
            element_sources=[ELEMENTS],
            satellites=[SatelliteConfig(**s) for s in (satellites or [])],
        ),
        schedule=ScheduleConfig(**schedule),
        safety=SafetyConfig(**(safety or {})),
    )
