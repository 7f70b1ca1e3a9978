"""What the sky plot needs that MQTT does not carry: the planned track, the QKD window, the
horizon mask, the Sun and the Moon.

Computed in the web process from the station's own config and element files with the
scheduler's own code (:func:`station.schedule.planner.plan`, :func:`look_angles`), so the
track drawn is the one the station planned. Synchronous and numeric: call it in a thread.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from pydantic import BaseModel, Field

from station.config.root import StationConfig
from station.orbit.catalog import Catalog, fixed_clock
from station.orbit.geometry import look_angles, moon_altaz, sun_altaz
from station.schedule.planner import parse_pass_id, plan

#: Track sample spacing (station seconds): 2 s is ~0.1° at the fastest LEO pass.
TRACK_STEP_S = 2.0


class TrackPoint(BaseModel):
    t: float = Field(description="Clock seconds (UTC epoch).")
    az_deg: float
    el_deg: float


class PlannedTrack(BaseModel):
    """``track``: the predicted path of one pass across the sky."""

    pass_id: str
    satellite: str
    aos: datetime
    los: datetime
    qkd_start: datetime | None = None
    qkd_end: datetime | None = None
    points: list[TrackPoint] = Field(default_factory=list)


class SkyBodies(BaseModel):
    """``sky``: horizon mask, limits, Sun and Moon at a station time."""

    time: datetime
    sun_az_deg: float
    sun_el_deg: float
    sun_exclusion_deg: float
    moon_az_deg: float
    moon_el_deg: float
    moon_exclusion_deg: float
    min_el_deg: float = Field(description="The safety gate's elevation floor.")
    horizon_mask: list[tuple[float, float]] = Field(description="(az_deg, min el_deg) every 5°.")


class TrackError(RuntimeError):
    """The track of a pass could not be computed (no elements, unknown pass)."""


def planned_track(cfg: StationConfig, pass_id: str) -> PlannedTrack:
    """The track of ``pass_id`` as the scheduler predicts it from the configured elements."""
    norad_id, aos_s = parse_pass_id(pass_id)
    catalog = Catalog.from_config(cfg.orbit, fixed_clock(aos_s))
    schedule = plan(cfg, catalog, aos_s - 900.0, 0.75, include=[pass_id])
    p = schedule.get(pass_id)
    if p is None:
        raise TrackError(f"pass {pass_id}: not found in the elements of {norad_id} "
                         f"({len(catalog)} element set(s) loaded)")
    t = np.append(np.arange(p.aos.timestamp(), p.los.timestamp(), TRACK_STEP_S), p.los.timestamp())
    la = look_angles(p.earth_satellite(), cfg.site, t)
    return PlannedTrack(
        pass_id=p.pass_id, satellite=p.satellite, aos=p.aos, los=p.los,
        qkd_start=p.qkd_start, qkd_end=p.qkd_end,
        points=[TrackPoint(t=round(float(a), 3), az_deg=round(float(b), 3), el_deg=round(float(c), 3))
                for a, b, c in zip(la.time_s, la.az_deg, la.el_deg, strict=True)],
    )


def sky_bodies(cfg: StationConfig, when: datetime) -> SkyBodies:
    """Sun, Moon, their exclusion zones and the horizon mask at ``when``."""
    t = np.array([when.timestamp()])
    sun_az, sun_el = sun_altaz(cfg.site, t)
    moon_az, moon_el = moon_altaz(cfg.site, t)
    az = np.arange(0.0, 360.0, 5.0)
    mask = cfg.site.horizon_min_el_deg(az)
    return SkyBodies(
        time=when,
        sun_az_deg=float(sun_az[0]), sun_el_deg=float(sun_el[0]),
        sun_exclusion_deg=max(cfg.schedule.sun_exclusion_deg, cfg.safety.sun_exclusion_deg),
        moon_az_deg=float(moon_az[0]), moon_el_deg=float(moon_el[0]),
        moon_exclusion_deg=cfg.schedule.moon_exclusion_deg,
        min_el_deg=cfg.safety.min_el_deg,
        horizon_mask=[(float(a), float(m)) for a, m in zip(az, mask, strict=True)],
    )
