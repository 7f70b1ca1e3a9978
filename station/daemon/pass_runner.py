"""One pass, start to finish: prepare → track → finalize → park.

``prepare`` (at AOS − lead time) runs the readiness checks, plans the track (in a worker
thread), slews to the rise point, configures the tagger and opens the pass file. ``track``
follows the satellite from AOS to LOS while the tagger records across the QKD window.
``finalize`` stops acquisition, closes the file and ends the stream; ``park`` parks.
``finalize`` and ``park`` run whatever happened before them: a fault, an operator abort or
a shutdown still leaves a closed file and a parked mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from drivers.errors import ConnectionLost, DriverError
from drivers.mount.base import MountError
from drivers.timetagger.base import Batch
from station import __version__
from station.daemon.alarms import Severity
from station.daemon.context import StationContext, with_grace
from station.daemon.lateness import LatenessMonitor, LatenessStats, tolerated_lateness_s
from station.daemon.modes import Outcome, Phase
from station.daemon.publisher import NullPublisher, Publisher
from station.daemon.readiness import CheckResult, blocking_failures, run_checks
from station.daemon.record import (
    Cause,
    SegmentState,
    Span,
    clip,
    degraded,
    merge,
    pass_summary,
    segment_summary,
    subtract,
    total_s,
)
from station.events import PassHeader
from station.mqtt.messages import (
    MountTelemetry,
    PassProgress,
    TimeTaggerTelemetry,
    TrackingErrorStats,
)
from station.orbit.geometry import SatelliteLinkGeometry
from station.orbit.passes import PassInfo
from station.tracking import TelemetrySubscription, TrackingSample, TrackingStats, plan_for_pass
from station.tracking.controller import PrepositionTimeout, TrackingAborted

log = logging.getLogger("station.pass")

ARCSEC_TO_URAD = math.pi / (180 * 3600) * 1e6
#: How often (clock seconds) a pass in progress writes a line to the log.
PROGRESS_LOG_S = 30.0
#: A pass (segment) is started only if at least this much QKD window is left once the
#: mount can be on the track.
MIN_USEFUL_WINDOW_S = 10.0
#: Head start over the slew estimate when joining a track already under way: the
#: mount's settling and the tracker's capture.
JOIN_SETTLE_S = 3.0


class PassAborted(Exception):
    """The pass must end now; ``go_safe`` asks the supervisor for the safe mode."""

    def __init__(self, reason: str, *, go_safe: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.go_safe = go_safe


class PassReport(BaseModel):
    """What happened in one pass segment: the rehearsal report and the summary's source."""

    pass_id: str
    satellite: str
    norad_id: int
    segment: int = 1
    outcome: Outcome = Outcome.COMPLETED
    reason: str = ""
    go_safe: bool = False
    planned_aos: AwareDatetime
    planned_los: AwareDatetime
    qkd_start: AwareDatetime | None = None
    qkd_end: AwareDatetime | None = None
    phase_times: dict[str, AwareDatetime] = Field(default_factory=dict)
    readiness: list[CheckResult] = Field(default_factory=list)
    tracking: TrackingStats | None = None
    counts_by_channel: dict[str, int] = Field(default_factory=dict)
    events_recorded: int = 0
    events_streamed: int = 0
    events_lost: int = 0
    overflow_batches: int = 0
    pass_file: str | None = None
    mount_parked: bool = False
    qber_measured: float | None = Field(
        None, description="Simulator only: QBER of signal states, sifted against what was sent.")
    qber_all_classes: float | None = Field(
        None, description="Simulator only: QBER over signal, decoy and vacuum states.")
    sifted_bits: int | None = Field(None, description="Simulator only: sifted key length.")
    alarms_raised: int = 0
    window_s: float = Field(0.0, description="This segment's part of the QKD window (s).")
    window_lost_s: float = Field(0.0, description="Of it, seconds with no usable recording.")
    window_lost_fraction: float = 0.0
    join_delay_s: float | None = Field(
        None, description="A segment joining a track under way: seconds from the start of "
        "the segment until the mount was on the track.")
    events_after_window: int = Field(
        0, description="Events the tagger delivered after the end of the QKD window: not "
        "recorded (the window is over), counted here.")
    segment_state: SegmentState | None = None
    clock_lateness: LatenessStats | None = Field(
        None, description="Rehearsals on a scaled clock: how late the event loop ran.")


