"""Parking the mount: between passes (:func:`park_idle`) and after one
(:func:`park_after_pass`, which raises the ``mount.park`` alarm when it does not get
there)."""

from __future__ import annotations

import logging

from drivers.errors import DriverError
from drivers.mount.base import MountError
from station.daemon.alarms import Severity
from station.daemon.context import StationContext

__all__ = ["park_after_pass", "park_idle"]

log = logging.getLogger("station.supervisor")


async def park_idle(ctx: StationContext, why: str) -> bool:
    """Park with no pass in progress; False when the mount is away or will not park."""
    if not ctx.links["mount"].connected:
        return False
    try:
        if await ctx.tracker.park():
            return await ctx.tracker.wait_parked(ctx.cfg.operations.faults.park_timeout_s)
    except (DriverError, OSError, TimeoutError) as exc:
        # What "link lost" means; anything else is a bug and goes to the loop's handler.
        ctx.mark_lost("mount", exc)
        log.error("could not park (%s): %s", why, exc)
    return False


async def park_after_pass(ctx: StationContext, pass_id: str) -> bool | None:
    """Park at the end of a pass: whether the mount got there (if not, the ``mount.park``
    alarm); None, with nothing tried, when the mount is not connected."""
    parked = False
    if not ctx.links["mount"].connected:
        logging.getLogger("station.pass").error(
            "pass %s: cannot park, the mount is not connected", pass_id)
        return None
    try:
        if await ctx.tracker.park():
            parked = await ctx.tracker.wait_parked(ctx.cfg.operations.faults.park_timeout_s)
    except (MountError, TimeoutError) as exc:
        ctx.mark_lost("mount", exc)
    if parked:
        ctx.alarms.clear("mount.park", "parked")
    else:
        ctx.alarms.raise_("mount.park", Severity.CRITICAL,
                          "the mount did not reach the park position", pass_id=pass_id)
    return parked
