"""The pass book: the schedule and what the station decided about each pass.

It holds the current plan, the operator's forced includes and excludes, and the passes
already done (with their outcome); it plans again (in a worker thread, the heartbeat
going on meanwhile), says which pass comes next, and re-reads the element files keeping
the last good catalog.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from station.daemon.alarms import Severity
from station.daemon.context import ELEMENTS_ALARM, StationContext, note_element_load
from station.daemon.joining import MIN_USEFUL_WINDOW_S
from station.daemon.modes import Outcome
from station.orbit.catalog import LoadReport
from station.schedule import PlannedPass, Schedule, plan
from station.utc import log_time

log = logging.getLogger("station.supervisor")

#: Runs blocking work while the watchdog heartbeat goes on (the supervisor's).
Beating = Callable[[Awaitable[Any]], Awaitable[Any]]


class PassBook:
    """The plan and the decisions about its passes (see the module docstring)."""

    def __init__(self, ctx: StationContext, beating: Beating):
        self.ctx = ctx
        self._beating = beating
        self.schedule: Schedule | None = None
        self.include: set[str] = set()
        self.exclude: set[str] = set()
        self.done: dict[str, Outcome] = {}

    async def replan(self) -> Schedule:
        """Plan from half an hour back (a pass already up is seen) over the configured hours."""
        ctx = self.ctx
        now_s = ctx.clock.now_s()
        hours = ctx.cfg.operations.plan_hours + 0.5
        schedule: Schedule = await self._beating(asyncio.to_thread(
            plan, ctx.cfg, ctx.catalog, now_s - 1800.0, hours, sorted(self.include),
            sorted(self.exclude)))
        self.schedule = schedule
        for w in schedule.warnings:
            log.warning("schedule: %s", w)
        for p in schedule.scheduled():
            if p.los_s > now_s and p.pass_id not in self.done:
                log.info("schedule: %s %s scheduled, AOS %s, max el %.1f°, QKD %.0f s (%s)",
                         p.satellite, p.pass_id, log_time(p.aos), p.max_el_deg,
                         p.qkd_duration_s, p.reason)
        self._check_elements(now_s)
        return schedule

    def _check_elements(self, now_s: float) -> None:
        for age in self.ctx.catalog.ages(now_s):
            key = f"elements.{age.norad_id}"
            if age.stale:
                self.ctx.alarms.raise_(key, Severity.WARNING, age.warning or
                                       f"elements of {age.name} are {age.age_days:.1f} days old")
            else:
                self.ctx.alarms.clear(key, f"elements of {age.name} are fresh")

    def get(self, pass_id: str) -> PlannedPass | None:
        return self.schedule.get(pass_id) if self.schedule else None

    def resumable(self, pass_id: str) -> PlannedPass | None:
        """The pass a crash interrupted, from the new schedule; None (the pass marked
        ``interrupted``) when it is not in it."""
        entry = self.get(pass_id)
        if entry is None:
            log.error("cannot resume pass %s: not in the new schedule", pass_id)
            self.done[pass_id] = Outcome.INTERRUPTED
        return entry

    def upcoming(self, after: PlannedPass | None = None) -> PlannedPass | None:
        """The next scheduled pass still worth starting (after ``after``, if given)."""
        if self.schedule is None:
            return None
        now_s = self.ctx.clock.now_s()
        for p in self.schedule.scheduled():
            if p.pass_id in self.done or p.pass_id in self.exclude:
                continue
            if after is not None and p.aos_s <= after.aos_s:
                continue
            end_s = (p.qkd_end or p.los).timestamp()
            if end_s - MIN_USEFUL_WINDOW_S > now_s:
                return p
        return None

    async def reload_elements(self) -> LoadReport:
        """Re-read the element files; whatever they hold, the pass in progress goes on.

        Broken files keep their satellites' previous elements (Catalog.reload) and raise
        the elements alarm. Should the reload itself fail, the catalog is untouched (it
        swaps in one assignment at the end) and that is an alarm too, never an exception
        into the daemon's task group.
        """
        ctx = self.ctx
        try:
            report: LoadReport = await self._beating(asyncio.to_thread(ctx.catalog.reload))
        except Exception as exc:  # whatever broke, the running catalog stays: said, logged
            log.exception("element reload failed; keeping the current catalog")
            ctx.alarms.raise_(ELEMENTS_ALARM, Severity.WARNING,
                              f"element reload failed, the previous catalog is kept: "
                              f"{type(exc).__name__}: {str(exc)[:200]}")
            return LoadReport(loaded=len(ctx.catalog), problems=[f"(reload): {type(exc).__name__}"])
        note_element_load(ctx.alarms, report)
        return report