def channel_names(ctx: StationContext) -> dict[int, str]:
    """Tagger input -> signal name ('H', 'V', 'D', 'A', 'SYNC', 'PPS') from the channel map."""
    return {int(ch): role.upper()
            for role, ch in ctx.cfg.timetagger.channel_map.model_dump().items()}


def channel_name(names: dict[int, str], channel: int) -> str:
    return names.get(int(channel), f"ch{channel}")


class PassRunner:
    """Runs one pass segment. ``on_phase`` is called on every phase change."""

    def __init__(self, ctx: StationContext, entry: PassInfo, *, segment: int = 1,
                 on_phase: Callable[[Phase, PassRunner], None] | None = None,
                 publisher: Publisher | None = None,
                 on_file_opened: Callable[[str], None] | None = None,
                 earlier_segments: list[SegmentState] | None = None):
        self.ctx = ctx
        self.entry = entry
        self.segment = segment
        #: Segments of this pass recorded before (a resume): the whole-pass summary adds
        #: them up with this one.
        self.earlier_segments = list(earlier_segments or [])
        #: Clock spans recorded (batches in the file) with their events, and spans known
        #: to be useless.
        self._covered: list[Span] = []
        self._covered_events: list[int] = []
        self._causes: list[Cause] = []
        self._epoch_s: float | None = None
        self.phase = Phase.IDLE
        self._on_phase = on_phase or (lambda phase, runner: None)
        self._on_file_opened = on_file_opened or (lambda path: None)
        self.publisher: Publisher = publisher or NullPublisher()
        self.report = PassReport(
            pass_id=entry.pass_id, satellite=entry.satellite, norad_id=entry.norad_id,
            segment=segment, planned_aos=entry.aos, planned_los=entry.los,
            qkd_start=entry.qkd_start, qkd_end=entry.qkd_end)
        self.recorder: Any | None = None
        self._abort = asyncio.Event()
        self._abort_reason = ""
        self._abort_safe = False
        self._alarm_mark = len(ctx.alarms.history)
        self._acquiring = False
        #: Set at LOS (or when the pass ends early): the progress loop stops on it.
        self._los = asyncio.Event()
        self.started_s = ctx.clock.now_s()
        self.channel_names = channel_names(ctx)

    # -- control ---------------------------------------------------------------------------
    def request_abort(self, reason: str, *, go_safe: bool = False) -> None:
        """End the pass as soon as possible (operator abort, fault, shutdown)."""
        if not self._abort.is_set():
            log.warning("pass %s: abort requested: %s", self.entry.pass_id, reason)
            self._abort_reason, self._abort_safe = reason, go_safe
            self._abort.set()

    # -- the state machine ---------------------------------------------------------------------
    async def run(self) -> PassReport:
        """Run the pass; never raises for pass-level faults (they end up in the report)."""
        entry = self.entry
        log.info("pass %s (%s, segment %d): AOS %s, max el %.1f°, QKD window %s → %s",
                 entry.pass_id, entry.satellite, self.segment, _hms(entry.aos), entry.max_el_deg,
                 _hms(entry.qkd_start), _hms(entry.qkd_end))
        try:
            try:
                proceed = await self._abortable(self._prepare())
                if proceed:
                    await self._abortable(self._track())
            except PassAborted as exc:
                self._set_outcome(Outcome.ABORTED, exc.reason, exc.go_safe)
            except asyncio.CancelledError:
                self._set_outcome(Outcome.ABORTED, "daemon shutting down")
                # Finalize and park below still run: shield them from the cancellation.
                await asyncio.shield(self._wind_down())
                raise
            except Exception as exc:
                log.exception("pass %s: unexpected error", entry.pass_id)
                self._set_outcome(Outcome.ABORTED, f"internal error: {exc!r}", go_safe=True)
            await self._wind_down()
        finally:
            self.report.alarms_raised = self.ctx.alarms.raised_since(self._alarm_mark)
        return self.report

    async def _wind_down(self) -> None:
        if self.report.outcome == Outcome.SKIPPED and self.recorder is None:
            self._summary()
            self._set_phase(Phase.IDLE)
            return
        await self._finalize()
        await self._park()
        self._set_phase(Phase.IDLE)

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.report.phase_times[phase.value if phase != Phase.IDLE or not self.report.phase_times
                                else "end"] = self.ctx.clock.now()
        self._on_phase(phase, self)

    def _set_outcome(self, outcome: Outcome, reason: str, go_safe: bool = False) -> None:
        # The first fault explains the pass; later ones are consequences.
        if self.report.outcome == Outcome.COMPLETED:
            self.report.outcome, self.report.reason = outcome, reason
        self.report.go_safe = self.report.go_safe or go_safe

    async def _abortable(self, coro: Any) -> Any:
        """Run ``coro`` until it ends or an abort is requested (then raise PassAborted)."""
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(self._abort.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            waiter.cancel()
            await asyncio.gather(task, waiter, return_exceptions=True)
            raise
        if task in done:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise PassAborted(self._abort_reason, go_safe=self._abort_safe)

    # -- prepare ---------------------------------------------------------------------------
    async def _prepare(self) -> bool:
        ctx, entry = self.ctx, self.entry
        # The segment is settled before the first transition names it.
        self._settle_segment()
        self._set_phase(Phase.PREPARE)
        results = await run_checks(ctx, entry)
        self.report.readiness = results
        for r in results:
            key = f"readiness.{r.name}"
            if r.ok:
                ctx.alarms.clear(key, f"{r.name}: {r.detail}")
            else:
                sev = Severity.CRITICAL if r.policy == "blocking" else Severity.WARNING
                ctx.alarms.raise_(key, sev, f"{r.name}: {r.detail}", pass_id=entry.pass_id)
        failed = blocking_failures(results)
        if failed:
            reason = "readiness: " + "; ".join(f"{r.name}: {r.detail}" for r in failed)
            self._set_outcome(Outcome.SKIPPED, reason)
            log.error("pass %s skipped: %s", entry.pass_id, reason)
            return False

        now_s = ctx.clock.now_s()
        satellite = entry.earth_satellite()
        plan = await plan_for_pass(ctx.mount, ctx.cfg, satellite, aos=entry.aos, los=entry.los,
                                   pass_id=entry.pass_id)
        full_plan = plan
        # A track under way (a resumed segment): join it where the satellite will be as
        # soon as the mount can be there, not after a full slew plus margin. A slew that
        # takes longer than estimated (a detour around the Sun or the horizon mask) joins
        # again further on, twice at most.
        joining = now_s > plan.aos_s
        for attempt in range(3):
            if joining:
                joined = await self._join(full_plan)
                if joined is None:
                    return False
                plan = joined
            self.plan = plan
            try:
                await ctx.tracker.preposition(plan, deadline_s=plan.aos_s)
                break
            except PrepositionTimeout as exc:
                if not joining or attempt == 2:
                    raise PassAborted(f"not at the rise point in time: {exc}") from exc
                log.warning("pass %s: not on the track in time (%s); joining further on",
                            entry.pass_id, exc)
            except MountError as exc:
                await self._mount_fault(exc)  # raises unless the link came back
                await ctx.tracker.preposition(plan, deadline_s=plan.aos_s)
                break

        await ctx.tagger.configure(ctx.cfg.timetagger.channel_configs())
        if ctx.hooks.follows_link:  # a simulated downlink follows the real pass geometry
            ctx.hooks.set_link(SatelliteLinkGeometry(satellite, ctx.cfg.site))
        self._settle_segment()  # a file may have appeared since (never overwritten)
        header = self._header(satellite)
        self.recorder = ctx.pipeline.open_pass(header, on_loss=self._disk_loss)
        self.report.pass_file = str(self.recorder.path)
        self._on_file_opened(str(self.recorder.path))
        return True

    async def _join(self, plan: Any) -> Any | None:
        """The part of ``plan`` the mount can join from where it is now, or None (outcome
        ``skipped``) when less than :data:`MIN_USEFUL_WINDOW_S` of QKD window would be left."""
        ctx, entry = self.ctx, self.entry
        pos = await ctx.mount.position()
        now_s = ctx.clock.now_s()
        join_s = self._join_time(plan, pos, now_s)
        qkd_end_s = (entry.qkd_end or entry.los).timestamp()
        qkd_start_s = (entry.qkd_start or entry.aos).timestamp()
        left_s = qkd_end_s - max(join_s, qkd_start_s) if join_s is not None else 0.0
        if join_s is None or left_s < MIN_USEFUL_WINDOW_S:
            reason = (f"too little QKD window left: the mount could be on the track at "
                      f"{_hms(_dt(join_s)) if join_s is not None else 'no time before LOS'}"
                      f", leaving {max(0.0, left_s):.1f} s (at least "
                      f"{MIN_USEFUL_WINDOW_S:g} s needed)")
            self._set_outcome(Outcome.SKIPPED, reason)
            log.warning("pass %s segment %d skipped: %s", entry.pass_id, self.segment, reason)
            return None
        started_s = self.started_s
        self.report.join_delay_s = round(join_s - started_s, 3)
        self._causes = [c for c in self._causes if not c.cause.startswith("joining")]
        self._causes.append(Cause(start_s=started_s, end_s=join_s, cause=(
            f"joining the track in segment {self.segment} ({join_s - now_s:.1f} s slew "
            "and settle)")))
        log.info("pass %s: joining the track at %s, %.1f s after the segment started "
                 "(%.1f s of QKD window left)", entry.pass_id, _hms(_dt(join_s)),
                 join_s - started_s, left_s)
        return plan.window(join_s, plan.los_s)

    def _join_time(self, plan: Any, pos: Any, now_s: float) -> float | None:
        """The earliest plan sample the mount can reach from ``pos`` in time (slew
        estimate plus :data:`JOIN_SETTLE_S`), or None if none before LOS."""
        times = plan.time_s
        for i in range(int(times.searchsorted(now_s)), len(times) - 1):
            t = float(times[i])
            slew_s = self.ctx.tracker.estimate_slew_s(plan.window(t, plan.los_s), pos)
            if now_s + slew_s + JOIN_SETTLE_S <= t:
                return t
        return None

    def _settle_segment(self) -> None:
        """The first segment number from ``self.segment`` up whose pass file does not
        exist yet: a pass recorded before (a rerun of a simulated night, or a crash that
        left its file) is never overwritten, it gets a new segment."""
        entry = self.entry
        probe = PassHeader(pass_id=entry.pass_id, segment=self.segment)
        while self.ctx.pipeline.path_for(probe).exists():
            probe = probe.model_copy(update={"segment": probe.segment + 1})
        if probe.segment != self.segment:
            log.warning("pass %s: %s exists; recording as segment %d", entry.pass_id,
                        self.ctx.pipeline.path_for(PassHeader(pass_id=entry.pass_id,
                                                              segment=self.segment)),
                        probe.segment)
            self.segment = self.report.segment = probe.segment

    def _disk_loss(self, message: str) -> None:
        """The pipeline says the disk refused a write: alarm now, not at the end."""
        self.ctx.alarms.raise_("disk.write", Severity.CRITICAL, message,
                               pass_id=self.entry.pass_id)

    def _header(self, satellite: Any) -> PassHeader:
        ctx, entry = self.ctx, self.entry
        site = ctx.cfg.site
        return PassHeader(
            station_id=ctx.cfg.station_id, station_name=site.name,
            site_latitude_deg=site.latitude_deg, site_longitude_deg=site.longitude_deg,
            site_height_m=site.height_m, satellite=entry.satellite, norad_id=entry.norad_id,
            elements=entry.elements_text, pass_id=entry.pass_id, segment=self.segment,
            aos=entry.aos, los=entry.los, qkd_start=entry.qkd_start, qkd_end=entry.qkd_end,
            channel_map={str(c): name for c, name in self.channel_names.items()},
            tagger_model=ctx.tagger.model, tagger_resolution_ps=ctx.tagger.resolution_ps,
            clock_source=ctx.clock.source, software_version=__version__,
        )

    # -- track -------------------------------------------------------------------------------
    async def _track(self) -> None:
        ctx, entry = self.ctx, self.entry
        await ctx.clock.sleep_until(max(self.plan.aos_s - 1.0, ctx.clock.now_s()))
        self._set_phase(Phase.TRACK)
        await self._beacon(on=True)
        telemetry = ctx.tracker.subscribe()
        # A loop far behind its clock (an overloaded host, a clock faster than it can
        # follow, a stopped process) is said when it happens; its effect on the pointing
        # is judged from the telemetry.
        self.lateness = LatenessMonitor(
            ctx.clock, limit_s=tolerated_lateness_s(ctx.cfg.tracking.rate_hz),
            on_invalid=lambda why: ctx.alarms.raise_("clock.lateness", Severity.WARNING, why,
                                                     pass_id=entry.pass_id))
        watcher = asyncio.create_task(self.lateness.run(), name=f"lateness-{entry.pass_id}")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._acquire(), name=f"acquire-{entry.pass_id}")
                tg.create_task(self._watch_telemetry(telemetry),
                               name=f"telemetry-{entry.pass_id}")
                tg.create_task(self._progress(), name=f"progress-{entry.pass_id}")
                await self._follow()
                # LOS: the telemetry stream ends and the progress loop wakes and stops.
                self._los.set()
                telemetry.close()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            ctx.tracker.unsubscribe(telemetry)

    async def _follow(self) -> None:
        """Track to LOS, riding out a mount link drop within the grace period."""
        plan = self.plan
        while True:
            try:
                self.report.tracking = await self.ctx.tracker.track(plan)
                return
            except TrackingAborted as exc:
                self.report.tracking = exc.stats
                raise PassAborted(f"tracking: {exc}") from exc
            except MountError as exc:
                self.report.tracking = self.ctx.tracker.stats
                await self._mount_fault(exc)
                now_s = self.ctx.clock.now_s()
                if plan.los_s - now_s < 2.0:
                    return
                plan = plan.window(now_s + 1.0, plan.los_s)
                log.info("pass %s: mount back, resuming the track", self.entry.pass_id)

    async def _mount_fault(self, exc: DriverError) -> None:
        """The mount failed mid-pass: reconnect within the grace period or abort to safe."""
        ctx = self.ctx
        ctx.mark_lost("mount", exc)
        if not isinstance(exc, ConnectionLost):
            raise PassAborted(f"mount error: {exc}", go_safe=True) from exc
        grace_s = ctx.cfg.operations.faults.mount_reconnect_grace_s
        log.warning("pass %s: mount link lost (%s); reconnecting for up to %.0f s",
                    self.entry.pass_id, exc, grace_s)
        if not await with_grace(lambda: ctx.connect("mount"), ctx.clock, grace_s):
            raise PassAborted(
                f"mount link lost and not back within {grace_s:g} s: {exc}", go_safe=True) from exc

    async def _acquire(self) -> None:
        """Record every batch across the QKD window; stopping drains the tagger first."""
        ctx, entry, rec = self.ctx, self.entry, self.recorder
        assert rec is not None
        if entry.qkd_start is None or entry.qkd_end is None:
            log.warning("pass %s has no QKD window: nothing to record", entry.pass_id)
            return
        start_s = max(entry.qkd_start.timestamp(), ctx.clock.now_s())
        end_s = entry.qkd_end.timestamp()
        if start_s >= end_s:
            return
        await ctx.clock.sleep_until(start_s)
        await ctx.tagger.start()
        self._acquiring = True
        log.info("pass %s: acquisition started", entry.pass_id)

        async def stop_at_end() -> None:
            await ctx.clock.sleep_until(end_s)
            await ctx.tagger.stop()

        stopper = asyncio.create_task(stop_at_end(), name=f"acq-stop-{entry.pass_id}")
        batches = ctx.tagger.batches()
        try:
            async for batch in batches:
                info = batch.info
                if info.start_time_s is not None and info.start_time_s >= end_s:
                    # The window is over whatever happened (a stalled station catching up
                    # delivers batches past it): stop here, count what came after.
                    self.report.events_after_window += len(batch)
                    log.warning("pass %s: tagger batch %d starts %.1f s after the end of the "
                                "QKD window: acquisition stops", entry.pass_id, info.seq,
                                info.start_time_s - end_s)
                    break
                await rec.push(batch)
                if info.start_time_s is not None:
                    if self._epoch_s is None:
                        self._epoch_s = info.start_time_s - info.start_ps / 1e12
                    self._covered.append(
                        (info.start_time_s, info.start_time_s + (info.end_ps - info.start_ps) / 1e12))
                    self._covered_events.append(len(batch))
                self._check_batch(batch)
        finally:
            if not stopper.done():
                stopper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stopper
                with contextlib.suppress(DriverError):
                    await ctx.tagger.stop()
            if isinstance(batches, AsyncGenerator):  # left early: end the generator now
                with contextlib.suppress(DriverError):
                    await batches.aclose()
            self._acquiring = False
        log.info("pass %s: acquisition stopped", entry.pass_id)

    def _check_batch(self, batch: Batch) -> None:
        info = batch.info
        if info.lossy:
            self.report.overflow_batches += 1
            self.ctx.alarms.raise_(
                "timetagger.overflow", Severity.WARNING,
                f"time tagger overflow in batch {info.seq} ({info.missed_events} events missed); "
                "recorded in the pass file", pass_id=self.entry.pass_id)

    async def _watch_telemetry(self, telemetry: TelemetrySubscription) -> None:
        """Publish mount telemetry and turn sustained tracking error into a fault; ends
        when the subscription is closed at LOS."""
        ctx = self.ctx
        faults = ctx.cfg.operations.faults
        limit = faults.tracking_error_limit_arcsec
        over_since: float | None = None
        last_s: float | None = None  # the previous sample's time
        async for sample in telemetry:
            self._publish_mount(sample)
            if sample.phase == "tracking":
                ctx.hooks.set_pointing_error_urad(sample.sky_error_arcsec * ARCSEC_TO_URAD)
            prev_s, last_s = last_s, sample.time_s
            if not sample.acquired:
                continue
            if sample.sky_error_arcsec > limit:
                # Off since the last sample seen within the limit: after a stall (a hung
                # process, a loop far behind its clock) that is the whole unobserved time.
                unseen_s = sample.time_s - prev_s if prev_s is not None else 0.0
                start_s = prev_s if prev_s is not None else sample.time_s
                stalled = unseen_s > faults.tracking_error_duration_s
                self._causes.append(Cause(
                    start_s=start_s, end_s=sample.time_s,
                    cause=(f"the station stalled for {unseen_s:.0f} s and the pointing was "
                           "off when it resumed" if stalled else
                           f"tracking error above the {limit:g}\" limit")))
                over_since = start_s if over_since is None else over_since
                if sample.time_s - over_since >= faults.tracking_error_duration_s:
                    msg = (f"tracking error {sample.sky_error_arcsec:.0f}\" above "
                           f"{limit:g}\" for {sample.time_s - over_since:.1f} s"
                           + (f" (no tracking sample for {unseen_s:.1f} s before: the "
                              "station stalled)" if stalled else ""))
                    ctx.alarms.raise_("tracking.error", Severity.WARNING, msg,
                                      pass_id=self.entry.pass_id)
                    if faults.abort_on_tracking_error:
                        self.request_abort(msg)
            else:
                if over_since is not None:
                    ctx.alarms.clear("tracking.error", "tracking error back within the limit")
                over_since = None

    def _publish_mount(self, s: TrackingSample) -> None:
        saz, sel = self.plan.sky_at(s.time_s)
        self.publisher.publish_mount(MountTelemetry(
            time=_dt(s.time_s), actual_az_deg=s.actual_az_deg, actual_el_deg=s.actual_el_deg,
            commanded_az_deg=s.commanded_az_deg, commanded_el_deg=s.commanded_el_deg,
            target_az_deg=float(saz) % 360.0, target_el_deg=float(sel),
            tracking_error_arcsec=max(0.0, s.sky_error_arcsec), moving=True, parked=False,
            tracking=s.phase == "tracking", connected=True))

    async def _progress(self) -> None:
        """Pass progress and count rates, once a clock second, until LOS."""
        ctx = self.ctx
        geometry = SatelliteLinkGeometry(self.entry.earth_satellite(), ctx.cfg.site)
        next_log_s = ctx.clock.now_s()
        while not self._los.is_set():
            progress = self.publish_progress(geometry)
            if ctx.clock.now_s() >= next_log_s:
                # A line for the journal every half minute: what an operator glances at.
                next_log_s += PROGRESS_LOG_S
                rates = ", ".join(f"{k} {v / 1e3:.1f}k" for k, v in progress[1].items()
                                  if k in ("H", "V", "D", "A"))
                log.info("pass %s: el %.1f°, range %.0f km, %s events recorded%s",
                         self.entry.pass_id, progress[0].el_deg or 0.0,
                         progress[0].range_km or 0.0, f"{progress[0].events_recorded:,}",
                         f", detections/s {rates}" if self._acquiring and rates else "")
            await self._until_los(1.0)

    async def _until_los(self, limit_s: float) -> None:
        """Wait ``limit_s`` clock seconds, or less if LOS comes first."""
        los = asyncio.ensure_future(self._los.wait())
        nap = asyncio.ensure_future(self.ctx.clock.sleep(limit_s))
        try:
            await asyncio.wait({los, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (los, nap):
                t.cancel()
            await asyncio.gather(los, nap, return_exceptions=True)

    def publish_progress(self, geometry: SatelliteLinkGeometry | None = None,
                         ) -> tuple[PassProgress, dict[str, float]]:
        """Publish pass progress and count rates; returns them (rates by channel name)."""
        ctx, entry = self.ctx, self.entry
        now_s = ctx.clock.now_s()
        stats = self.recorder.stats() if self.recorder is not None else None
        el = rng = None
        if geometry is not None:
            import numpy as np

            r, e = geometry.range_el_at(np.array([now_s]))
            rng, el = float(r[0]), float(e[0])
        progress = PassProgress(
            time=ctx.clock.now(), pass_id=entry.pass_id, satellite=entry.satellite,
            phase=self.phase if self.phase != Phase.IDLE else Phase.FINALIZE,
            elapsed_s=max(0.0, now_s - self.started_s),
            remaining_s=max(0.0, entry.los_s - now_s), el_deg=el,
            range_km=max(0.0, rng) if rng is not None else None,
            events_recorded=stats.events_recorded if stats else 0,
            events_streamed=stats.events_streamed if stats else 0,
            events_lost=stats.events_lost if stats else 0)
        self.publisher.publish_pass_progress(progress)
        rates = {channel_name(self.channel_names, c): float(r)
                 for c, r in sorted(ctx.tagger.count_rates_hz().items())}
        self.publisher.publish_timetagger(TimeTaggerTelemetry(
            time=ctx.clock.now(), acquiring=self._acquiring,
            window_s=ctx.hooks.rate_window_s,
            rates_hz=rates,
            overflow=ctx.alarms.is_active("timetagger.overflow"),
            overflow_count=self.report.overflow_batches,
            events_total=stats.events_recorded if stats else 0))
        return progress, rates

    async def _beacon(self, *, on: bool) -> None:
        laser = self.ctx.laser
        if laser is None or not self.ctx.links.get("beacon_laser", None) or \
                not self.ctx.links["beacon_laser"].connected:
            return
        try:
            if on:
                await laser.output_on(reason=f"pass {self.entry.pass_id} tracking")
            else:
                await laser.output_off(reason=f"pass {self.entry.pass_id} over")
        except DriverError as exc:
            self.ctx.alarms.raise_("beacon_laser.command", Severity.WARNING,
                                   f"beacon laser {'on' if on else 'off'} failed: {exc}",
                                   pass_id=self.entry.pass_id)

    # -- finalize and park ---------------------------------------------------------------------
    async def _finalize(self) -> None:
        ctx = self.ctx
        self._set_phase(Phase.FINALIZE)
        self._los.set()
        await self._beacon(on=False)
        ctx.hooks.set_link(None)
        if self.recorder is not None:
            totals = await self.recorder.close(self.report.outcome.value, self.report.reason)
            r = self.report
            r.counts_by_channel = {channel_name(self.channel_names, c): int(n)
                                   for c, n in totals.counts_by_channel.items()}
            r.events_recorded = totals.events_recorded
            r.events_streamed = totals.events_streamed
            r.events_lost = totals.events_lost
            r.pass_file = str(totals.path)
            if totals.lost_batches and self._epoch_s is not None:
                for x in totals.lost_batches:
                    self._causes.append(Cause(
                        start_s=self._epoch_s + x.start_ps / 1e12,
                        end_s=self._epoch_s + x.end_ps / 1e12,
                        cause=f"batches not recorded ({x.reason.removeprefix('not recorded: ')})"))
        self._account()
        ctx.alarms.clear("timetagger.overflow", "pass over")
        ctx.alarms.clear("tracking.error", "pass over")
        ctx.alarms.clear("clock.lateness", "pass over")
        # A disk that refused writes stays alarmed (disk.write) until the supervisor's
        # health check measures enough free space again.
        self._summary()

    def _window(self) -> Span:
        entry = self.entry
        start = (entry.qkd_start or entry.aos).timestamp()
        end = (entry.qkd_end or entry.los).timestamp()
        if entry.qkd_start is None or entry.qkd_end is None:
            end = start  # no QKD window: nothing to lose
        return start, end

    def _account(self) -> None:
        """This segment's record: what of its part of the window it recorded usefully;
        ``completed`` becomes ``degraded`` past the stated share lost."""
        r = self.report
        lo, hi = self._window()
        own = (min(max(lo, self.started_s), hi), hi)
        bad = [(c.start_s, c.end_s) for c in self._causes]
        good = subtract(clip(merge(self._covered), *own), bad)
        good_events = _events_within(self._covered, self._covered_events, good)
        window_s = own[1] - own[0]
        r.window_s = round(window_s, 3)
        r.window_lost_s = round(max(0.0, window_s - total_s(good)), 3)
        r.window_lost_fraction = round(r.window_lost_s / window_s, 4) if window_s > 0 else 0.0
        tr = r.tracking
        seg = SegmentState(
            segment=self.segment, stream_pass_id=self.recorder.pass_id if self.recorder else
            (self.entry.pass_id if self.segment == 1 else f"{self.entry.pass_id}-s{self.segment}"),
            outcome=r.outcome, reason=r.reason, started_at=r.phase_times.get(Phase.PREPARE.value),
            ended_at=self.ctx.clock.now(), events_recorded=r.events_recorded,
            events_lost=r.events_lost, counts_by_channel=r.counts_by_channel,
            file_path=r.pass_file, max_el_deg=self.entry.max_el_deg,
            alarms_raised=self.ctx.alarms.raised_since(self._alarm_mark),
            tracking=TrackingErrorStats(
                rms_arcsec=tr.rms_sky_error_arcsec, p95_arcsec=tr.p95_error_arcsec,
                max_arcsec=tr.max_error_arcsec, samples=tr.samples_after_acquisition)
            if tr is not None else None,
            good_s=good, good_events=good_events, causes=merge_causes(self._causes))
        outcome, reason = degraded(r.outcome, r.reason, own, [seg])
        if outcome != r.outcome:
            log.warning("pass %s segment %d degraded: %s", self.entry.pass_id, self.segment, reason)
        r.outcome, r.reason = outcome, reason
        seg.outcome, seg.reason = outcome, reason
        r.segment_state = seg

    def _summary(self) -> None:
        """Publish the segment's summary (a resumed pass) and the whole pass's."""
        r = self.report
        if r.segment_state is None:
            self._account()
        seg = r.segment_state
        assert seg is not None
        entry = self.entry
        segments = [*self.earlier_segments, seg]
        window = self._window()
        if len(segments) > 1:
            own = segment_summary(entry.pass_id, entry.satellite, entry.norad_id, entry.aos,
                                  entry.los, window, seg)
            self.publisher.publish_summary(own.model_copy(update={
                "events_streamed": r.events_streamed}))
        whole = pass_summary(entry.pass_id, entry.satellite, entry.norad_id, entry.aos,
                             entry.los, window, segments)
        if len(segments) == 1:
            whole = whole.model_copy(update={"events_streamed": r.events_streamed})
        self.publisher.publish_summary(whole)
        log.info("pass %s %s%s: %d events recorded, %d streamed, %d lost; file %s",
                 r.pass_id, r.outcome.value, f" ({r.reason})" if r.reason else "",
                 r.events_recorded, r.events_streamed, r.events_lost, r.pass_file)

    async def _park(self) -> None:
        ctx = self.ctx
        self._set_phase(Phase.PARK)
        if not ctx.links["mount"].connected:
            log.error("pass %s: cannot park, the mount is not connected", self.entry.pass_id)
            return
        try:
            if await ctx.tracker.park():
                self.report.mount_parked = await ctx.tracker.wait_parked(
                    ctx.cfg.operations.faults.park_timeout_s)
        except (MountError, TimeoutError) as exc:
            ctx.mark_lost("mount", exc)
        if not self.report.mount_parked:
            ctx.alarms.raise_("mount.park", Severity.CRITICAL,
                              "the mount did not reach the park position",
                              pass_id=self.entry.pass_id)
            self.report.go_safe = True
        else:
            ctx.alarms.clear("mount.park", "parked")


def _events_within(spans: list[Span], events: list[int], good: list[Span]) -> int:
    """Events of the batches (``spans``, ``events``) lying mostly inside ``good``."""
    import numpy as np

    if not spans or not good:
        return 0
    t0 = np.array([a for a, _ in spans])
    t1 = np.array([b for _, b in spans])
    inside = np.zeros(len(spans))
    for a, b in good:
        inside += np.clip(np.minimum(t1, b) - np.maximum(t0, a), 0.0, None)
    mostly = inside >= 0.5 * np.maximum(t1 - t0, 1e-12)
    return int(np.asarray(events)[mostly].sum())


def merge_causes(causes: list[Cause]) -> list[Cause]:
    """Overlapping spans of one cause joined (a stall is one span, not 2,000)."""
    out: list[Cause] = []
    for c in sorted(causes, key=lambda c: (c.cause, c.start_s)):
        if out and out[-1].cause == c.cause and c.start_s <= out[-1].end_s + 1.0:
            out[-1].end_s = max(out[-1].end_s, c.end_s)
        else:
            out.append(c.model_copy())
    return sorted(out, key=lambda c: c.start_s)


def _dt(time_s: float) -> datetime:
    from station.clock import from_epoch_s

    return from_epoch_s(time_s)


def _hms(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")
