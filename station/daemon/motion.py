"""The mount's part of a pass: the slew to the start of the track (joining a track under
way), following it to LOS, and riding out a mount link lost within the grace period.

Faults end the pass with :class:`~station.daemon.passreport.PassAborted`; a track under
way with too little window left raises :class:`~station.daemon.joining.TooLittleWindow`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from drivers.errors import ConnectionLost, DriverError
from drivers.mount.base import MountError
from station.daemon.context import StationContext, with_grace
from station.daemon.joining import Joined, join_track
from station.daemon.passreport import PassAborted
from station.orbit.passes import PassInfo
from station.tracking import TrackingStats, TrackPlan
from station.tracking.controller import PrepositionTimeout, TrackingAborted

__all__ = ["follow", "mount_fault", "slew_to_start"]

log = logging.getLogger("station.pass")

#: Joins tried when a slew to a track under way takes longer than estimated.
JOIN_ATTEMPTS = 3


async def slew_to_start(ctx: StationContext, entry: PassInfo, full_plan: TrackPlan, *,
                        segment: int, started_s: float,
                        on_join: Callable[[Joined], None]) -> TrackPlan:
    """Slew to the start of the track and wait there; returns the plan to follow.

    A track under way (a resumed segment) is joined where the satellite will be as soon as
    the mount can be there, not after a full slew plus margin (``on_join`` is told where).
    A slew that takes longer than estimated (a detour around the Sun or the horizon mask)
    joins again further on, :data:`JOIN_ATTEMPTS` times at most.
    """
    joining, plan = ctx.clock.now_s() > full_plan.aos_s, full_plan
    for attempt in range(JOIN_ATTEMPTS):
        if joining:
            joined = await join_track(ctx, entry, full_plan, segment=segment,
                                      started_s=started_s)
            on_join(joined)
            plan = joined.plan
        try:
            await ctx.tracker.preposition(plan, deadline_s=plan.aos_s)
            return plan
        except PrepositionTimeout as exc:
            if not joining or attempt == JOIN_ATTEMPTS - 1:
                raise PassAborted(f"not at the rise point in time: {exc}") from exc
            log.warning("pass %s: not on the track in time (%s); joining further on",
                        entry.pass_id, exc)
        except MountError as exc:
            await mount_fault(ctx, entry.pass_id, exc)  # raises unless the link came back
            await ctx.tracker.preposition(plan, deadline_s=plan.aos_s)
            return plan
    raise AssertionError("not reached: the last attempt returns or raises")


async def follow(ctx: StationContext, pass_id: str, plan: TrackPlan) -> TrackingStats:
    """Track to LOS, riding out a mount link drop within the grace period. A
    :class:`PassAborted` carries the tracking statistics so far."""
    while True:
        try:
            return await ctx.tracker.track(plan)
        except TrackingAborted as exc:
            raise PassAborted(f"tracking: {exc}", tracking=exc.stats) from exc
        except MountError as exc:
            stats = ctx.tracker.stats
            try:
                await mount_fault(ctx, pass_id, exc)
            except PassAborted as aborted:
                aborted.tracking = stats
                raise
            now_s = ctx.clock.now_s()
            if plan.los_s - now_s < 2.0:
                return stats
            plan = plan.window(now_s + 1.0, plan.los_s)
            log.info("pass %s: mount back, resuming the track", pass_id)


async def mount_fault(ctx: StationContext, pass_id: str, exc: DriverError) -> None:
    """The mount failed mid-pass: reconnect within the grace period or abort to safe."""
    ctx.mark_lost("mount", exc)
    if not isinstance(exc, ConnectionLost):
        raise PassAborted(f"mount error: {exc}", go_safe=True) from exc
    grace_s = ctx.cfg.operations.faults.mount_reconnect_grace_s
    log.warning("pass %s: mount link lost (%s); reconnecting for up to %.0f s",
                pass_id, exc, grace_s)
    if not await with_grace(lambda: ctx.connect("mount"), ctx.clock, grace_s):
        raise PassAborted(
            f"mount link lost and not back within {grace_s:g} s: {exc}", go_safe=True) from exc
