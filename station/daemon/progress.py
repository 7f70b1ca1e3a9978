"""A pass's progress as it tracks: ``pass`` and ``timetagger`` messages once a clock
second, and a line for the journal every half minute, until LOS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from station.daemon.acquisition import Acquisition
from station.daemon.context import StationContext
from station.daemon.modes import Phase
from station.daemon.publisher import Publisher
from station.events.pipeline import PassRecorder
from station.mqtt.messages import PassProgress, TimeTaggerTelemetry
from station.orbit.geometry import SatelliteLinkGeometry
from station.orbit.passes import PassInfo

__all__ = ["PROGRESS_LOG_S", "Progress", "channel_name", "channel_names"]

log = logging.getLogger("station.pass")

#: How often (clock seconds) a pass in progress writes a line to the log.
PROGRESS_LOG_S = 30.0


def channel_names(ctx: StationContext) -> dict[int, str]:
    """Tagger input -> signal name ('H', 'V', 'D', 'A', 'SYNC', 'PPS') from the channel map."""
    return {int(ch): role.upper()
            for role, ch in ctx.cfg.timetagger.channel_map.model_dump().items()}


def channel_name(names: dict[int, str], channel: int) -> str:
    return names.get(int(channel), f"ch{channel}")


class Progress:
    """Publishes one pass's progress until ``los`` is set. ``phase`` reads the runner's."""

    def __init__(self, ctx: StationContext, entry: PassInfo, publisher: Publisher, *,
                 recorder: PassRecorder, acquisition: Acquisition, started_s: float,
                 phase: Callable[[], Phase], los: asyncio.Event):
        self.ctx, self.entry, self.publisher = ctx, entry, publisher
        self.recorder, self.acquisition = recorder, acquisition
        self.started_s, self.phase, self.los = started_s, phase, los
        self.names = channel_names(ctx)

    async def run(self) -> None:
        """Pass progress and count rates, once a clock second, until LOS."""
        ctx = self.ctx
        geometry = SatelliteLinkGeometry(self.entry.earth_satellite(), ctx.cfg.site)
        next_log_s = ctx.clock.now_s()
        while not self.los.is_set():
            progress, rates = self.publish(geometry)
            if ctx.clock.now_s() >= next_log_s:
                # A line for the journal every half minute: what an operator glances at.
                next_log_s += PROGRESS_LOG_S
                text = ", ".join(f"{k} {v / 1e3:.1f}k" for k, v in rates.items()
                                 if k in ("H", "V", "D", "A"))
                log.info("pass %s: el %.1f°, range %.0f km, %s events recorded%s",
                         self.entry.pass_id, progress.el_deg or 0.0, progress.range_km or 0.0,
                         f"{progress.events_recorded:,}",
                         f", detections/s {text}" if self.acquisition.acquiring and text else "")
            await self._until_los(1.0)

    async def _until_los(self, limit_s: float) -> None:
        """Wait ``limit_s`` clock seconds, or less if LOS comes first."""
        los = asyncio.ensure_future(self.los.wait())
        nap = asyncio.ensure_future(self.ctx.clock.sleep(limit_s))
        try:
            await asyncio.wait({los, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (los, nap):
                t.cancel()
            await asyncio.gather(los, nap, return_exceptions=True)

    def publish(self, geometry: SatelliteLinkGeometry | None = None,
                ) -> tuple[PassProgress, dict[str, float]]:
        """Publish pass progress and count rates; returns them (rates by channel name)."""
        ctx, entry = self.ctx, self.entry
        now_s = ctx.clock.now_s()
        stats = self.recorder.stats()
        el = rng = None
        if geometry is not None:
            r, e = geometry.range_el_at(np.array([now_s]))
            rng, el = float(r[0]), float(e[0])
        phase = self.phase()
        progress = PassProgress(
            time=ctx.clock.now(), pass_id=entry.pass_id, satellite=entry.satellite,
            phase=phase if phase != Phase.IDLE else Phase.FINALIZE,
            elapsed_s=max(0.0, now_s - self.started_s),
            remaining_s=max(0.0, entry.los_s - now_s), el_deg=el,
            range_km=max(0.0, rng) if rng is not None else None,
            events_recorded=stats.events_recorded, events_streamed=stats.events_streamed,
            events_lost=stats.events_lost)
        self.publisher.publish_pass_progress(progress)
        rates = {channel_name(self.names, c): float(r)
                 for c, r in sorted(ctx.tagger.count_rates_hz().items())}
        self.publisher.publish_timetagger(TimeTaggerTelemetry(
            time=ctx.clock.now(), acquiring=self.acquisition.acquiring,
            window_s=ctx.hooks.rate_window_s, rates_hz=rates,
            overflow=ctx.alarms.is_active("timetagger.overflow"),
            overflow_count=self.acquisition.overflow_batches,
            events_total=stats.events_recorded))
        return progress, rates
