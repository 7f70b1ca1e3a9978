"""Fixtures of the tracking tests: the reference site and pass, gated sim mounts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skyfield.api import EarthSatellite

from drivers.mount.sim import SimMount
from station.clock import Clock
from station.config.mount import SafetyConfig
from station.config.site import SiteConfig
from station.orbit.geometry import load_timescale
from station.tracking.gate import GatedMount

REPO = Path(__file__).resolve().parents[2]
ELEMENTS = REPO / "config" / "elements"

#: Micius over Xinglong, 2016-12-19: the part above the 10° horizon (refracted,
#: -5 °C, 900 mbar), computed with the TLE of 2016-12-18; it contains the published
#: 16:49:58-16:54:30 QKD window (shared/reference/README.md).
MICIUS_AOS = datetime(2016, 12, 19, 16, 48, 43, tzinfo=UTC).timestamp()
MICIUS_LOS = datetime(2016, 12, 19, 16, 55, 41, tzinfo=UTC).timestamp()


def satellite(filename: str) -> EarthSatellite:
    name, l1, l2 = (ELEMENTS / filename).read_text().splitlines()[:3]
    return EarthSatellite(l1, l2, name.strip(), load_timescale())


@pytest.fixture
def micius() -> EarthSatellite:
    return satellite("micius-2016-12-18.tle")


@pytest.fixture
def xinglong() -> SiteConfig:
    """Xinglong (NAOC) with the flat 10° horizon and the weather of config/sim.toml."""
    return SiteConfig(
        name="Xinglong (NAOC)", latitude_deg=40.39587, longitude_deg=117.57746, height_m=890,
        horizon_mask=[(0.0, 10.0)], temperature_C=-5, pressure_mbar=900,
    )


def fixed_sun(az_deg: float, el_deg: float) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A Sun that stays at (az, el): for tests that place it on purpose."""

    def sun(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=float)
        return np.full(t.shape, az_deg), np.full(t.shape, el_deg)

    return sun


def gated_sim(clock: Clock, site: SiteConfig, *, safety: SafetyConfig | None = None,
              park: tuple[float, float] = (0.0, 90.0), sun: Any = None,
              mount_cls: type[SimMount] = SimMount, **options: Any) -> GatedMount:
    """A real SimMount behind the gate; returns the gate only, as the station gets it."""
    backend = mount_cls(SimMount.Options(**options), clock=clock)
    return GatedMount(backend, site=site, safety=safety or SafetyConfig(), clock=clock,
                      park_az_deg=park[0], park_el_deg=park[1], sun_altaz=sun)


def pass_window(sat: EarthSatellite, site: SiteConfig, start_s: float, span_s: float,
                min_el_deg: float = 10.05) -> tuple[float, float]:
    """(AOS, LOS) of the first pass above ``min_el_deg`` after ``start_s`` (1 s steps)."""
    from station.orbit.geometry import look_angles

    t = start_s + np.arange(0.0, span_s, 1.0)
    up = np.flatnonzero(look_angles(sat, site, t, refraction=True).el_deg > min_el_deg)
    assert up.size, "no pass in the searched span"
    last = up[0] + int(np.argmax(np.diff(up) > 1)) if np.any(np.diff(up) > 1) else up[-1]
    return float(t[up[0]]), float(t[last])
