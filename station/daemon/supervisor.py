"""The supervisor: modes, the schedule, and passes run one after another.

One loop, woken by the clock or by a command: re-plan when due, publish state and health,
and in ``auto`` mode start the next scheduled pass at AOS − lead time. Each pass runs in
its own task (:class:`~station.daemon.pass_runner.PassRunner`); the loop keeps beating the
watchdog heartbeat while it waits. A pass that ends with a fault puts the station in
``safe``; so does any unexpected exception, after which the daemon stays up, parked.

Its helpers each have one job: :mod:`~station.daemon.recovery` (what the previous run
left), :mod:`~station.daemon.passbook` (the plan and the decisions about its passes),
:mod:`~station.daemon.passslot` (the one pass in progress and the reports of those ended),
:mod:`~station.daemon.reporting` with :mod:`~station.daemon.status` (the state, schedule,
health and transition messages; the builders are pure), :mod:`~station.daemon.disk` (free
disk and its alarm), :mod:`~station.daemon.parking` (the mount parked between passes) and
:mod:`~station.daemon.control` (the operator commands). The one record of mode and phase
is :attr:`Supervisor.record`, a :class:`~station.daemon.statefile.ModeRecord` (what the
state file holds); :attr:`mode` and :attr:`phase` read it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from station.config import StationConfig
from station.daemon.alarms import Severity
from station.daemon.context import StationContext, take_live_config
from station.daemon.control import OperatorControl
from station.daemon.modes import Mode, Phase
from station.daemon.parking import park_idle
from station.daemon.pass_runner import PassReport, PassRunner
from station.daemon.passbook import PassBook
from station.daemon.passslot import PassSlot
from station.daemon.publisher import NullPublisher, Publisher
from station.daemon.record import SegmentState
from station.daemon.recovery import recover
from station.daemon.reporting import Reporter
from station.daemon.statefile import ModeRecord
from station.daemon.status import StationView, transition_message
from station.daemon.watchdog import Heartbeat, beating, wait_beating
from station.mqtt.messages import StateMessage
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
        #: The one record of mode and phase (and the pass in progress): the state file's.
        self.record = ModeRecord(ctx.cfg.state_dir, ctx.clock, ctx.alarms,
                                 Mode(ctx.cfg.operations.start_mode))
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
    def reports(self) -> list[PassReport]:
        return self.slot.reports

    @property
    def pass_finished(self) -> asyncio.Event:
        """Set each time a pass ends (bench/web.py and rehearsals wait on it)."""
        return self.slot.finished

    @property
    def current_pass_id(self) -> str | None:
        return self.slot.current_pass_id

    def set_mode(self, mode: Mode, reason: str = "") -> None:
        """Record a new mode (no action: see :meth:`enter_safe` and the operator control)."""
        self.record.set_mode(mode, reason)
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
        if self.slot.task is not None and self.slot.task.done():
            await self._pass_finished(self.slot.task)
        if self._replan_requested or now_s >= self._next_plan_s:
            await self.replan()
        if now_s >= self._next_health_s:
            await self._housekeeping()
            self._next_health_s = now_s + self.ctx.cfg.mqtt.telemetry_idle_s
        if self.slot.task is None and self.mode == Mode.AUTO:
            entry = self._due_pass(now_s)
            if entry is not None:
                self._start_pass(entry)

    async def _housekeeping(self) -> None:
        """Measure (disk, time reference), publish health and state, retry lost links."""
        idle = self.slot.task is None
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
        if self.slot.task is None and self.mode == Mode.AUTO:
            upcoming = self.book.upcoming()
            if upcoming is not None:
                wake = min(wake, upcoming.aos_s - upcoming.lead_time_s)
        return max(wake, now_s)

    async def _wait(self, until_s: float) -> None:
        """Sleep on the clock until ``until_s``, a wake-up or the pass's end, beating."""
        await wait_beating(self.ctx.clock, until_s, self._wake, self.slot.task, self._beat,
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
        self.reporter.publish_schedule()
        self._publish_state()

    def _due_pass(self, now_s: float) -> PlannedPass | None:
        p = self.book.upcoming()
        if p is None or now_s < p.aos_s - p.lead_time_s:
            return None
        if self.reporter.disk.full:
            self.slot.skip(p, "disk nearly full: no new passes are accepted", self.publisher)
            self.reporter.publish_schedule()
            return None
        return p

    # == passes =============================================================================
    def _start_pass(self, entry: PlannedPass, segment: int = 1,
                    earlier: list[SegmentState] | None = None) -> None:
        self.slot.start(entry, self.publisher, on_phase=self._on_phase,
                        on_file_opened=self.record.file_opened, segment=segment, earlier=earlier)

    async def _pass_finished(self, task: asyncio.Task[PassReport]) -> None:
        try:
            report = self.slot.take(task)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # PassRunner.run never raises for pass faults; this is a bug
            log.exception("pass task failed")
            await self.enter_safe(f"pass task crashed: {exc!r}")
            return
        self.record.update(phase=Phase.IDLE, current_pass=None)
        if report.go_safe:
            await self.enter_safe(f"pass {report.pass_id} {report.outcome.value}: {report.reason}")
        self.reporter.publish_schedule()
        self._publish_state()

    def _on_phase(self, phase: Phase, runner: PassRunner, reason: str) -> None:
        """Every phase change: the record saved, a transition and the state published."""
        entry = runner.entry
        previous = self.record.enter_phase(phase, entry, runner.segment, runner.earlier_segments)
        log.info("pass %s: phase %s (%s)", entry.pass_id, phase.value, reason)
        self.publisher.publish_transition(transition_message(
            self.ctx.clock.now(), entry, runner.segment, previous, phase, self.mode, reason))
        self.status_hook(f"{self.mode.value}: {phase.value} {entry.satellite} {entry.pass_id}")
        self._publish_state()

    def request_abort(self, reason: str, *, go_safe: bool = False) -> bool:
        """Ask the pass in progress to end (without waiting); False when there is none."""
        return self.slot.request_abort(reason, go_safe=go_safe)

    async def abort_current(self, reason: str, *, go_safe: bool = False) -> PassReport | None:
        """Abort the pass in progress and wait for it to finalize and park."""
        task = self.slot.task
        if task is None or not self.request_abort(reason, go_safe=go_safe):
            return None
        await asyncio.wait({task})
        await self._pass_finished(task)
        return self.reports[-1] if self.reports else None

    async def shutdown(self) -> None:
        """Clean stop: end the pass (file closed, mount parked), park, save the state."""
        if self.slot.task is not None:
            await self.abort_current("daemon shutting down")
        else:
            await park_idle(self.ctx, "daemon shutting down")
        self.record.update(clean_shutdown=True)

    # == safety ==============================================================================
    async def enter_safe(self, reason: str) -> None:
        """Safe mode: alarm, the pass aborted (it parks) or the mount parked."""
        self.record.set_mode(Mode.SAFE, reason)
        self.ctx.alarms.raise_("station.safe", Severity.CRITICAL, f"safe mode: {reason}")
        if self.slot.task is not None and not self.slot.task.done():
            self.request_abort(f"safe mode: {reason}", go_safe=True)
        else:
            await park_idle(self.ctx, reason)
        self.status_hook(f"safe: {reason}")
        self._publish_state()

    # == recovery ============================================================================
    async def _recover(self) -> None:
        """Take up what the previous run left (see :mod:`station.daemon.recovery`)."""
        found = await recover(self.ctx, self.record.file.load(), self.mode, self.publisher)
        self.record.restore(found.state, found.mode_reason)
        self.book.done.update(found.done)
        if found.resume is None:
            return
        await self.replan()
        entry = self.book.resumable(found.resume.current.pass_id)
        if entry is None:
            return
        await self.ctx.connect_all()
        self._start_pass(entry, segment=found.resume.segment, earlier=found.resume.earlier)

    # == messages ============================================================================
    def state_message(self) -> StateMessage:
        current = self.slot.runner.entry if self.slot.runner is not None else None
        return self.reporter.state(StationView(
            mode=self.mode, phase=self.phase if self.slot.runner is not None else Phase.IDLE,
            mode_reason=self.record.mode_reason, started_s=self.started_s, current=current,
            next=self.book.upcoming(after=current)))

    def _publish_state(self) -> None:
        self.publisher.publish_state(self.state_message())

    # == config reload =========================================================================
    def apply_config(self, cfg: StationConfig) -> list[str]:
        """Take what can change live from a new config; return what needs a restart."""
        restart = take_live_config(self.ctx, cfg)
        self._replan_soon()
        return restart

    async def reload_catalog(self) -> None:
        await self.book.reload_elements()
        self._replan_soon()

    def _replan_soon(self) -> None:
        self._replan_requested = True
        self.wake()
