"""The tracking loop: pre-position, follow the planned track on the Clock, park.

One :class:`Tracker` per station. Each control tick (``tracking.rate_hz``, on the Clock)
it sends the planned position ``lead_s`` ahead of now through the gate (streamed targets),
or keeps a program track uploaded ahead (when the backend takes one), reads the axes and
publishes a :class:`TrackingSample` to every telemetry subscriber. Tracking error is the
angle between where the mount is and where the plan says it should be at that instant;
``sky_error_arcsec`` adds the error the plan itself accepts (keyhole).

The mount is parked when the pass ends (``park_after_pass``), when tracking is lost
(error above ``loss_error_deg`` for ``loss_duration_s`` after acquisition), when the
gate keeps refusing targets, on a mount error, and when the task is cancelled (shutdown).

The moves to fixed points (rise point, park) are ``positioning.py``; the fan-out of the
samples to subscribers is ``telemetry.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from drivers.mount.base import MountError, MountPosition, TrackPoint
from station.clock import Clock
from station.config.mount import TrackingConfig
from station.sustained import Sustained
from station.tracking.gate import CommandRefused, GatedMount
from station.tracking.positioning import Positioner, PrepositionTimeout
from station.tracking.telemetry import TelemetryFanout, TelemetrySubscription, TrackingSample
from station.tracking.trajectory import TrackPlan
from station.tracking.wrap import angle_between_deg

__all__ = ["PrepositionTimeout", "TelemetrySubscription", "Tracker", "TrackingAborted",
           "TrackingLost", "TrackingSample", "TrackingStats"]

log = logging.getLogger(__name__)

#: A gate refusing targets for this long aborts the pass.
_REFUSAL_ABORT_S = 1.0


class TrackingStats(BaseModel):
    """Running and final statistics of one tracked pass."""

    pass_id: str = ""
    outcome: str = Field("running", description="running, complete, lost, aborted, cancelled, error")
    ticks: int = 0
    skipped_ticks: int = Field(0, description="Ticks skipped because the loop fell a period behind.")
    acquired_at_s: float | None = None
    samples_after_acquisition: int = 0
    rms_error_arcsec: float = Field(0.0, description="RMS tracking error after acquisition.")
    max_error_arcsec: float = Field(0.0, description="Largest tracking error after acquisition.")
    p95_error_arcsec: float = 0.0
    rms_sky_error_arcsec: float = Field(0.0, description="RMS error vs the satellite after acquisition.")
    max_lateness_s: float = 0.0
    p99_lateness_s: float = 0.0
    refused_commands: int = 0
    mount_errors: int = 0
    telemetry_dropped: int = Field(0, description="Samples dropped by slow telemetry subscribers.")
    chunks_uploaded: int = 0
    parked: bool = Field(False, description="Park was commanded and accepted at the end.")
    reason: str = ""


class TrackingAborted(Exception):
    """The pass was abandoned (the mount was sent to park); ``stats`` tells how far it got."""

    def __init__(self, message: str, stats: TrackingStats):
        self.stats = stats
        super().__init__(message)


class TrackingLost(TrackingAborted):
    """The tracking error stayed above the loss threshold after acquisition."""


@dataclass(slots=True)
class _Run:
    """What the control loop carries from one tick of a pass to the next."""

    plan: TrackPlan
    stats: TrackingStats
    program: bool          # the mount runs an uploaded program track
    streaming: bool        # close enough to stream targets (else: intercepting)
    lead_s: float
    lost: Sustained        # error above the loss threshold after acquisition
    refusing: Sustained    # the gate refusing targets
    chunk_end: float = -math.inf
    intercept_until: float = -math.inf
    under: int = 0         # readings in a row within the acquisition error
    errors: list[float] = field(default_factory=list)
    sky_errors: list[float] = field(default_factory=list)
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


class Tracker:
    """Pre-positions, tracks and parks through a :class:`GatedMount`; see module docstring."""

    def __init__(self, gated: GatedMount, clock: Clock, cfg: TrackingConfig):
        self.gated = gated
        self.clock = clock
        self.cfg = cfg
        self.telemetry = TelemetryFanout(cfg.telemetry_queue)
        self._publish = self.telemetry.publish
        self.positioner = Positioner(gated, clock, cfg, self._publish)
        self.stats = TrackingStats()
        self._dropped_base = 0

    # -- telemetry (station/tracking/telemetry.py) ---------------------------------------
    def subscribe(self, maxsize: int | None = None) -> TelemetrySubscription:
        """A new telemetry stream; iterate it with ``async for``. Ends at :meth:`close`."""
        return self.telemetry.subscribe(maxsize)

    def unsubscribe(self, sub: TelemetrySubscription) -> None:
        self.telemetry.unsubscribe(sub)

    def close(self) -> None:
        """End every telemetry stream."""
        self.telemetry.close()

    @property
    def lead_s(self) -> float:
        lead = self.cfg.lead_s
        return self.gated.capabilities.command_latency_s if lead is None else lead

    # -- pre-positioning and parking (station/tracking/positioning.py) --------------------
    def estimate_slew_s(self, plan: TrackPlan, from_pos: MountPosition) -> float:
        """Clock seconds a slew from ``from_pos`` to the rise point takes (trapezoidal)."""
        return self.positioner.estimate_slew_s(plan, from_pos)

    async def preposition(self, plan: TrackPlan, *, deadline_s: float | None = None) -> float:
        """Slew to the rise point and wait there; returns the clock time it was reached.

        Raises :class:`PrepositionTimeout` if not there by ``deadline_s`` (default: AOS).
        """
        return await self.positioner.preposition(plan, deadline_s=deadline_s)

    async def park(self) -> bool:
        """Command park (over the top if need be, else stop); True if parking."""
        return await self.positioner.park()

    async def wait_parked(self, timeout_s: float) -> bool:
        """Poll until the mount is at the park position or ``timeout_s`` clock seconds pass."""
        return await self.positioner.wait_parked(timeout_s)

    async def _safe_park(self, why: str) -> bool:
        log.log(logging.INFO if why == "end of pass" else logging.WARNING, "parking the mount: %s", why)
        try:
            return await self.park()
        except (MountError, TimeoutError) as exc:
            log.error("could not park after %s: %s", why, exc)
            return False

    # -- tracking ----------------------------------------------------------------------------
    async def track(self, plan: TrackPlan) -> TrackingStats:
        """Track ``plan`` from AOS (waiting for it) to LOS; returns the statistics.

        Raises :class:`TrackingLost` / :class:`TrackingAborted` (after parking) when the
        pass has to be given up; mount errors propagate after a park attempt.
        """
        stats = self.stats = TrackingStats(pass_id=plan.pass_id)
        self._dropped_base = self.telemetry.dropped()
        try:
            await self._run(plan, stats)
        except asyncio.CancelledError:
            stats.outcome, stats.reason = "cancelled", "tracking cancelled (shutdown or request)"
            stats.parked = await self._safe_park("tracking cancelled")
            raise
        except TrackingAborted as exc:
            stats.parked = await self._safe_park(str(exc))
            raise
        except (MountError, TimeoutError) as exc:
            stats.outcome, stats.reason = "error", f"mount error: {exc}"
            stats.mount_errors += 1
            stats.parked = await self._safe_park(stats.reason)
            raise
        finally:
            stats.telemetry_dropped = self.telemetry.dropped() - self._dropped_base
        stats.outcome = "complete"
        if self.cfg.park_after_pass:
            stats.parked = await self._safe_park("end of pass")
        return stats

    async def _run(self, plan: TrackPlan, stats: TrackingStats) -> None:
        """The control loop: one tick per period from AOS to LOS, each reading the axes,
        commanding the mount and judging the reading."""
        period = 1.0 / self.cfg.rate_hz
        await self._read_until_aos(plan)
        t_start = max(self.clock.now_s(), plan.aos_s)
        run = await self._begin(plan, stats)
        k = 0
        while (t_k := t_start + k * period) <= plan.los_s:
            await self.clock.sleep_until(t_k)
            now = self.clock.now_s()
            if now - t_k > period:  # a period behind: skip the ticks that are past
                skip = int((now - t_k) / period)
                stats.skipped_ticks += skip
                k += skip
            pos = await self.gated.position()
            # Command right after reading (Hamlib's dummy rotator, for one, only advances
            # its simulated motion from a command to the next reading); the error of this
            # reading is worked out after the command is out. Lateness is the command's.
            late = self.clock.now_s() - t_k
            run.lateness.append(late)
            await self._command(run, now)
            self._judge(run, pos, late)
            k += 1
        _finish(stats, run.errors, run.sky_errors, run.lateness)

    async def _read_until_aos(self, plan: TrackPlan) -> None:
        # Keep reading the axes until AOS: the gate estimates the mount's rate from
        # recent readings when it checks the first streamed targets.
        while (wait_s := plan.aos_s - self.clock.now_s()) > 0:
            await self.gated.position()
            await self.clock.sleep(min(wait_s, 1.0 / self.cfg.rate_hz))

    async def _begin(self, plan: TrackPlan, stats: TrackingStats) -> _Run:
        """The state of a pass at AOS: program track or streaming, and whether the mount
        is close enough to the track to stream targets at once or must intercept it."""
        cfg = self.cfg
        program = cfg.mode == "program" or (cfg.mode == "auto" and self.gated.capabilities.program_track)
        pos0 = await self.gated.position()
        paz0, pel0 = plan.point_at(pos0.time_s)
        streaming = program or float(angle_between_deg(
            np.asarray(pos0.az_deg), np.asarray(pos0.el_deg), paz0, pel0)) < cfg.capture_deg
        return _Run(plan, stats, program=program, streaming=streaming, lead_s=self.lead_s,
                    lost=Sustained(cfg.loss_duration_s), refusing=Sustained(_REFUSAL_ABORT_S))

    async def _command(self, run: _Run, now: float) -> None:
        """This tick's command: a program-track chunk, a streamed target or an intercept
        slew. A gate that keeps refusing aborts the pass."""
        plan, stats, cfg = run.plan, run.stats, self.cfg
        try:
            if run.program:
                if now >= run.chunk_end - cfg.program_chunk_s / 2:
                    run.chunk_end = await self._upload_chunk(plan, now)
                    stats.chunks_uploaded += 1
            elif run.streaming:
                t_cmd = now + run.lead_s
                # Past LOS there is no track: a clamped target would read as a stop.
                if t_cmd <= plan.los_s:
                    az_c, el_c = plan.point_at(t_cmd)
                    await self.gated.track_to(float(az_c), float(el_c), t_cmd)
            elif now >= run.intercept_until:
                run.intercept_until = await self._intercept(plan, now)
            run.refusing.update(False, now)
        except CommandRefused as exc:
            stats.refused_commands += 1
            if run.refusing.update(True, now):
                stats.outcome, stats.reason = "aborted", f"gate keeps refusing: {exc.reason}"
                raise TrackingAborted(f"pass {plan.pass_id}: {stats.reason}", stats) from exc

    def _judge(self, run: _Run, pos: MountPosition, late: float) -> None:
        """Work out this reading's error, switch between streaming and intercepting,
        track acquisition and loss, and publish the sample."""
        plan, stats, cfg = run.plan, run.stats, self.cfg
        paz, pel = plan.point_at(pos.time_s)
        saz, sel = plan.sky_at(pos.time_s)
        a, e = np.asarray(pos.az_deg), np.asarray(pos.el_deg)
        err = float(angle_between_deg(a, e, paz, pel)) * 3600.0
        sky_err = float(angle_between_deg(a, e, saz, sel)) * 3600.0
        stats.ticks += 1
        if not run.program:
            err_deg = err / 3600.0
            if not run.streaming and err_deg < cfg.capture_deg:
                run.streaming = True
            elif run.streaming and err_deg > cfg.recapture_deg:
                run.streaming, run.intercept_until = False, -math.inf
                log.warning("pass %s: %.2f° off the track, intercepting again", plan.pass_id, err_deg)
        acquired = self._acquired(run, pos, err)
        if acquired:
            self._count_error(run, pos, err, sky_err)
        stats.max_lateness_s = max(stats.max_lateness_s, late)
        self._publish(TrackingSample(
            pass_id=plan.pass_id, phase="tracking", time_s=pos.time_s,
            commanded_az_deg=float(paz), commanded_el_deg=float(pel),
            actual_az_deg=pos.az_deg, actual_el_deg=pos.el_deg, error_arcsec=err,
            sky_error_arcsec=sky_err, lateness_s=late, acquired=acquired))

    def _acquired(self, run: _Run, pos: MountPosition, err: float) -> bool:
        """Acquisition: ``acquisition_samples`` readings in a row within the error."""
        stats, cfg = run.stats, self.cfg
        if stats.acquired_at_s is not None:
            return True
        run.under = run.under + 1 if err < cfg.acquisition_error_arcsec else 0
        if run.under < cfg.acquisition_samples:
            return False
        stats.acquired_at_s = pos.time_s
        log.info("pass %s: acquired %.1f s after AOS", run.plan.pass_id, pos.time_s - run.plan.aos_s)
        return True

    def _count_error(self, run: _Run, pos: MountPosition, err: float, sky_err: float) -> None:
        """Error statistics after acquisition; an error held above the loss threshold
        for ``loss_duration_s`` loses the pass."""
        stats, cfg = run.stats, self.cfg
        run.errors.append(err)
        run.sky_errors.append(sky_err)
        n = len(run.errors)
        stats.samples_after_acquisition = n
        # Running statistics, cheap per tick; percentiles at the end.
        prev = stats.rms_error_arcsec
        stats.rms_error_arcsec = math.sqrt((prev * prev * (n - 1) + err * err) / n)
        stats.max_error_arcsec = max(stats.max_error_arcsec, err)
        if run.lost.update(err > cfg.loss_error_deg * 3600.0, pos.time_s):
            stats.outcome = "lost"
            stats.reason = (f"tracking error {err:.0f}\" above {cfg.loss_error_deg:g}° "
                            f"for {cfg.loss_duration_s:g} s")
            _finish(stats, run.errors, run.sky_errors, run.lateness)
            raise TrackingLost(f"pass {run.plan.pass_id}: {stats.reason}", stats)

    async def _intercept(self, plan: TrackPlan, now: float) -> float:
        """Slew to where the satellite will be once the mount can get there; returns the
        time it passes that point (re-plan the intercept after it)."""
        pos = await self.gated.position()
        t_hit = now
        for _ in range(3):
            az, el = plan.point_at(t_hit)
            probe = TrackPlan(plan.pass_id, plan.satellite, np.array([t_hit, t_hit + 1.0]),
                              np.array([float(az)] * 2), np.array([float(el)] * 2),
                              np.zeros(2), np.zeros(2), np.zeros(2), 0.0, "none")
            t_hit = now + 1.2 * self.estimate_slew_s(probe, pos) + 1.0
        t_hit = min(t_hit, plan.los_s)
        az, el = plan.point_at(t_hit)
        await self.gated.slew_to(float(az), float(el))
        return t_hit

    async def _upload_chunk(self, plan: TrackPlan, now: float) -> float:
        """Upload the program track from just before now to ``program_chunk_s`` ahead."""
        t = plan.time_s
        i0 = max(0, int(np.searchsorted(t, now - 1.0, side="right")) - 1)
        i1 = min(len(t), int(np.searchsorted(t, now + self.cfg.program_chunk_s, side="right")) + 1)
        i1 = max(i1, min(len(t), i0 + 2))
        # Keyhole plans are sampled every 0.1 s; 0.5 s is plenty for the controller's
        # interpolation and keeps the gate's per-segment checks short on the event loop.
        step = max(1, int(round(0.5 / max(float(t[1] - t[0]), 1e-3)))) if len(t) > 1 else 1
        idx = list(range(i0, i1, step))
        if idx[-1] != i1 - 1:
            idx.append(i1 - 1)
        pts = [TrackPoint(float(t[i]), float(plan.az_deg[i]), float(plan.el_deg[i])) for i in idx]
        await self.gated.load_track(pts)
        return float(t[i1 - 1]) if i1 < len(t) else math.inf


def _finish(stats: TrackingStats, errors: list[float], sky: list[float], lateness: deque[float]) -> None:
    """The final error and lateness statistics (percentiles, exact RMS) of a pass."""
    if errors:
        arr = np.asarray(errors)
        stats.rms_error_arcsec = float(np.sqrt(np.mean(arr * arr)))
        stats.max_error_arcsec = float(arr.max())
        stats.p95_error_arcsec = float(np.percentile(arr, 95))
        sk = np.asarray(sky)
        stats.rms_sky_error_arcsec = float(np.sqrt(np.mean(sk * sk)))
    if lateness:
        stats.p99_lateness_s = float(np.percentile(np.asarray(lateness), 99))
