"""Building the gated mount from config, and planning a scheduled pass's track."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from drivers import registry
from station.clock import Clock, to_epoch_s
from station.tracking.gate import GatedMount, SunFunction
from station.tracking.trajectory import TrackPlan, plan_track

if TYPE_CHECKING:
    from skyfield.api import EarthSatellite

    from station.config.root import StationConfig


def build_mount(cfg: StationConfig, clock: Clock, *, sun_altaz: SunFunction | None = None) -> GatedMount:
    """Create the configured mount backend and wrap it in the safety gate at once.

    The backend instance is never returned: the gate is the only way to it. Not yet
    connected; ``await gated.connect()``. Raises ``ValueError`` when the configured park
    position or limits are impossible for this backend.
    """
    m = cfg.mount
    backend = registry.create("mount", m.backend, dict(m.options), clock=clock, name="mount")
    try:
        return GatedMount(
            backend, site=cfg.site, safety=cfg.safety, clock=clock,
            park_az_deg=m.park_az_deg, park_el_deg=m.park_el_deg,
            park_tolerance_deg=m.park_tolerance_deg, command_timeout_s=m.command_timeout_s,
            sun_altaz=sun_altaz,
        )
    except Exception as exc:
        # The park position failed the gate's static checks: a config problem.
        raise ValueError(f"[mount]/[safety]: {exc}") from exc


async def plan_for_pass(
    gated: GatedMount,
    cfg: StationConfig,
    satellite_or_pass: Any,
    aos: datetime | float | None = None,
    los: datetime | float | None = None,
    *,
    pass_id: str | None = None,
    from_az_deg: float | None = None,
) -> TrackPlan:
    """Plan the track of a pass in a worker thread.

    Takes either a scheduled pass object (attributes ``satellite`` (an EarthSatellite),
    ``aos`` and ``los`` (aware datetimes) and ``pass_id``), or an ``EarthSatellite`` with
    ``aos`` and ``los``. The wrap turn is chosen for the shortest slew from
    ``from_az_deg`` (default: where the mount is now).
    """
    obj = satellite_or_pass
    sat: EarthSatellite = getattr(obj, "satellite", obj)
    aos = getattr(obj, "aos", aos) if aos is None else aos
    los = getattr(obj, "los", los) if los is None else los
    if aos is None or los is None:
        raise ValueError("plan_for_pass needs AOS and LOS (from the pass or as arguments)")
    pid = pass_id if pass_id is not None else str(getattr(obj, "pass_id", "") or "")
    if from_az_deg is None:
        from_az_deg = (await gated.position()).az_deg
    return await asyncio.to_thread(
        plan_track, sat, cfg.site, to_epoch_s(aos), to_epoch_s(los), limits=gated.limits,
        tracking=cfg.tracking, from_az_deg=from_az_deg, pass_id=pid,
    )
