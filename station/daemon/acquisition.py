"""What a pass segment takes in while it tracks: the tagger's batches across the QKD
window (:class:`Acquisition`) and the mount's telemetry (:class:`TelemetryWatch`).

Each keeps its own findings and hands them over as values when asked
(:meth:`Acquisition.result`, :attr:`TelemetryWatch.causes`): the accounting
(:mod:`station.daemon.accounting`) reads no shared state. :func:`publishing_slew` puts
the mount on the telemetry topic while the pass slews to the start of its track.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from drivers.errors import DriverError
from drivers.timetagger.base import Batch
from station.clock import from_epoch_s
from station.daemon.alarms import Severity
from station.daemon.context import StationContext
from station.daemon.publisher import Publisher
from station.daemon.record import Cause, Span
from station.events.pipeline import PassRecorder
from station.mqtt.messages import MountTelemetry
from station.orbit.passes import PassInfo
from station.sustained import Sustained
from station.tracking import TelemetrySubscription, TrackingSample, TrackPlan

__all__ = ["Acquired", "Acquisition", "TelemetryWatch", "mount_telemetry", "publishing_slew"]

log = logging.getLogger("station.pass")

ARCSEC_TO_URAD = math.pi / (180 * 3600) * 1e6


@dataclass(frozen=True, slots=True)
class Acquired:
    """What the acquisition recorded: the clock span and events of each batch in the
    file, the clock time of tagger time 0, and what it counted on the way."""

    spans: tuple[Span, ...] = ()
    span_events: tuple[int, ...] = ()
    epoch_s: float | None = None
    overflow_batches: int = 0
    events_after_window: int = 0


class Acquisition:
    """Records every tagger batch of the QKD window into the pass file."""

    def __init__(self, ctx: StationContext, entry: PassInfo, recorder: PassRecorder):
        self.ctx, self.entry, self.recorder = ctx, entry, recorder
        #: True while the tagger runs for this pass.
        self.acquiring = False
        self.overflow_batches = 0
        self._spans: list[Span] = []
        self._span_events: list[int] = []
        self._epoch_s: float | None = None
        self._after_window = 0

    def result(self) -> Acquired:
        return Acquired(spans=tuple(self._spans), span_events=tuple(self._span_events),
                        epoch_s=self._epoch_s, overflow_batches=self.overflow_batches,
                        events_after_window=self._after_window)

    async def run(self) -> None:
        """Record across the QKD window; stopping drains the tagger first."""
        ctx, entry = self.ctx, self.entry
        if entry.qkd_start is None or entry.qkd_end is None:
            log.warning("pass %s has no QKD window: nothing to record", entry.pass_id)
            return
        start_s = max(entry.qkd_start.timestamp(), ctx.clock.now_s())
        end_s = entry.qkd_end.timestamp()
        if start_s >= end_s:
            return
        await ctx.clock.sleep_until(start_s)
        await ctx.tagger.start()
        self.acquiring = True
        log.info("pass %s: acquisition started", entry.pass_id)

        async def stop_at_end() -> None:
            await ctx.clock.sleep_until(end_s)
            await ctx.tagger.stop()

        stopper = asyncio.create_task(stop_at_end(), name=f"acq-stop-{entry.pass_id}")
        batches = ctx.tagger.batches()
        try:
            async for batch in batches:
                if not await self._take(batch, end_s):
                    break
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
            self.acquiring = False
        log.info("pass %s: acquisition stopped", entry.pass_id)

    async def _take(self, batch: Batch, end_s: float) -> bool:
        """Record one batch; False (not recorded) once batches start past ``end_s``."""
        info = batch.info
        if info.start_time_s is not None and info.start_time_s >= end_s:
            # The window is over whatever happened (a stalled station catching up
            # delivers batches past it): stop here, count what came after.
            self._after_window += len(batch)
            log.warning("pass %s: tagger batch %d starts %.1f s after the end of the "
                        "QKD window: acquisition stops", self.entry.pass_id, info.seq,
                        info.start_time_s - end_s)
            return False
        await self.recorder.push(batch)
        if info.start_time_s is not None:
            if self._epoch_s is None:
                self._epoch_s = info.start_time_s - info.start_ps / 1e12
            self._spans.append(
                (info.start_time_s, info.start_time_s + (info.end_ps - info.start_ps) / 1e12))
            self._span_events.append(len(batch))
        self._check_batch(batch)
        return True

    def _check_batch(self, batch: Batch) -> None:
        info = batch.info
        if info.lossy:
            self.overflow_batches += 1
            self.ctx.alarms.raise_(
                "timetagger.overflow", Severity.WARNING,
                f"time tagger overflow in batch {info.seq} ({info.missed_events} events missed); "
                "recorded in the pass file", pass_id=self.entry.pass_id)


class TelemetryWatch:
    """Publishes mount telemetry while tracking and turns a tracking error sustained for
    the configured time into a fault (``on_fault``, with the reason)."""

    def __init__(self, ctx: StationContext, entry: PassInfo, plan: TrackPlan,
                 publisher: Publisher, on_fault: Callable[[str], None]):
        self.ctx, self.entry, self.plan, self.publisher = ctx, entry, plan, publisher
        self.on_fault = on_fault
        faults = ctx.cfg.operations.faults
        self.limit_arcsec = faults.tracking_error_limit_arcsec
        self.over = Sustained(faults.tracking_error_duration_s)
        self._causes: list[Cause] = []

    @property
    def causes(self) -> tuple[Cause, ...]:
        """Spans with the pointing above the limit (or a stall that ended off it)."""
        return tuple(self._causes)

    async def run(self, telemetry: TelemetrySubscription) -> None:
        """Until the subscription is closed (at LOS)."""
        prev_s: float | None = None  # the previous sample's time
        async for sample in telemetry:
            self.publisher.publish_mount(mount_telemetry(sample, self.plan))
            if sample.phase == "tracking":
                self.ctx.hooks.set_pointing_error_urad(sample.sky_error_arcsec * ARCSEC_TO_URAD)
            if sample.acquired:
                self._judge(sample, prev_s)
            prev_s = sample.time_s

    def _judge(self, sample: TrackingSample, prev_s: float | None) -> None:
        limit, faults = self.limit_arcsec, self.ctx.cfg.operations.faults
        if sample.sky_error_arcsec <= limit:
            if self.over.active:
                self.ctx.alarms.clear("tracking.error", "tracking error back within the limit")
            self.over.update(False, sample.time_s)
            return
        # Off since the last sample seen within the limit: after a stall (a hung process,
        # a loop far behind its clock) that is the whole unobserved time.
        unseen_s = sample.time_s - prev_s if prev_s is not None else 0.0
        start_s = prev_s if prev_s is not None else sample.time_s
        stalled = unseen_s > faults.tracking_error_duration_s
        self._causes.append(Cause(
            start_s=start_s, end_s=sample.time_s,
            cause=(f"the station stalled for {unseen_s:.0f} s and the pointing was "
                   "off when it resumed" if stalled else
                   f"tracking error above the {limit:g}\" limit")))
        if not self.over.update(True, sample.time_s, since_s=start_s):
            return
        msg = (f"tracking error {sample.sky_error_arcsec:.0f}\" above "
               f"{limit:g}\" for {self.over.held_s(sample.time_s):.1f} s"
               + (f" (no tracking sample for {unseen_s:.1f} s before: the "
                  "station stalled)" if stalled else ""))
        self.ctx.alarms.raise_("tracking.error", Severity.WARNING, msg,
                               pass_id=self.entry.pass_id)
        if faults.abort_on_tracking_error:
            self.on_fault(msg)


def mount_telemetry(s: TrackingSample, plan: TrackPlan | None) -> MountTelemetry:
    """The ``mount`` message of one tracker sample: with the satellite's position (and
    the error on the sky) from the pass's ``plan``; without them on the slew to the
    track (``plan`` None)."""
    target: tuple[float, float] | None = None
    if plan is not None:
        saz, sel = plan.sky_at(s.time_s)
        target = (float(saz) % 360.0, float(sel))
    return MountTelemetry(
        time=from_epoch_s(s.time_s), actual_az_deg=s.actual_az_deg,
        actual_el_deg=s.actual_el_deg, commanded_az_deg=s.commanded_az_deg,
        commanded_el_deg=s.commanded_el_deg,
        target_az_deg=target[0] if target else None, target_el_deg=target[1] if target else None,
        tracking_error_arcsec=max(0.0, s.sky_error_arcsec) if target else None,
        moving=True, parked=False, tracking=s.phase == "tracking", connected=True)


@contextlib.asynccontextmanager
async def publishing_slew(ctx: StationContext, publisher: Publisher) -> AsyncIterator[None]:
    """While the body runs (the slew to the start of the track), the tracker's samples go
    out as ``mount`` telemetry, thinned like the tracking phase's by the publisher."""
    telemetry = ctx.tracker.subscribe()

    async def relay() -> None:
        async for sample in telemetry:
            publisher.publish_mount(mount_telemetry(sample, None))

    task = asyncio.create_task(relay(), name="slew-telemetry")
    try:
        yield
    finally:
        # Closed, the subscription ends the relay once it has sent what is queued (the
        # sample at the rise point last); cancelling the wait cancels the relay too.
        ctx.tracker.unsubscribe(telemetry)
        await asyncio.gather(task, return_exceptions=True)
