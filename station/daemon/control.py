"""The operator commands: :class:`OperatorControl` implements
:class:`station.mqtt.commands.StationControl` on the :class:`Supervisor`.

Each method checks what the command may do in the current mode and phase, asks the
supervisor to do it, and returns the verb's result model. The rules:

- ``park`` and ``stop`` always work (a pass in progress is aborted first / asked to abort);
  they need a connected mount.
- ``goto`` only in ``manual`` or ``maintenance`` mode with no pass in progress, and
  through the safety gate (a refusal names the limit).
- ``set_mode``: leaving ``auto`` aborts a pass in progress; ``safe`` parks; going back
  to ``auto`` parks the telescope until the next pass.
- ``skip_pass`` / ``include_pass`` name a pass of the current schedule; the pass in
  progress cannot be skipped (``abort_pass`` it).
- ``abort_pass`` needs a pass in progress.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from station.daemon.modes import Mode
from station.daemon.parking import park_idle
from station.mqtt.commands import CommandRefused
from station.mqtt.messages import (
    AbortPassResult,
    GotoResult,
    IncludePassResult,
    ParkResult,
    ReloadElementsResult,
    RescheduleResult,
    SetModeResult,
    SkipPassResult,
    StopResult,
)
from station.schedule import PlannedPass
from station.tracking import CommandRefused as GateRefused

if TYPE_CHECKING:
    from station.daemon.supervisor import Supervisor

log = logging.getLogger("station.supervisor")


class OperatorControl:
    """The operator's verbs on a running supervisor (see the module docstring)."""

    def __init__(self, supervisor: Supervisor):
        self.sup = supervisor

    async def park(self) -> ParkResult:
        sup = self.sup
        if sup.slot.running:
            report = await sup.abort_current("operator park")
            return ParkResult(parked=bool(report and report.mount_parked), pass_aborted=True)
        self._require_mount()
        return ParkResult(parked=await park_idle(sup.ctx, "operator park"), pass_aborted=False)

    async def stop(self) -> StopResult:
        sup = self.sup
        aborted = sup.request_abort("operator stop")
        self._require_mount()
        await sup.ctx.mount.stop()
        return StopResult(stopped=True, pass_aborted=aborted)

    async def goto(self, az_deg: float, el_deg: float) -> GotoResult:
        sup = self.sup
        if sup.mode in (Mode.AUTO, Mode.SAFE):
            raise CommandRefused(
                f"goto refused in {sup.mode.value} mode: set_mode manual (or maintenance) first")
        if sup.slot.running:
            raise CommandRefused("goto refused: a pass is in progress; abort_pass first")
        self._require_mount()
        try:
            await sup.ctx.mount.slew_to(az_deg, el_deg)
        except GateRefused as exc:
            raise CommandRefused(f"goto refused by the safety gate: {exc}") from exc
        return GotoResult(az_deg=az_deg, el_deg=el_deg, accepted=True)

    async def set_mode(self, mode: Mode) -> SetModeResult:
        sup = self.sup
        previous, mode = sup.mode, Mode(mode)
        if mode == Mode.SAFE:
            await sup.enter_safe("operator request")
        else:
            if mode != Mode.AUTO and sup.slot.running:
                await sup.abort_current(f"mode changed to {mode.value}")
            sup.set_mode(mode)
            if previous == Mode.SAFE:
                sup.ctx.alarms.clear("station.safe", f"cleared by operator ({mode.value})")
            if mode == Mode.AUTO and previous != Mode.AUTO and not sup.slot.running \
                    and sup.ctx.links["mount"].connected:
                # Handing the station back to the schedule: it waits for the next pass
                # parked, not wherever an operator left the telescope.
                await park_idle(sup.ctx, "back to auto mode")
        log.info("mode %s → %s", previous.value, sup.mode.value)
        sup.wake()
        return SetModeResult(mode=sup.mode, previous=previous)

    async def skip_pass(self, pass_id: str) -> SkipPassResult:
        sup = self.sup
        p = self._known(pass_id)
        if sup.current_pass_id == p.pass_id:
            raise CommandRefused(f"pass {p.pass_id} is in progress: use abort_pass")
        sup.book.exclude.add(p.pass_id)
        sup.book.include.discard(p.pass_id)
        await sup.replan()
        sup.wake()
        return SkipPassResult(pass_id=p.pass_id, excluded=True)

    async def include_pass(self, pass_id: str) -> IncludePassResult:
        sup = self.sup
        p = self._known(pass_id)
        sup.book.include.add(p.pass_id)
        sup.book.exclude.discard(p.pass_id)
        await sup.replan()
        sup.wake()
        now = sup.schedule.get(p.pass_id) if sup.schedule else None
        return IncludePassResult(pass_id=p.pass_id, status=now.status if now else "unknown",
                                 reason=now.reason if now else "")

    async def abort_pass(self, reason: str) -> AbortPassResult:
        sup = self.sup
        if not sup.slot.running:
            raise CommandRefused("no pass is in progress")
        report = await sup.abort_current(f"operator: {reason}")
        return AbortPassResult(pass_id=report.pass_id if report else None,
                               outcome=report.outcome if report else None,
                               events_recorded=report.events_recorded if report else 0)

    async def reload_elements(self) -> ReloadElementsResult:
        sup = self.sup
        report = await sup.book.reload_elements()
        await sup.replan()
        sup.wake()
        return ReloadElementsResult(satellites=len(sup.ctx.catalog), problems=list(report.problems))

    async def reschedule(self) -> RescheduleResult:
        sup = self.sup
        await sup.replan()
        sup.wake()
        sched = sup.schedule
        return RescheduleResult(
            scheduled=[p.pass_id for p in sched.scheduled()] if sched else [],
            rejected=len(sched.rejected()) if sched else 0)

    def _known(self, pass_id: str) -> PlannedPass:
        sched = self.sup.schedule
        p = sched.get(pass_id) if sched else None
        if p is None:
            raise CommandRefused(f"unknown pass id {pass_id!r}: not in the current schedule")
        return p

    def _require_mount(self) -> None:
        link = self.sup.ctx.links["mount"]
        if not link.connected:
            raise CommandRefused(f"the mount is not connected: {link.detail}")
