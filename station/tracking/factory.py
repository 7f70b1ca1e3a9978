"""Building the gated mount from config, and planning a scheduled pass's track."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

from drivers import registry
from station.clock import Clock, to_epoch_s
from station.tracking.gate import CommandRefused, GatedMount, SunFunction
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
    options = dict(m.options)
    # A backend that converts az/el to the sky itself (INDI) needs the site: it comes
    # from [site] unless the options give it, so the position is written in one place.
    fields = registry.backend_class("mount", m.backend).Options.model_fields
    for key in ("latitude_deg", "longitude_deg", "height_m"):
        if key in fields and key not in options:
            options[key] = getattr(cfg.site, key)
    backend = registry.create("mount", m.backend, options, clock=clock, name="mount")
    try:
        return GatedMount(
            backend, site=cfg.site, safety=cfg.safety, clock=clock,
            park_az_deg=m.park_az_deg, park_el_deg=m.park_el_deg,
            park_tolerance_deg=m.park_tolerance_deg, command_timeout_s=m.command_timeout_s,
            sun_altaz=sun_altaz,
        )
    except (CommandRefused, ValueError) as exc:
        # The park position failed the gate's static checks, or the [safety] travel leaves
        # nothing of the mount's: a config problem. Anything else is a bug and keeps its
        # own type and traceback.
        raise ValueError(f"[mount]/[safety]: {exc}") from exc


async def plan_for_pass(
    gated: GatedMount,
    cfg: StationConfig,
    satellite: EarthSatellite,
    *,
    aos: datetime | float,
    los: datetime | float,
    pass_id: str = "",
    from_az_deg: float | None = None,
) -> TrackPlan:
    """Plan the track of a pass from ``aos`` to ``los`` (UTC datetimes or epoch seconds) in
    a worker thread. The wrap turn is chosen for the shortest slew from ``from_az_deg``
    (default: where the mount is now).
    """
    if from_az_deg is None:
        from_az_deg = (await gated.position()).az_deg
    return await asyncio.to_thread(
        plan_track, satellite, cfg.site, to_epoch_s(aos), to_epoch_s(los), limits=gated.limits,
        tracking=cfg.tracking, from_az_deg=from_az_deg, pass_id=pass_id,
    )
