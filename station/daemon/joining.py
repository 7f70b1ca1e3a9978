"""Joining a track already under way (a segment resumed after a crash, or a pass started
late): where on the track the mount can be in time, and whether enough QKD window is left.

The pass runner asks :func:`join_track` before each slew of such a segment; a
:class:`TooLittleWindow` makes the segment ``skipped``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from drivers.mount.base import MountPosition
from station.clock import from_epoch_s
from station.daemon.context import StationContext
from station.daemon.record import Cause
from station.orbit.passes import PassInfo
from station.tracking import TrackPlan
from station.utc import log_time

__all__ = ["JOIN_SETTLE_S", "MIN_USEFUL_WINDOW_S", "Joined", "TooLittleWindow", "join_track"]

log = logging.getLogger("station.pass")

#: A pass (segment) is started only if at least this much QKD window is left once the
#: mount can be on the track.
MIN_USEFUL_WINDOW_S = 10.0
#: Head start over the slew estimate when joining a track already under way: the
#: mount's settling and the tracker's capture.
JOIN_SETTLE_S = 3.0


class TooLittleWindow(Exception):
    """Less than :data:`MIN_USEFUL_WINDOW_S` of QKD window would be left; the reason."""


@dataclass(frozen=True, slots=True)
class Joined:
    """The part of the track to follow, how long after the segment's start the mount
    can be on it, and that time as the join's cause of lost window."""

    plan: TrackPlan
    delay_s: float
    cause: Cause


async def join_track(ctx: StationContext, entry: PassInfo, plan: TrackPlan, *, segment: int,
                     started_s: float) -> Joined:
    """The part of ``plan`` the mount can join from where it is now.

    Raises :class:`TooLittleWindow` when less than :data:`MIN_USEFUL_WINDOW_S` of QKD
    window would be left.
    """
    pos = await ctx.mount.position()
    now_s = ctx.clock.now_s()
    join_s = _join_time(ctx, plan, pos, now_s)
    qkd_end_s = (entry.qkd_end or entry.los).timestamp()
    qkd_start_s = (entry.qkd_start or entry.aos).timestamp()
    left_s = qkd_end_s - max(join_s, qkd_start_s) if join_s is not None else 0.0
    if join_s is None or left_s < MIN_USEFUL_WINDOW_S:
        raise TooLittleWindow(
            f"too little QKD window left: the mount could be on the track at "
            f"{log_time(from_epoch_s(join_s)) if join_s is not None else 'no time before LOS'}"
            f", leaving {max(0.0, left_s):.1f} s (at least {MIN_USEFUL_WINDOW_S:g} s needed)")
    log.info("pass %s: joining the track at %s, %.1f s after the segment started "
             "(%.1f s of QKD window left)", entry.pass_id, log_time(from_epoch_s(join_s)),
             join_s - started_s, left_s)
    return Joined(
        plan=plan.window(join_s, plan.los_s), delay_s=round(join_s - started_s, 3),
        cause=Cause(start_s=started_s, end_s=join_s, cause=(
            f"joining the track in segment {segment} ({join_s - now_s:.1f} s slew and settle)")))


def _join_time(ctx: StationContext, plan: TrackPlan, pos: MountPosition,
               now_s: float) -> float | None:
    """The earliest plan sample the mount can reach from ``pos`` in time (slew estimate
    plus :data:`JOIN_SETTLE_S`), or None if none before LOS."""
    times = plan.time_s
    for i in range(int(times.searchsorted(now_s)), len(times) - 1):
        t = float(times[i])
        slew_s = ctx.tracker.estimate_slew_s(plan.window(t, plan.los_s), pos)
        if now_s + slew_s + JOIN_SETTLE_S <= t:
            return t
    return None
