"""One pass, start to finish: prepare → track → finalize → park.

``prepare`` (at AOS − lead time) runs the readiness checks, plans the track (in a worker
thread), slews to the rise point (joining a track under way: :mod:`.joining`), configures
the tagger and opens the pass file. ``track`` follows the satellite from AOS to LOS while
the tagger records across the QKD window (:mod:`.acquisition`) and progress goes out
(:mod:`.progress`). ``finalize`` stops acquisition, closes the file, accounts for the
window and publishes the summaries (:mod:`.accounting`); ``park`` parks. ``finalize`` and
``park`` run whatever happened before them: a fault, an operator abort or a shutdown
still leaves a closed file and a parked mount.

Every phase change calls ``on_phase(phase, runner, reason)``, the reason in words.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from drivers.errors import DriverError
from station import __version__
from station.daemon.accounting import (
    Recorded,
    account,
    lost_batch_causes,
    publish_summaries,
)
from station.daemon.acquisition import Acquisition, TelemetryWatch, publishing_slew
from station.daemon.alarms import Severity
from station.daemon.context import StationContext
from station.daemon.joining import MIN_USEFUL_WINDOW_S, Joined, TooLittleWindow
from station.daemon.lateness import LatenessMonitor, tolerated_lateness_s
from station.daemon.modes import Outcome, Phase
from station.daemon.motion import follow, slew_to_start
from station.daemon.parking import park_after_pass
from station.daemon.passreport import PassAborted, PassReport
from station.daemon.progress import Progress, channel_name, channel_names
from station.daemon.publisher import NullPublisher, Publisher
from station.daemon.readiness import alarm_results, blocking_failures, run_checks
from station.daemon.record import Cause, SegmentState
from station.events import PassHeader
from station.events.pipeline import PassRecorder
from station.orbit.geometry import SatelliteLinkGeometry
from station.orbit.passes import PassInfo
from station.tracking import TrackPlan, plan_for_pass
from station.utc import log_time

__all__ = ["MIN_USEFUL_WINDOW_S", "PassAborted", "PassReport", "PassRunner", "channel_name",
           "channel_names"]

log = logging.getLogger("station.pass")

T = TypeVar("T")
#: Called on every phase change with the phase entered, the runner and why.
OnPhase = Callable[[Phase, "PassRunner", str], None]


class PassRunner:
    """Runs one pass segment (see the module docstring)."""

    def __init__(self, ctx: StationContext, entry: PassInfo, *, segment: int = 1,
                 on_phase: OnPhase | None = None, publisher: Publisher | None = None,
                 on_file_opened: Callable[[str], None] | None = None,
                 earlier_segments: list[SegmentState] | None = None):
        self.ctx, self.entry, self.segment = ctx, entry, segment
        #: Segments of this pass recorded before (a resume): the whole-pass summary adds
        #: them up with this one.
        self.earlier_segments = list(earlier_segments or [])
        self.phase = Phase.IDLE
        self._on_phase: OnPhase = on_phase or (lambda phase, runner, reason: None)
        self._on_file_opened = on_file_opened or (lambda path: None)
        self.publisher: Publisher = publisher or NullPublisher()
        self.report = PassReport(
            pass_id=entry.pass_id, satellite=entry.satellite, norad_id=entry.norad_id,
            segment=segment, planned_aos=entry.aos, planned_los=entry.los,
            qkd_start=entry.qkd_start, qkd_end=entry.qkd_end)
        self.recorder: PassRecorder | None = None
        self.plan: TrackPlan | None = None
        # What the parts of the pass find, handed to the accounting at the end.
        self.acquisition: Acquisition | None = None
        self.watch: TelemetryWatch | None = None
        self._join_cause: Cause | None = None
        self._lost_causes: tuple[Cause, ...] = ()
        self._abort = asyncio.Event()
        self._abort_reason = ""
        self._abort_safe = False
        self._alarm_mark = len(ctx.alarms.history)
        #: Set at LOS (or when the pass ends early): the progress loop stops on it.
        self._los = asyncio.Event()
        self.started_s = ctx.clock.now_s()
        self.channel_names = channel_names(ctx)

    @property
    def acquiring(self) -> bool:
        """The tagger is recording for this pass."""
        return self.acquisition is not None and self.acquisition.acquiring

    def _abort_cause(self) -> PassAborted:
        return PassAborted(self._abort_reason, go_safe=self._abort_safe)

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
                 entry.pass_id, entry.satellite, self.segment, log_time(entry.aos),
                 entry.max_el_deg, log_time(entry.qkd_start), log_time(entry.qkd_end))
        try:
            try:
                if await abortable(self._prepare(), self._abort, self._abort_cause):
                    await abortable(self._track(), self._abort, self._abort_cause)
            except PassAborted as exc:
                self.report.tracking = exc.tracking or self.report.tracking
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
        r = self.report
        if not (r.outcome == Outcome.SKIPPED and self.recorder is None):
            await self._finalize()
            await self._park()
        else:
            self._summary()
        self._set_phase(Phase.IDLE, f"pass {r.outcome.value}" + (f": {r.reason}" if r.reason else ""))

    def _set_phase(self, phase: Phase, reason: str) -> None:
        self.phase = phase
        self.report.phase_times[phase.value if phase != Phase.IDLE or not self.report.phase_times
                                else "end"] = self.ctx.clock.now()
        self._on_phase(phase, self, reason)

    def _set_outcome(self, outcome: Outcome, reason: str, go_safe: bool = False) -> None:
        # The first fault explains the pass; later ones are consequences.
        if self.report.outcome == Outcome.COMPLETED:
            self.report.outcome, self.report.reason = outcome, reason
        self.report.go_safe = self.report.go_safe or go_safe

    # -- prepare ---------------------------------------------------------------------------
    async def _prepare(self) -> bool:
        ctx, entry = self.ctx, self.entry
        # The segment is settled before the first transition names it.
        self._settle_segment()
        self._set_phase(Phase.PREPARE, prepare_reason(entry, self.segment, ctx.clock.now_s()))
        results = await run_checks(ctx, entry)
        self.report.readiness = results
        alarm_results(ctx, entry.pass_id, results)
        failed = blocking_failures(results)
        if failed:
            reason = "readiness: " + "; ".join(f"{r.name}: {r.detail}" for r in failed)
            self._set_outcome(Outcome.SKIPPED, reason)
            log.error("pass %s skipped: %s", entry.pass_id, reason)
            return False
        satellite = entry.earth_satellite()
        plan = await plan_for_pass(ctx.mount, ctx.cfg, satellite, aos=entry.aos, los=entry.los,
                                   pass_id=entry.pass_id)
        # The slew is on the mount telemetry topic too: a dashboard sees it leave park.
        try:
            async with publishing_slew(ctx, self.publisher):
                self.plan = await slew_to_start(ctx, entry, plan, segment=self.segment,
                                                started_s=self.started_s, on_join=self._joined)
        except TooLittleWindow as exc:
            self._set_outcome(Outcome.SKIPPED, str(exc))
            log.warning("pass %s segment %d skipped: %s", entry.pass_id, self.segment, exc)
            return False
        await ctx.tagger.configure(ctx.cfg.timetagger.channel_configs())
        if ctx.hooks.follows_link:  # a simulated downlink follows the real pass geometry
            ctx.hooks.set_link(SatelliteLinkGeometry(satellite, ctx.cfg.site))
        self._settle_segment()  # a file may have appeared since (never overwritten)
        self.recorder = ctx.pipeline.open_pass(
            pass_header(ctx, entry, self.segment, self.channel_names), on_loss=self._disk_loss)
        self.report.pass_file = str(self.recorder.path)
        self._on_file_opened(str(self.recorder.path))
        return True

    def _joined(self, joined: Joined) -> None:
        self._join_cause, self.report.join_delay_s = joined.cause, joined.delay_s

    def _settle_segment(self) -> None:
        self.segment = self.report.segment = free_segment(self.ctx, self.entry.pass_id,
                                                          self.segment)

    def _disk_loss(self, message: str) -> None:
        """The pipeline says the disk refused a write: alarm now, not at the end."""
        self.ctx.alarms.raise_("disk.write", Severity.CRITICAL, message,
                               pass_id=self.entry.pass_id)

    # -- track -------------------------------------------------------------------------------
    async def _track(self) -> None:
        ctx, entry, plan, recorder = self.ctx, self.entry, self.plan, self.recorder
        assert plan is not None and recorder is not None  # set by a prepare that proceeds
        await ctx.clock.sleep_until(max(plan.aos_s - 1.0, ctx.clock.now_s()))
        self._set_phase(Phase.TRACK, f"on the track: following {entry.satellite} until LOS")
        await switch_beacon(ctx, entry.pass_id, on=True)
        telemetry = ctx.tracker.subscribe()
        self.acquisition = Acquisition(ctx, entry, recorder)
        self.watch = TelemetryWatch(ctx, entry, plan, self.publisher, self.request_abort)
        progress = Progress(ctx, entry, self.publisher, recorder=recorder,
                            acquisition=self.acquisition, started_s=self.started_s,
                            phase=lambda: self.phase, los=self._los)
        # A loop far behind its clock (an overloaded host, a clock faster than it can
        # follow, a stopped process) is said when it happens; its effect on the pointing
        # is judged from the telemetry.
        lateness = LatenessMonitor(
            ctx.clock, limit_s=tolerated_lateness_s(ctx.cfg.tracking.rate_hz),
            on_invalid=lambda why: ctx.alarms.raise_("clock.lateness", Severity.WARNING, why,
                                                     pass_id=entry.pass_id))
        watcher = asyncio.create_task(lateness.run(), name=f"lateness-{entry.pass_id}")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.acquisition.run(), name=f"acquire-{entry.pass_id}")
                tg.create_task(self.watch.run(telemetry), name=f"telemetry-{entry.pass_id}")
                tg.create_task(progress.run(), name=f"progress-{entry.pass_id}")
                self.report.tracking = await follow(ctx, entry.pass_id, plan)
                # LOS: the telemetry stream ends and the progress loop wakes and stops.
                self._los.set()
                telemetry.close()
        except BaseExceptionGroup as group:
            # The task group wraps even its body's exception: unwrap it, so a PassAborted
            # ends the pass with its own reason and not as an "internal error".
            cause = _sole_cause(group)
            if cause is None:
                raise
            raise cause from None
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            ctx.tracker.unsubscribe(telemetry)

    # -- finalize and park ---------------------------------------------------------------------
    async def _finalize(self) -> None:
        ctx, r = self.ctx, self.report
        self._set_phase(Phase.FINALIZE, "LOS" if r.outcome == Outcome.COMPLETED
                        else f"{r.outcome.value}: {r.reason}")
        self._los.set()
        await switch_beacon(ctx, self.entry.pass_id, on=False)
        ctx.hooks.set_link(None)
        if self.recorder is not None:
            totals = await self.recorder.close(r.outcome.value, r.reason)
            r.counts_by_channel = {channel_name(self.channel_names, c): int(n)
                                   for c, n in totals.counts_by_channel.items()}
            r.events_recorded = totals.events_recorded
            r.events_streamed = totals.events_streamed
            r.events_lost = totals.events_lost
            r.pass_file = str(totals.path)
            epoch_s = self.acquisition.result().epoch_s if self.acquisition else None
            self._lost_causes = lost_batch_causes(totals.lost_batches, epoch_s)
        self._account()
        ctx.alarms.clear("timetagger.overflow", "pass over")
        ctx.alarms.clear("tracking.error", "pass over")
        ctx.alarms.clear("clock.lateness", "pass over")
        # A disk that refused writes stays alarmed (disk.write) until the supervisor's
        # health check measures enough free space again.
        self._summary()

    def _recorded(self) -> Recorded:
        """What the parts of this segment found, as the accounting's one input."""
        acquired = self.acquisition.result() if self.acquisition is not None else None
        causes = [*([self._join_cause] if self._join_cause else []),
                  *(self.watch.causes if self.watch is not None else ()), *self._lost_causes]
        return Recorded(spans=acquired.spans if acquired else (),
                        span_events=acquired.span_events if acquired else (),
                        causes=tuple(causes))

    def _account(self) -> None:
        r, entry = self.report, self.entry
        if self.acquisition is not None:
            acquired = self.acquisition.result()
            r.overflow_batches = acquired.overflow_batches
            r.events_after_window = acquired.events_after_window
        stream_id = self.recorder.pass_id if self.recorder else (
            entry.pass_id if self.segment == 1 else f"{entry.pass_id}-s{self.segment}")
        acc = account(entry, r, self._recorded(), started_s=self.started_s,
                      stream_pass_id=stream_id, now=self.ctx.clock.now(),
                      alarms_raised=self.ctx.alarms.raised_since(self._alarm_mark))
        r.window_s, r.window_lost_s = acc.window_s, acc.window_lost_s
        r.window_lost_fraction = acc.window_lost_fraction
        r.outcome, r.reason, r.segment_state = acc.segment.outcome, acc.segment.reason, acc.segment

    def _summary(self) -> None:
        if self.report.segment_state is None:
            self._account()
        publish_summaries(self.publisher, self.entry, self.report, self.earlier_segments)

    async def _park(self) -> None:
        r = self.report
        self._set_phase(Phase.PARK, f"pass {r.outcome.value}: parking the mount")
        parked = await park_after_pass(self.ctx, self.entry.pass_id)
        r.mount_parked = bool(parked)
        if parked is False:  # tried and failed (None: the mount was away, nothing tried)
            r.go_safe = True


