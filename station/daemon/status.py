"""Pure builders of the state, schedule and health messages.

Each function reads what it is given and returns a message: no alarm is raised, no flag
is set, nothing is measured here (the disk is measured by
:class:`station.daemon.disk.DiskMonitor`, the time reference by the supervisor's loop).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime

from station import __version__
from station.clock import from_epoch_s
from station.daemon.context import StationContext
from station.daemon.disk import DiskReading
from station.daemon.modes import Mode, Outcome, Phase
from station.mqtt.messages import (
    TRANSITION_REASON_MAX,
    ConfigSummary,
    DriverHealth,
    ElementAge,
    HealthMessage,
    PassDecision,
    PassRef,
    PhaseTransition,
    ScheduledPass,
    ScheduleMessage,
    StateMessage,
)
from station.orbit.passes import PassInfo
from station.schedule import PlannedPass, Schedule


@dataclass(frozen=True)
class StationView:
    """What the state message says about the station's own situation."""

    mode: Mode
    phase: Phase
    mode_reason: str
    started_s: float
    current: PlannedPass | None
    next: PlannedPass | None


def pass_ref(p: PlannedPass | None) -> PassRef | None:
    """The short reference to a pass that state messages carry."""
    if p is None:
        return None
    return PassRef(pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id,
                   aos=p.aos, tca=p.tca, los=p.los, max_el_deg=p.max_el_deg)


def state_message(ctx: StationContext, view: StationView) -> StateMessage:
    """``state``: mode, phase, current and next pass, and the config in brief."""
    cfg, clock = ctx.cfg, ctx.clock
    now = clock.now()
    return StateMessage(
        time=now, station_id=cfg.station_id, daemon_version=__version__,
        started_at=from_epoch_s(view.started_s),
        uptime_s=max(0.0, now.timestamp() - view.started_s),
        mode=view.mode, phase=view.phase,
        current_pass=pass_ref(view.current), next_pass=pass_ref(view.next),
        config=ConfigSummary(
            station_name=cfg.site.name, latitude_deg=cfg.site.latitude_deg,
            longitude_deg=cfg.site.longitude_deg, height_m=cfg.site.height_m,
            clock_source=clock.source,
            clock_speed=None if clock.source == "real" or math.isinf(clock.speed)
            else clock.speed,
            mount_backend=cfg.mount.backend, timetagger_backend=cfg.timetagger.backend),
        message=view.mode_reason)


def _decision(p: PlannedPass, done: Mapping[str, Outcome],
              exclude: Set[str]) -> tuple[PassDecision, str]:
    if p.pass_id in done:
        return PassDecision.DONE, done[p.pass_id].value
    if p.forced == "exclude" or p.pass_id in exclude:
        return PassDecision.EXCLUDED, p.reason
    if p.status == "scheduled":
        return (PassDecision.INCLUDED if p.forced == "include" else PassDecision.PLANNED), p.reason
    return PassDecision.SKIPPED, p.reason


def schedule_message(ctx: StationContext, schedule: Schedule | None,
                     done: Mapping[str, Outcome], exclude: Set[str]) -> ScheduleMessage:
    """``schedule``: every pass of the plan with what the station decided about it."""
    passes = []
    for p in (schedule.passes if schedule else []):
        decision, reason = _decision(p, done, exclude)
        passes.append(ScheduledPass(
            pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id, aos=p.aos,
            tca=p.tca, los=p.los, max_el_deg=p.max_el_deg, decision=decision,
            reason=reason, priority=p.priority))
    return ScheduleMessage(time=ctx.clock.now(), horizon_end=schedule.end if schedule else None,
                           passes=passes)


def health_message(ctx: StationContext, disk: DiskReading,
                   timeref_locked: bool | None) -> HealthMessage:
    """``health``: links, element ages, disk, time reference, stream consumer."""
    drivers = [DriverHealth(name=k.name, connected=k.connected, detail=k.detail)
               for k in ctx.links.values()]
    elements = [ElementAge(norad_id=a.norad_id, satellite=a.name, epoch=a.epoch,
                           age_days=a.age_days) for a in ctx.catalog.ages(ctx.clock.now_s())]
    ok = (all(k.connected for k in ctx.links.values()) and not disk.full
          and disk.free_bytes is not None and timeref_locked is not False)
    return HealthMessage(
        time=ctx.clock.now(), drivers=drivers, elements=elements,
        disk_free_bytes=disk.free_bytes, expected_pass_bytes=disk.expected_pass_bytes,
        time_reference_locked=timeref_locked,
        stream_consumer_connected=ctx.pipeline.consumer_connected, ok=ok)


def transition_message(now: datetime, entry: PassInfo, segment: int, previous: Phase,
                       phase: Phase, mode: Mode, reason: str) -> PhaseTransition:
    """The ``transitions`` message of a pass entering ``phase`` (the reason cut to length)."""
    return PhaseTransition(
        time=now, pass_id=entry.pass_id, satellite=entry.satellite, segment=segment,
        from_phase=previous, to_phase=phase, mode=mode, reason=reason[:TRANSITION_REASON_MAX])
