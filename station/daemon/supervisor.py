"""The supervisor: modes, the schedule, and passes run one after another.

One loop, woken by the clock or by a command: re-plan when due, publish state and health,
and in ``auto`` mode start the next scheduled pass at AOS − lead time. Each pass runs in
its own task (:class:`~station.daemon.pass_runner.PassRunner`); the loop keeps beating the
watchdog heartbeat while it waits. A pass that ends with a fault puts the station in
``safe``; so does any unexpected exception, after which the daemon stays up, parked.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from station import __version__
from station.clock import from_epoch_s
from station.daemon.alarms import Severity
from station.daemon.context import ELEMENTS_ALARM, StationContext, note_element_load
from station.daemon.modes import Mode, Outcome, Phase
from station.daemon.pass_runner import MIN_USEFUL_WINDOW_S, NullPublisher, PassReport, PassRunner
from station.daemon.readiness import expected_pass_bytes, free_disk_bytes
from station.daemon.record import (
    Cause,
    SegmentState,
    pass_summary,
    segment_from_file,
    segment_summary,
)
from station.daemon.statefile import PassState, StateFile, StationState, stamp
from station.daemon.watchdog import Heartbeat
from station.events import passfile
from station.mqtt.commands import CommandRefused
from station.mqtt.messages import (
    ConfigSummary,
    DriverHealth,
    ElementAge,
    HealthMessage,
    MountTelemetry,
    PassDecision,
    PassRef,
    PassSummary,
    PhaseTransition,
    ScheduledPass,
    ScheduleMessage,
    StateMessage,
)
from station.orbit.catalog import LoadReport
from station.schedule import PlannedPass, Schedule, plan
from station.tracking import CommandRefused as GateRefused

log = logging.getLogger("station.supervisor")


class Supervisor:
    """Runs the station; also the :class:`station.mqtt.commands.StationControl`."""

    def __init__(self, ctx: StationContext, *, heartbeat: Heartbeat | None = None,
                 publisher: Any | None = None, beat_period_s: float = 1.0,
                 status_hook: Callable[[str], None] | None = None):
        self.ctx = ctx
        self.heartbeat = heartbeat
        self.publisher = publisher or NullPublisher()
        self.beat_period_s = beat_period_s
        self.status_hook = status_hook or (lambda text: None)
        self.statefile = StateFile(ctx.cfg.state_dir)
        self.mode = Mode(ctx.cfg.operations.start_mode)
        self.phase = Phase.IDLE
        self.mode_reason = ""
        self.schedule: Schedule | None = None
        self.include: set[str] = set()
        self.exclude: set[str] = set()
        self.done: dict[str, Outcome] = {}
        self.runner: PassRunner | None = None
        self.pass_task: asyncio.Task[PassReport] | None = None
        self.reports: list[PassReport] = []
        self.started_s = ctx.clock.now_s()
        self._wake = asyncio.Event()
        self._replan_requested = True
        self._next_plan_s = -math.inf
        self._next_health_s = -math.inf
        self._state = StationState(mode=self.mode, updated=ctx.clock.now())
        self._pending_resume: tuple[PassState, int] | None = None
        self._disk_full = False
        self._timeref_locked: bool | None = None
        self._satellite_names: dict[str, str] = {}
        #: Set each time a pass ends (tests and rehearsals wait on it).
        self.pass_finished = asyncio.Event()
        ctx.alarms.set_sink(getattr(self.publisher, "publish_alarm", None))

    # == the loop ============================================================================
    async def run(self) -> None:
        """Run until cancelled."""
        ctx = self.ctx
        await self._recover()
        await ctx.connect_all()
        self._publish_state()
        while True:
            self._beat()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the daemon stays up, parked and safe
                log.exception("supervisor: unexpected error")
                await self._enter_safe(f"internal error in the supervisor: {exc!r}")
            await self._wait(self._next_wake_s())

    async def _step(self) -> None:
        ctx = self.ctx
        now_s = ctx.clock.now_s()
        if self.pass_task is not None and self.pass_task.done():
            await self._pass_finished(self.pass_task)
        if self._replan_requested or now_s >= self._next_plan_s:
            await self._replan()
        if now_s >= self._next_health_s:
            if self.pass_task is None:
                await self._refresh_time_reference()
            self._publish_health()
            self._publish_state()  # keeps uptime and next pass current
            if self.pass_task is None:
                await ctx.reconnect_missing()
                await self._publish_idle_mount()
            self._next_health_s = now_s + ctx.cfg.mqtt.telemetry_idle_s
        if self.pass_task is None and self.mode == Mode.AUTO:
            entry = self._due_pass(now_s)
            if entry is not None:
                self._start_pass(entry)

    def _next_wake_s(self) -> float:
        """Clock time of the next thing the loop must do by itself."""
        ctx = self.ctx
        now_s = ctx.clock.now_s()
        wake = min(self._next_plan_s, self._next_health_s)
        if self.pass_task is None and self.mode == Mode.AUTO:
            upcoming = self._upcoming()
            if upcoming is not None:
                wake = min(wake, upcoming.aos_s - upcoming.lead_time_s)
        return max(wake, now_s)

    async def _wait(self, until_s: float) -> None:
        """Sleep on the clock until ``until_s`` or a wake-up, beating the heartbeat."""
        ctx = self.ctx
        while True:
            self._beat()
            now_s = ctx.clock.now_s()
            if self._wake.is_set() or now_s >= until_s:
                self._wake.clear()
                return
            chunk_s = min(until_s - now_s, ctx.clock_s_for_wall(self.beat_period_s))
            waits = [asyncio.ensure_future(ctx.clock.sleep(chunk_s)),
                     asyncio.ensure_future(self._wake.wait())]
            if self.pass_task is not None:
                waits.append(self.pass_task)  # type: ignore[arg-type]
            try:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits[:2]:
                    w.cancel()
                await asyncio.gather(*waits[:2], return_exceptions=True)
            if self.pass_task is not None and self.pass_task in done:
                return

    async def _beating(self, work: Any, limit_s: float = 120.0) -> Any:
        """Await ``work`` (e.g. planning in a thread) while the heartbeat goes on, for at
        most ``limit_s`` wall seconds: waiting on a thread is being alive, but a thread
        stuck for minutes must still let the watchdog restart the daemon."""
        future = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        give_up_s = loop.time() + limit_s
        while not future.done():
            if loop.time() < give_up_s:
                self._beat()
            # Wall-time pacing of the heartbeat, not domain time.
            await asyncio.wait({future}, timeout=self.beat_period_s)
        return future.result()

    def wake(self) -> None:
        self._wake.set()

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

    # == schedule ===========================================================================
    async def _replan(self) -> None:
        ctx = self.ctx
        self._replan_requested = False
        now_s = ctx.clock.now_s()
        # Start a little in the past so a pass already up (or just interrupted) is seen.
        start_s = now_s - 1800.0
        hours = ctx.cfg.operations.plan_hours + 0.5
        self.schedule = await self._beating(asyncio.to_thread(
            plan, ctx.cfg, ctx.catalog, start_s, hours, sorted(self.include), sorted(self.exclude)))
        self._next_plan_s = now_s + ctx.cfg.operations.replan_interval_s
        for w in self.schedule.warnings:
            log.warning("schedule: %s", w)
        for p in self.schedule.scheduled():
            if p.los_s > now_s and p.pass_id not in self.done:
                log.info("schedule: %s %s scheduled, AOS %s, max el %.1f°, QKD %.0f s (%s)",
                         p.satellite, p.pass_id, _hms(p.aos), p.max_el_deg,
                         p.qkd_duration_s, p.reason)
        self._check_elements(now_s)
        self.publisher_call("publish_schedule", self._schedule_message())
        self._publish_state()

    def _check_elements(self, now_s: float) -> None:
        for age in self.ctx.catalog.ages(now_s):
            key = f"elements.{age.norad_id}"
            if age.stale:
                self.ctx.alarms.raise_(key, Severity.WARNING, age.warning or
                                       f"elements of {age.name} are {age.age_days:.1f} days old")
            else:
                self.ctx.alarms.clear(key, f"elements of {age.name} are fresh")

    def _upcoming(self, after: PlannedPass | None = None) -> PlannedPass | None:
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

    def _due_pass(self, now_s: float) -> PlannedPass | None:
        p = self._upcoming()
        if p is None or now_s < p.aos_s - p.lead_time_s:
            return None
        if self._disk_full:
            self._skip(p, "disk nearly full: no new passes are accepted")
            return None
        return p

    # == passes =============================================================================
    def _start_pass(self, entry: PlannedPass, segment: int = 1,
                    earlier: list[SegmentState] | None = None) -> None:
        self.runner = PassRunner(self.ctx, entry, segment=segment, on_phase=self._on_phase,
                                 publisher=self.publisher, on_file_opened=self._on_file_opened,
                                 earlier_segments=earlier)
        self.pass_task = asyncio.create_task(self.runner.run(), name=f"pass-{entry.pass_id}")

    async def _pass_finished(self, task: asyncio.Task[PassReport]) -> None:
        runner = self.runner
        self.pass_task, self.runner = None, None
        try:
            report = task.result()
        except asyncio.CancelledError:
            return
        except Exception as exc:  # PassRunner.run never raises for pass faults; this is a bug
            log.exception("pass task failed")
            await self._enter_safe(f"pass task crashed: {exc!r}")
            return
        self.reports.append(report)
        self.done[report.pass_id] = report.outcome
        self.pass_finished.set()
        self._state = stamp(self._state, self.ctx.clock.now(), phase=Phase.IDLE, current_pass=None)
        self._save_state()
        if report.go_safe:
            await self._enter_safe(f"pass {report.pass_id} {report.outcome.value}: {report.reason}")
        self.publisher_call("publish_schedule", self._schedule_message())
        self._publish_state()
        del runner

    def _on_phase(self, phase: Phase, runner: PassRunner) -> None:
        previous, self.phase = self.phase, phase
        entry = runner.entry
        now = self.ctx.clock.now()
        if phase == Phase.IDLE:
            current = None
        else:
            prev = self._state.current_pass
            current = PassState(
                pass_id=entry.pass_id, norad_id=entry.norad_id, segment=runner.segment,
                aos=entry.aos, los=entry.los, qkd_start=entry.qkd_start or entry.aos,
                qkd_end=entry.qkd_end or entry.los,
                pass_file=prev.pass_file if prev and prev.pass_id == entry.pass_id else None,
                phase_times={**(prev.phase_times if prev and prev.pass_id == entry.pass_id else {}),
                             phase.value: now},
                earlier_segments=runner.earlier_segments)
        self._state = stamp(self._state, now, phase=phase, current_pass=current)
        self._save_state()
        log.info("pass %s: phase %s", entry.pass_id, phase.value)
        self.publisher_call("publish_transition", PhaseTransition(
            time=now, pass_id=entry.pass_id, satellite=entry.satellite, segment=runner.segment,
            from_phase=previous, to_phase=phase, mode=self.mode))
        self.status_hook(f"{self.mode.value}: {phase.value} {entry.satellite} {entry.pass_id}")
        self._publish_state()

    def _on_file_opened(self, path: str) -> None:
        cur = self._state.current_pass
        if cur is not None:
            self._state = stamp(self._state, self.ctx.clock.now(),
                                current_pass=cur.model_copy(update={"pass_file": path}))
            self._save_state()

    def _skip(self, p: PlannedPass, reason: str) -> None:
        """Skip a pass before anything moves: alarm, summary, report."""
        log.error("pass %s skipped: %s", p.pass_id, reason)
        self.ctx.alarms.raise_("pass.skipped", Severity.WARNING, f"{p.pass_id}: {reason}",
                               pass_id=p.pass_id)
        report = PassReport(pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id,
                            outcome=Outcome.SKIPPED, reason=reason, planned_aos=p.aos,
                            planned_los=p.los, qkd_start=p.qkd_start, qkd_end=p.qkd_end)
        self.publisher_call("publish_summary", PassSummary(
            pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id,
            outcome=Outcome.SKIPPED, reason=reason, planned_aos=p.aos, planned_los=p.los,
            max_el_deg=p.max_el_deg))
        self.reports.append(report)
        self.done[p.pass_id] = Outcome.SKIPPED
        self.pass_finished.set()
        self.publisher_call("publish_schedule", self._schedule_message())

    async def abort_current(self, reason: str, *, go_safe: bool = False) -> PassReport | None:
        """Abort the pass in progress and wait for it to finalize and park."""
        if self.runner is None or self.pass_task is None:
            return None
        task = self.pass_task
        self.runner.request_abort(reason, go_safe=go_safe)
        await asyncio.wait({task})
        await self._pass_finished(task)
        return self.reports[-1] if self.reports else None

    async def shutdown(self) -> None:
        """Clean stop: end the pass (file closed, mount parked), park, save the state."""
        if self.pass_task is not None:
            await self.abort_current("daemon shutting down")
        else:
            await self._park_idle("daemon shutting down")
        self._state = stamp(self._state, self.ctx.clock.now(), clean_shutdown=True)
        self._save_state()

    # == safety ==============================================================================
    async def _enter_safe(self, reason: str) -> None:
        self.mode, self.mode_reason = Mode.SAFE, reason
        self.ctx.alarms.raise_("station.safe", Severity.CRITICAL, f"safe mode: {reason}")
        if self.pass_task is not None and not self.pass_task.done():
            self.runner.request_abort(reason, go_safe=True)  # type: ignore[union-attr]
        else:
            await self._park_idle(reason)
        self._state = stamp(self._state, self.ctx.clock.now(), mode=self.mode)
        self._save_state()
        self.status_hook(f"safe: {reason}")
        self._publish_state()

    async def _park_idle(self, why: str) -> bool:
        ctx = self.ctx
        if not ctx.links["mount"].connected:
            return False
        try:
            if await ctx.tracker.park():
                return await ctx.tracker.wait_parked(ctx.cfg.operations.faults.park_timeout_s)
        except Exception as exc:
            ctx.mark_lost("mount", exc)
            log.error("could not park (%s): %s", why, exc)
        return False

    # == state and recovery =================================================================
    def _save_state(self) -> None:
        try:
            self.statefile.save(self._state)
        except OSError as exc:
            self.ctx.alarms.raise_("state.file", Severity.WARNING,
                                   f"cannot write the state file {self.statefile.path}: {exc}")

    async def _recover(self) -> None:
        """Look at the state file left by the previous run and deal with what it says."""
        ctx = self.ctx
        saved = self.statefile.load()
        if saved is None:
            self._save_state()
            return
        if saved.mode == Mode.SAFE:
            self.mode, self.mode_reason = Mode.SAFE, "safe mode kept from before the restart"
        elif saved.mode != Mode.AUTO:
            self.mode = saved.mode
        cur = saved.current_pass
        if saved.clean_shutdown or cur is None or saved.phase == Phase.IDLE:
            self._state = stamp(saved, ctx.clock.now(), clean_shutdown=False, mode=self.mode,
                                phase=Phase.IDLE, current_pass=None)
            self._save_state()
            return
        side = passfile.read_sidecar(Path(cur.pass_file)) if cur.pass_file else None
        if side is not None and side.get("state") == "closed":
            # The pass did end (its file is closed, its summary went out) and only the
            # state file missed the news, e.g. on a full disk: not an interruption.
            outcome = (side.get("totals") or {}).get("outcome") or Outcome.COMPLETED.value
            log.warning("state file says %s of pass %s, but its file %s was closed (%s): "
                        "the pass had ended", saved.phase.value, cur.pass_id, cur.pass_file,
                        outcome)
            try:
                self.done[cur.pass_id] = Outcome(outcome)
            except ValueError:
                self.done[cur.pass_id] = Outcome.ABORTED
            self._state = stamp(saved, ctx.clock.now(), clean_shutdown=False, mode=self.mode,
                                phase=Phase.IDLE, current_pass=None)
            self._save_state()
            return
        # The daemon died in the middle of a pass.
        detail = f"the daemon stopped during {saved.phase.value} of pass {cur.pass_id}"
        seg = await self._interrupted_segment(cur, saved.updated, detail)
        detail = seg.reason
        ctx.alarms.raise_("pass.interrupted", Severity.WARNING, detail, pass_id=cur.pass_id)
        now_s = ctx.clock.now_s()
        if now_s < saved.updated.timestamp():
            # The clock is before the state file's last entry: a simulated night started
            # over. The pass is ahead again, not interrupted in progress.
            log.warning("%s; the clock (%s) is before that, so the pass will be taken "
                        "afresh when it comes", detail, _hms(ctx.clock.now()))
        elif (ctx.cfg.operations.resume_after_crash and self.mode == Mode.AUTO
                and cur.qkd_end.timestamp() - MIN_USEFUL_WINDOW_S > now_s):
            # The runner checks again once it knows how long joining the track takes.
            self._pending_resume = (cur, cur.segment + 1)
            log.warning("%s; resuming in segment %d while the QKD window is open",
                        detail, cur.segment + 1)
        else:
            self.done[cur.pass_id] = Outcome.INTERRUPTED
            log.warning("%s; the QKD window is over, not resuming", detail)
        self._publish_recovered(cur, [*cur.earlier_segments, seg],
                                resuming=self._pending_resume is not None)
        self._state = stamp(saved, ctx.clock.now(), clean_shutdown=False, mode=self.mode,
                            phase=Phase.IDLE, current_pass=None)
        self._save_state()
        if self._pending_resume is not None:
            await self._replan()
            cur, segment = self._pending_resume
            self._pending_resume = None
            entry = self.schedule.get(cur.pass_id) if self.schedule else None
            if entry is None:
                log.error("cannot resume pass %s: not in the new schedule", cur.pass_id)
                self.done[cur.pass_id] = Outcome.INTERRUPTED
            else:
                await ctx.connect_all()
                self._start_pass(entry, segment=segment, earlier=[*cur.earlier_segments, seg])

    async def _interrupted_segment(self, cur: PassState, last_saved: datetime,
                                   detail: str) -> SegmentState:
        """Close the interrupted segment's file and say what it holds, from the file."""
        ctx = self.ctx
        started = cur.phase_times.get(Phase.PREPARE.value)
        if not cur.pass_file:
            return SegmentState(
                segment=cur.segment, stream_pass_id=_stem(cur.pass_id, cur.segment),
                outcome=Outcome.INTERRUPTED, reason=f"{detail}; no pass file was open yet",
                started_at=started, ended_at=last_saved)
        info = await asyncio.to_thread(ctx.pipeline.recover_interrupted, cur.pass_file)
        seg, satellite = await asyncio.to_thread(
            segment_from_file, cur.pass_file, segment=cur.segment, outcome=Outcome.INTERRUPTED,
            reason=f"{detail}; pass file {cur.pass_file}: {info}", started_at=started,
            fallback_end=last_saved, site=ctx.cfg.site)
        self._satellite_names[cur.pass_id] = satellite
        # The window from the last batch on disk to now went unrecorded: the daemon was down.
        end_s = seg.ended_at.timestamp() if seg.ended_at else last_saved.timestamp()
        seg.causes.append(Cause(start_s=end_s, end_s=max(end_s, ctx.clock.now_s()), cause=(
            f"the daemon stopped during segment {cur.segment} (last batch on disk "
            f"{_hms(seg.ended_at)}) and was restarted at {_hms(ctx.clock.now())}")))
        return seg

    def _publish_recovered(self, cur: PassState, segments: list[SegmentState], *,
                           resuming: bool) -> None:
        """The interrupted segment's summary (if the pass has or will have several) and the
        whole pass's, as known now (replaced when a resumed segment ends)."""
        name = self._satellite_names.get(cur.pass_id) or self._satellite_name(cur.norad_id)
        window = (cur.qkd_start.timestamp(), cur.qkd_end.timestamp())
        if resuming or len(segments) > 1:
            self.publisher_call("publish_summary", segment_summary(
                cur.pass_id, name, cur.norad_id, cur.aos, cur.los, window, segments[-1]))
        self.publisher_call("publish_summary", pass_summary(
            cur.pass_id, name, cur.norad_id, cur.aos, cur.los, window, segments))

    def _satellite_name(self, norad_id: int) -> str:
        """The name passes carry: the config's, else the element set's, else the number."""
        for sat in self.ctx.cfg.orbit.satellites:
            if sat.norad_id == norad_id and sat.name:
                return sat.name
        for age in self.ctx.catalog.ages(self.ctx.clock.now_s()):
            if age.norad_id == norad_id:
                return age.name
        return str(norad_id)

    # == publishing ===========================================================================
    def publisher_call(self, name: str, payload: Any) -> None:
        method = getattr(self.publisher, name, None)
        if method is not None:
            method(payload)

    def _pass_ref(self, p: PlannedPass | None) -> PassRef | None:
        if p is None:
            return None
        return PassRef(pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id,
                       aos=p.aos, tca=p.tca, los=p.los, max_el_deg=p.max_el_deg)

    def state_message(self) -> StateMessage:
        ctx = self.ctx
        cfg = ctx.cfg
        current = self.runner.entry if self.runner is not None else None
        nxt = self._upcoming(after=current)
        now = ctx.clock.now()
        return StateMessage(
            time=now, station_id=cfg.station_id, daemon_version=__version__,
            started_at=from_epoch_s(self.started_s), uptime_s=max(0.0, now.timestamp() - self.started_s),
            mode=self.mode, phase=self.phase if self.runner is not None else Phase.IDLE,
            current_pass=self._pass_ref(current), next_pass=self._pass_ref(nxt),
            config=ConfigSummary(
                station_name=cfg.site.name, latitude_deg=cfg.site.latitude_deg,
                longitude_deg=cfg.site.longitude_deg, height_m=cfg.site.height_m,
                clock_source=ctx.clock.source,
                clock_speed=None if ctx.clock.source == "real" or math.isinf(ctx.clock.speed)
                else ctx.clock.speed,
                mount_backend=cfg.mount.backend, timetagger_backend=cfg.timetagger.backend),
            message=self.mode_reason)

    def _publish_state(self) -> None:
        self.publisher_call("publish_state", self.state_message())

    def _schedule_message(self) -> ScheduleMessage:
        now = self.ctx.clock.now()
        passes = []
        for p in (self.schedule.passes if self.schedule else []):
            if p.pass_id in self.done:
                decision, reason = PassDecision.DONE, f"{self.done[p.pass_id].value}"
            elif p.forced == "exclude" or p.pass_id in self.exclude:
                decision, reason = PassDecision.EXCLUDED, p.reason
            elif p.status == "scheduled":
                decision = PassDecision.INCLUDED if p.forced == "include" else PassDecision.PLANNED
                reason = p.reason
            else:
                decision, reason = PassDecision.SKIPPED, p.reason
            passes.append(ScheduledPass(
                pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id, aos=p.aos,
                tca=p.tca, los=p.los, max_el_deg=p.max_el_deg, decision=decision,
                reason=reason, priority=p.priority))
        return ScheduleMessage(time=now, horizon_end=self.schedule.end if self.schedule else None,
                               passes=passes)

    def health_message(self) -> HealthMessage:
        ctx = self.ctx
        now_s = ctx.clock.now_s()
        drivers = [DriverHealth(name=k.name, connected=k.connected, detail=k.detail)
                   for k in ctx.links.values()]
        elements = [ElementAge(norad_id=a.norad_id, satellite=a.name, epoch=a.epoch,
                               age_days=a.age_days) for a in ctx.catalog.ages(now_s)]
        try:
            free = free_disk_bytes(ctx)
            disk_error = None
        except OSError as exc:
            free, disk_error = None, exc
        upcoming = self._upcoming()
        expected = expected_pass_bytes(ctx, upcoming.qkd_duration_s) if upcoming else None
        reserve = int(ctx.cfg.operations.faults.min_free_disk_mb * 1e6)
        if free is None:
            # An unknown value never clears an alarm: the disk.full state (and the refusal
            # of new passes) stays as it was until a measurement says otherwise.
            log.warning("cannot measure free disk in %s: %s", ctx.cfg.state_dir, disk_error)
        elif free < reserve:
            self._disk_full = True
            ctx.alarms.raise_("disk.full", Severity.CRITICAL,
                              f"only {free / 1e6:.0f} MB free in {ctx.cfg.state_dir} "
                              f"(reserve {reserve / 1e6:.0f} MB): no new passes accepted")
        else:
            self._disk_full = False
            ctx.alarms.clear("disk.full", "enough free disk again")
            if self.pass_task is None:
                ctx.alarms.clear("disk.write", "enough free disk again")
        ok = (all(k.connected for k in ctx.links.values()) and not self._disk_full
              and free is not None and self._timeref_locked is not False)
        return HealthMessage(
            time=ctx.clock.now(), drivers=drivers, elements=elements, disk_free_bytes=free,
            expected_pass_bytes=expected, time_reference_locked=self._timeref_locked,
            stream_consumer_connected=ctx.pipeline.consumer_connected, ok=ok)

    async def _refresh_time_reference(self) -> None:
        """Ask the time reference for its lock state (between passes; during a pass the
        readiness check's answer stands)."""
        ctx = self.ctx
        if ctx.timeref is None or not ctx.links["time_reference"].connected:
            self._timeref_locked = None
            return
        st = await ctx.timeref.status()
        self._timeref_locked = bool(st.locked)
        if st.locked:
            ctx.alarms.clear("time_reference.lock", "time reference locked")
        else:
            ctx.alarms.raise_("time_reference.lock", Severity.WARNING,
                              f"time reference not locked: {st.state.value if st.state else '?'}"
                              f"{f' ({st.error})' if st.error else ''}")

    def _publish_health(self) -> None:
        self.publisher_call("publish_health", self.health_message())

    async def _publish_idle_mount(self) -> None:
        ctx = self.ctx
        if not ctx.links["mount"].connected:
            return
        try:
            pos = await ctx.mount.position()
            st = await ctx.mount.status()
        except Exception as exc:
            ctx.mark_lost("mount", exc)
            return
        self.publisher_call("publish_mount", MountTelemetry(
            time=from_epoch_s(pos.time_s), actual_az_deg=pos.az_deg, actual_el_deg=pos.el_deg,
            moving=st.moving, parked=st.parked, tracking=False, connected=st.connected))

    # == StationControl (operator commands) ===================================================
    async def park(self) -> dict[str, Any]:
        if self.pass_task is not None:
            report = await self.abort_current("operator park")
            return {"parked": bool(report and report.mount_parked), "pass_aborted": True}
        self._require_mount()
        return {"parked": await self._park_idle("operator park"), "pass_aborted": False}

    async def stop(self) -> dict[str, Any]:
        aborted = False
        if self.pass_task is not None:
            self.runner.request_abort("operator stop")  # type: ignore[union-attr]
            aborted = True
        self._require_mount()
        await self.ctx.mount.stop()
        return {"stopped": True, "pass_aborted": aborted}

    async def goto(self, az_deg: float, el_deg: float) -> dict[str, Any]:
        if self.mode in (Mode.AUTO, Mode.SAFE):
            raise CommandRefused(
                f"goto refused in {self.mode.value} mode: set_mode manual (or maintenance) first")
        if self.pass_task is not None:
            raise CommandRefused("goto refused: a pass is in progress; abort_pass first")
        self._require_mount()
        try:
            await self.ctx.mount.slew_to(az_deg, el_deg)
        except GateRefused as exc:
            raise CommandRefused(f"goto refused by the safety gate: {exc}") from exc
        return {"az_deg": az_deg, "el_deg": el_deg, "accepted": True}

    async def set_mode(self, mode: Mode) -> dict[str, Any]:
        previous = self.mode
        mode = Mode(mode)
        if mode == Mode.SAFE:
            await self._enter_safe("operator request")
        else:
            if mode != Mode.AUTO and self.pass_task is not None:
                await self.abort_current(f"mode changed to {mode.value}")
            self.mode, self.mode_reason = mode, ""
            if previous == Mode.SAFE:
                self.ctx.alarms.clear("station.safe", f"cleared by operator ({mode.value})")
            self._state = stamp(self._state, self.ctx.clock.now(), mode=mode)
            self._save_state()
            self._publish_state()
            if mode == Mode.AUTO and previous != Mode.AUTO and self.pass_task is None \
                    and self.ctx.links["mount"].connected:
                # Handing the station back to the schedule: it waits for the next pass
                # parked, not wherever an operator left the telescope.
                await self._park_idle("back to auto mode")
        log.info("mode %s → %s", previous.value, self.mode.value)
        self.wake()
        return {"mode": self.mode.value, "previous": previous.value}

    async def skip_pass(self, pass_id: str) -> dict[str, Any]:
        p = self._known(pass_id)
        if self.runner is not None and self.runner.entry.pass_id == p.pass_id:
            raise CommandRefused(f"pass {p.pass_id} is in progress: use abort_pass")
        self.exclude.add(p.pass_id)
        self.include.discard(p.pass_id)
        await self._replan()
        self.wake()
        return {"pass_id": p.pass_id, "excluded": True}

    async def include_pass(self, pass_id: str) -> dict[str, Any]:
        p = self._known(pass_id)
        self.include.add(p.pass_id)
        self.exclude.discard(p.pass_id)
        await self._replan()
        self.wake()
        now = self.schedule.get(p.pass_id) if self.schedule else None
        return {"pass_id": p.pass_id, "status": now.status if now else "unknown",
                "reason": now.reason if now else ""}

    async def abort_pass(self, reason: str) -> dict[str, Any]:
        if self.pass_task is None:
            raise CommandRefused("no pass is in progress")
        report = await self.abort_current(f"operator: {reason}")
        return {"pass_id": report.pass_id if report else None,
                "outcome": report.outcome.value if report else None,
                "events_recorded": report.events_recorded if report else 0}

    async def reload_elements(self) -> dict[str, Any]:
        report = await self._reload_catalog_keeping_the_last_good()
        await self._replan()
        self.wake()
        return {"satellites": len(self.ctx.catalog), "problems": list(report.problems)}

    async def reschedule(self) -> dict[str, Any]:
        await self._replan()
        self.wake()
        sched = self.schedule
        return {"scheduled": [p.pass_id for p in sched.scheduled()] if sched else [],
                "rejected": len(sched.rejected()) if sched else 0}

    def _known(self, pass_id: str) -> PlannedPass:
        p = self.schedule.get(pass_id) if self.schedule else None
        if p is None:
            raise CommandRefused(f"unknown pass id {pass_id!r}: not in the current schedule")
        return p

    def _require_mount(self) -> None:
        if not self.ctx.links["mount"].connected:
            raise CommandRefused(f"the mount is not connected: {self.ctx.links['mount'].detail}")

    # == config reload =========================================================================
    def apply_config(self, cfg: Any) -> list[str]:
        """Take what can change live from a new config; return what needs a restart."""
        old = self.ctx.cfg
        restart = [name for name in ("station_id", "state_dir", "site", "clock", "mqtt", "mount",
                                     "safety", "timetagger", "events", "instruments")
                   if getattr(old, name) != getattr(cfg, name)]
        live = cfg.model_copy(update={name: getattr(old, name) for name in restart})
        self.ctx.cfg = live
        self.ctx.catalog.sources = list(live.orbit.element_sources)
        self.ctx.catalog.max_age_days = live.orbit.max_element_age_days
        logging.getLogger().setLevel(live.log_level)
        self._replan_requested = True
        self.wake()
        return restart

    async def reload_catalog(self) -> None:
        await self._reload_catalog_keeping_the_last_good()
        self._replan_requested = True
        self.wake()

    async def _reload_catalog_keeping_the_last_good(self) -> LoadReport:
        """Re-read the element files; whatever they hold, the pass in progress goes on.

        Broken files keep their satellites' previous elements (Catalog.reload) and raise
        the elements alarm. Should the reload itself fail, the catalog is untouched (it
        swaps in one assignment at the end) and that is an alarm too, never an exception
        into the daemon's task group.
        """
        try:
            report = await self._beating(asyncio.to_thread(self.ctx.catalog.reload))
        except Exception as exc:
            log.exception("element reload failed; keeping the current catalog")
            self.ctx.alarms.raise_(ELEMENTS_ALARM, Severity.WARNING,
                                   f"element reload failed, the previous catalog is kept: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}")
            return LoadReport(loaded=len(self.ctx.catalog), problems=[f"(reload): {type(exc).__name__}"])
        note_element_load(self.ctx.alarms, report)
        return report


def _stem(pass_id: str, segment: int) -> str:
    return pass_id if segment == 1 else f"{pass_id}-s{segment}"


def _hms(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