def _sole_cause(group: BaseExceptionGroup) -> BaseException | None:
    """What ended a task group: its first PassAborted, else its one exception; None when
    several other exceptions are in it (they stay grouped, each with its traceback)."""
    aborted = group.subgroup(PassAborted)
    leaves = _leaves(aborted if aborted is not None else group)
    return leaves[0] if aborted is not None or len(leaves) == 1 else None


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def pass_header(ctx: StationContext, entry: PassInfo, segment: int,
                names: dict[int, str]) -> PassHeader:
    """The pass file's header: the station, the pass, its elements and the tagger."""
    site = ctx.cfg.site
    return PassHeader(
        station_id=ctx.cfg.station_id, station_name=site.name,
        site_latitude_deg=site.latitude_deg, site_longitude_deg=site.longitude_deg,
        site_height_m=site.height_m, satellite=entry.satellite, norad_id=entry.norad_id,
        elements=entry.elements_text, pass_id=entry.pass_id, segment=segment,
        aos=entry.aos, los=entry.los, qkd_start=entry.qkd_start, qkd_end=entry.qkd_end,
        channel_map={str(c): name for c, name in names.items()},
        tagger_model=ctx.tagger.model, tagger_resolution_ps=ctx.tagger.resolution_ps,
        clock_source=ctx.clock.source, software_version=__version__,
    )


