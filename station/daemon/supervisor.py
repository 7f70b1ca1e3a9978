"""The supervisor: modes, the schedule, and passes run one after another.

One loop, woken by the clock or by a command: re-plan when due, publish state and health,
and in ``auto`` mode start the next scheduled pass at AOS − lead time. Each pass runs in
its own task (:class:`~station.daemon.pass_runner.PassRunner`); the loop keeps beating the
watchdog heartbeat while it waits. A pass that ends with a fault puts the station in
``safe``; so does any unexpected exception, after which the daemon stays up, parked.

Its helpers each have one job: :mod:`~station.daemon.recovery` (what the previous run
left), :mod:`~station.daemon.passbook` (the plan and the decisions about its passes),
:mod:`~station.daemon.passslot` (the one pass in progress and the reports of those ended),
:mod:`~station.daemon.reporting` with :mod:`~station.daemon.status` (the state, schedule
and health messages; the builders are pure) and :mod:`~station.daemon.disk` (free disk
and its alarm), :mod:`~station.daemon.control` (the operator commands). The one record of mode and phase is :attr:`Supervisor.record`
(what the state file holds); :attr:`mode` and :attr:`phase` read it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from drivers.errors import DriverError
from station.config import StationConfig
from station.daemon.alarms import Severity
from station.daemon.context import StationContext, take_live_config
from station.daemon.control import OperatorControl
from station.daemon.modes import Mode, Outcome, Phase
from station.daemon.pass_runner import PassReport, PassRunner
from station.daemon.passbook import PassBook
from station.daemon.passslot import PassSlot
from station.daemon.publisher import NullPublisher, Publisher
from station.daemon.record import SegmentState
from station.daemon.recovery import recover
from station.daemon.reporting import Reporter
from station.daemon.statefile import StateFile, StationState, pass_state, stamp
from station.daemon.status import StationView
from station.daemon.watchdog import Heartbeat, beating, wait_beating
from station.mqtt.messages import (
    TRANSITION_REASON_MAX,
    HealthMessage,
    PhaseTransition,
    StateMessage,
)
from station.schedule import PlannedPass, Schedule

log = logging.getLogger("station.supervisor")

T = TypeVar("T")


class Supervisor:
    """Runs the station: the loop, the schedule, one pass at a time, safe mode."""

    def __init__(self, ctx: StationContext, *, heartbeat: Heartbeat | None = None,
                 publisher: Publisher | None = None, beat_period_s: float = 1.0,
                 status_hook: Callable[[str], None] | None = None):
        self.ctx = ctx
        self.heartbeat = heartbeat
        self._publisher: Publisher = publisher or NullPublisher()
        self.beat_period_s = beat_period_s
        self.status_hook = status_hook or (lambda text: None)
        self.statefile = StateFile(ctx.cfg.state_dir)
        #: The one record of mode and phase (and the pass in progress): the state file's.
        self.record = StationState(mode=Mode(ctx.cfg.operations.start_mode), updated=ctx.clock.now())
        self.mode_reason = ""
        self.book = PassBook(ctx, self._beating)
        self.reporter = Reporter(ctx, self.book, self.publisher)
        self.slot = PassSlot(ctx, self.book)
        self.started_s = ctx.clock.now_s()
        self.control = OperatorControl(self)
        self._wake = asyncio.Event()
        self._replan_requested = True
        self._next_plan_s = -math.inf
        self._next_health_s = -math.inf
        if publisher is not None:
            ctx.alarms.set_sink(publisher.publish_alarm)

    # == the record ===========================================================================
    @property
    def mode(self) -> Mode:
        return self.record.mode

    @property
    def phase(self) -> Phase:
        return self.record.phase

    @property
    def publisher(self) -> Publisher:
        return self._publisher

    @publisher.setter
    def publisher(self, publisher: Publisher) -> None:
        """Set at assembly (the MQTT service is built after the supervisor's control)."""
        self._publisher = self.reporter.publisher = publisher

    @property
    def schedule(self) -> Schedule | None:
        return self.book.schedule

    @property
    def runner(self) -> PassRunner | None:
        return self.slot.runner

    @property
    def pass_task(self) -> asyncio.Task[PassReport] | None:
        return self.slot.task

    @property
    def reports(self) -> list[PassReport]:
        return self.slot.reports

    @property
    def pass_finished(self) -> asyncio.Event:
        """Set each time a pass ends (tests and rehearsals wait on it)."""
        return self.slot.finished

    @property
    def pass_running(self) -> bool:
        return self.pass_task is not None

    @property
    def current_pass_id(self) -> str | None:
        return self.runner.entry.pass_id if self.runner is not None else None

    def _update(self, **changes: object) -> None:
        """Change the record and save it: every change of mode or phase goes through here."""
        self.record = stamp(self.record, self.ctx.clock.now(), **changes)
        try:
            self.statefile.save(self.record)
        except OSError as exc:
            self.ctx.alarms.raise_("state.file", Severity.WARNING,
                                   f"cannot write the state file {self.statefile.path}: {exc}")

    def set_mode(self, mode: Mode, reason: str = "") -> None:
        """Record a new mode (no action: see :meth:`enter_safe` and the operator control)."""
        self.mode_reason = reason
        self._update(mode=mode)
        self._publish_state()

    # == the loop ============================================================================
    async def run(self) -> None:
        """Run until cancelled."""
        await self._recover()
        await self.ctx.connect_all()
        self._publish_state()
        while True:
            self._beat()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the daemon stays up, parked and safe
                log.exception("supervisor: unexpected error")
                await self.enter_safe(f"internal error in the supervisor: {exc!r}")
            await self._wait(self._next_wake_s())

    async def _step(self) -> None:
        now_s = self.ctx.clock.now_s()
        if self.pass_task is not None and self.pass_task.done():
            await self._pass_finished(self.pass_task)
        if self._replan_requested or now_s >= self._next_plan_s:
            await self.replan()
        if now_s >= self._next_health_s:
            await self._housekeeping()
            self._next_health_s = now_s + self.ctx.cfg.mqtt.telemetry_idle_s
        if self.pass_task is None and self.mode == Mode.AUTO:
            entry = self._due_pass(now_s)
            if entry is not None:
                self._start_pass(entry)

    async def _housekeeping(self) -> None:
        """Measure (disk, time reference), publish health and state, retry lost links."""
        idle = self.pass_task is None
        if idle:
            await self.reporter.refresh_time_reference()
        self.publisher.publish_health(self.reporter.check_health(pass_running=not idle))
        self._publish_state()  # keeps uptime and next pass current
        if idle:
            await self.ctx.reconnect_missing()
            await self.reporter.publish_idle_mount()

    def _next_wake_s(self) -> float:
        """Clock time of the next thing the loop must do by itself."""
        now_s = self.ctx.clock.now_s()
        wake = min(self._next_plan_s, self._next_health_s)
        if self.pass_task is None and self.mode == Mode.AUTO:
            upcoming = self.book.upcoming()
            if upcoming is not None:
                wake = min(wake, upcoming.aos_s - upcoming.lead_time_s)
        return max(wake, now_s)

    async def _wait(self, until_s: float) -> None:
        """Sleep on the clock until ``until_s``, a wake-up or the pass's end, beating."""
        await wait_beating(self.ctx.clock, until_s, self._wake, self.pass_task, self._beat,
                           self.ctx.clock_s_for_wall(self.beat_period_s))

    async def _beating(self, work: Awaitable[T]) -> T:
        return await beating(work, self.heartbeat, self.beat_period_s)

    def wake(self) -> None:
        self._wake.set()

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

    # == schedule ===========================================================================
    async def replan(self) -> None:
        """Plan again now (see :meth:`PassBook.replan`) and publish the schedule."""
        self._replan_requested = False
        await self.book.replan()
        self._next_plan_s = self.ctx.clock.now_s() + self.ctx.cfg.operations.replan_interval_s
        self._publish_schedule()
        self._publish_state()

    def _due_pass(self, now_s: float) -> PlannedPass | None:
        p = self.book.upcoming()
        if p is None or now_s < p.aos_s - p.lead_time_s:
            return None
        if self.reporter.disk.full:
            self._skip(p, "disk nearly full: no new passes are accepted")
            return None
        return p

    # == passes =============================================================================
    def _start_pass(self, entry: PlannedPass, segment: int = 1,
                    earlier: list[SegmentState] | None = None) -> None:
        self.slot.start(entry, self.publisher, on_phase=self._on_phase,
                        on_file_opened=self._on_file_opened, segment=segment, earlier=earlier)

    async def _pass_finished(self, task: asyncio.Task[PassReport]) -> None:
        try:
            report = self.slot.take(task)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # PassRunner.run never raises for pass faults; this is a bug
            log.exception("pass task failed")
            await self.enter_safe(f"pass task crashed: {exc!r}")
            return
        self._update(phase=Phase.IDLE, current_pass=None)
        if report.go_safe:
            await self.enter_safe(f"pass {report.pass_id} {report.outcome.value}: {report.reason}")
        self._publish_schedule()
        self._publish_state()

    def _on_phase(self, phase: Phase, runner: PassRunner, reason: str) -> None:
        previous, entry, now = self.phase, runner.entry, self.ctx.clock.now()
        self._update(phase=phase, current_pass=pass_state(
            entry, runner.segment, phase, now, self.record.current_pass, runner.earlier_segments))
        log.info("pass %s: phase %s (%s)", entry.pass_id, phase.value, reason)
        self.publisher.publish_transition(PhaseTransition(
            time=now, pass_id=entry.pass_id, satellite=entry.satellite, segment=runner.segment,
            from_phase=previous, to_phase=phase, mode=self.mode,
            reason=reason[:TRANSITION_REASON_MAX]))
        self.status_hook(f"{self.mode.value}: {phase.value} {entry.satellite} {entry.pass_id}")
        self._publish_state()

    def _on_file_opened(self, path: str) -> None:
        cur = self.record.current_pass
        if cur is not None:
            self._update(current_pass=cur.model_copy(update={"pass_file": path}))

    def _skip(self, p: PlannedPass, reason: str) -> None:
        self.slot.skip(p, reason, self.publisher)
        self._publish_schedule()

    def request_abort(self, reason: str, *, go_safe: bool = False) -> bool:
        """Ask the pass in progress to end (without waiting); False when there is none."""
        return self.slot.request_abort(reason, go_safe=go_safe)

    async def abort_current(self, reason: str, *, go_safe: bool = False) -> PassReport | None:
        """Abort the pass in progress and wait for it to finalize and park."""
        task = self.pass_task
        if task is None or not self.request_abort(reason, go_safe=go_safe):
            return None
        await asyncio.wait({task})
        await self._pass_finished(task)
        return self.reports[-1] if self.reports else None

    async def shutdown(self) -> None:
        """Clean stop: end the pass (file closed, mount parked), park, save the state."""
        if self.pass_task is not None:
            await self.abort_current("daemon shutting down")
        else:
            await self.park_idle("daemon shutting down")
        self._update(clean_shutdown=True)

    # == safety ==============================================================================
    async def enter_safe(self, reason: str) -> None:
        """Safe mode: alarm, the pass aborted (it parks) or the mount parked."""
        self.mode_reason = reason
        self._update(mode=Mode.SAFE)
        self.ctx.alarms.raise_("station.safe", Severity.CRITICAL, f"safe mode: {reason}")
        if self.pass_task is not None and not self.pass_task.done():
            self.request_abort(f"safe mode: {reason}", go_safe=True)
        else:
            await self.park_idle(reason)
        self.status_hook(f"safe: {reason}")
        self._publish_state()

    async def park_idle(self, why: str) -> bool:
        """Park with no pass in progress; False when the mount is away or will not park."""
        ctx = self.ctx
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

    # == recovery ============================================================================
    async def _recover(self) -> None:
        """Take up what the previous run left (see :mod:`station.daemon.recovery`)."""
        found = await recover(self.ctx, self.statefile.load(), self.mode, self.publisher)
        self.record, self.mode_reason = found.state, found.mode_reason
        self.book.done.update(found.done)
        self._update()
        if found.resume is None:
            return
        await self.replan()
        cur = found.resume.current
        entry = self.book.get(cur.pass_id)
        if entry is None:
            log.error("cannot resume pass %s: not in the new schedule", cur.pass_id)
            self.book.done[cur.pass_id] = Outcome.INTERRUPTED
            return
        await self.ctx.connect_all()
        self._start_pass(entry, segment=found.resume.segment, earlier=found.resume.earlier)

    # == messages ============================================================================
    def state_message(self) -> StateMessage:
        current = self.runner.entry if self.runner is not None else None
        return self.reporter.state(StationView(
            mode=self.mode, phase=self.phase if self.runner is not None else Phase.IDLE,
            mode_reason=self.mode_reason, started_s=self.started_s, current=current,
            next=self.book.upcoming(after=current)))

    def health_message(self) -> HealthMessage:
        """The health message from the last measurements (no side effects)."""
        return self.reporter.health()

    def check_health(self) -> HealthMessage:
        """Measure the disk (raising or clearing its alarm), then the health message."""
        return self.reporter.check_health(pass_running=self.pass_task is not None)

    def _publish_state(self) -> None:
        self.publisher.publish_state(self.state_message())

    def _publish_schedule(self) -> None:
        self.reporter.publish_schedule()

    # == config reload =========================================================================
    def apply_config(self, cfg: StationConfig) -> list[str]:
        """Take what can change live from a new config; return what needs a restart."""
        restart = take_live_config(self.ctx, cfg)
        self._replan_requested = True
        self.wake()
        return restart

    async def reload_catalog(self) -> None:
        await self.book.reload_elements()
        self._replan_requested = True
        self.wake()