async def switch_beacon(ctx: StationContext, pass_id: str, *, on: bool) -> None:
    """The beacon laser on for tracking, off after; a failure is an alarm, not a fault."""
    laser, link = ctx.laser, ctx.links.get("beacon_laser", None)
    if laser is None or not link or not link.connected:
        return
    try:
        if on:
            await laser.output_on(reason=f"pass {pass_id} tracking")
        else:
            await laser.output_off(reason=f"pass {pass_id} over")
    except DriverError as exc:
        ctx.alarms.raise_("beacon_laser.command", Severity.WARNING,
                          f"beacon laser {'on' if on else 'off'} failed: {exc}", pass_id=pass_id)


def prepare_reason(entry: PassInfo, segment: int, now_s: float) -> str:
    """Why a pass enters ``prepare`` now, in words (the transition's reason)."""
    if now_s > entry.aos.timestamp():
        return f"segment {segment}: joining the track of {entry.satellite} under way"
    if entry.qkd_start is None:
        return (f"AOS in {entry.aos.timestamp() - now_s:.0f} s (no QKD window): "
                "slewing to the start of the track")
    return (f"QKD window opens in {entry.qkd_start.timestamp() - now_s:.0f} s: "
            "readiness checks, then slewing to the start of the track")


def free_segment(ctx: StationContext, pass_id: str, segment: int) -> int:
    """The first segment number from ``segment`` up whose pass file does not exist yet: a
    pass recorded before (a rerun of a simulated night, or a crash that left its file) is
    never overwritten, it gets a new segment."""
    probe = PassHeader(pass_id=pass_id, segment=segment)
    while ctx.pipeline.path_for(probe).exists():
        probe = probe.model_copy(update={"segment": probe.segment + 1})
    if probe.segment != segment:
        log.warning("pass %s: %s exists; recording as segment %d", pass_id,
                    ctx.pipeline.path_for(PassHeader(pass_id=pass_id, segment=segment)),
                    probe.segment)
    return probe.segment


async def abortable(coro: Coroutine[Any, Any, T], abort: asyncio.Event,
                    cause: Callable[[], BaseException]) -> T:
    """Run ``coro`` until it ends or ``abort`` is set (then raise ``cause()``)."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(abort.wait())
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
    raise cause()
