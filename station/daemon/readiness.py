"""Readiness checks run in ``prepare`` before each pass.

Each check gives a :class:`CheckResult`; its policy (``blocking``, ``warning``, ``off``)
comes from ``[operations.readiness]``. A failed blocking check skips the pass.
"""

from __future__ import annotations

import shutil
from typing import Literal

from pydantic import BaseModel, Field

from station.daemon.alarms import Severity
from station.daemon.context import StationContext
from station.files import make_dirs
from station.orbit.passes import PassInfo

#: Bytes one detection takes in a pass file before compression (int64 + uint8).
BYTES_PER_EVENT = 9


class CheckResult(BaseModel):
    """One readiness check's result, as reported and published."""

    name: str = Field(description="Check name, e.g. 'time_reference_locked'.")
    policy: Literal["blocking", "warning"] = Field(description="What a failure does.")
    ok: bool = Field(description="Passed.")
    detail: str = Field(description="What was found, in words.")


def expected_pass_bytes(ctx: StationContext, duration_s: float) -> int:
    """Upper estimate of a pass file: assumed event rate × duration × raw record size."""
    rate_hz = ctx.cfg.operations.faults.expected_event_rate_hz
    return int(rate_hz * max(duration_s, 0.0) * BYTES_PER_EVENT)


def free_disk_bytes(ctx: StationContext) -> int:
    path = ctx.cfg.state_dir
    make_dirs(path)
    return shutil.disk_usage(path).free


async def run_checks(ctx: StationContext, entry: PassInfo) -> list[CheckResult]:
    """Every configured check, in a fixed order."""
    pol = ctx.cfg.operations.readiness
    results: list[CheckResult] = []

    def add(name: str, ok: bool, detail: str) -> None:
        policy = getattr(pol, name)
        if policy != "off":
            results.append(CheckResult(name=name, policy=policy, ok=ok, detail=detail))

    if pol.drivers_connected != "off":
        for name in ("mount", "timetagger"):
            if not ctx.links[name].connected:
                await ctx.connect(name)
        down = [f"{n}: {ctx.links[n].detail}" for n in ("mount", "timetagger")
                if not ctx.links[n].connected]
        add("drivers_connected", not down, "; ".join(down) or "mount and time tagger connected")

    if pol.time_reference_locked != "off":
        if ctx.timeref is None:
            add("time_reference_locked", True, "no time reference configured")
        else:
            if not ctx.links["time_reference"].connected:
                await ctx.connect("time_reference")
            ready = await ctx.timeref.ready()
            add("time_reference_locked", bool(ready.ok), ready.reason or "locked")

    if pol.beacon_laser_ready != "off":
        if ctx.laser is None:
            add("beacon_laser_ready", True, "no beacon laser configured")
        else:
            if not ctx.links["beacon_laser"].connected:
                await ctx.connect("beacon_laser")
            ready = await ctx.laser.ready()
            add("beacon_laser_ready", bool(ready.ok), ready.reason or "ready")

    if pol.element_age != "off":
        limit = ctx.cfg.orbit.max_element_age_days
        elements = ctx.catalog.get(entry.norad_id)
        if elements is None:
            add("element_age", False, f"no elements for NORAD {entry.norad_id} in the catalog")
        else:
            age = elements.age_days(ctx.clock.now_s())
            add("element_age", age <= limit,
                f"elements of {entry.satellite} are {age:.2f} days old (limit {limit:g})")

    if pol.free_disk != "off":
        need = expected_pass_bytes(ctx, entry.qkd_duration_s or entry.duration_s)
        reserve = int(ctx.cfg.operations.faults.min_free_disk_mb * 1e6)
        free = free_disk_bytes(ctx)
        add("free_disk", free >= need + reserve,
            f"{free / 1e9:.2f} GB free for an expected {need / 1e6:.0f} MB pass file "
            f"plus {reserve / 1e6:.0f} MB reserve")

    if pol.stream_consumer != "off":
        connected = ctx.pipeline.consumer_connected
        add("stream_consumer", connected,
            "a post-processing consumer is connected" if connected
            else "no post-processing consumer connected; events are kept in the pass file")
    return results


def blocking_failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok and r.policy == "blocking"]


def alarm_results(ctx: StationContext, pass_id: str, results: list[CheckResult]) -> None:
    """Raise an alarm per failed check (critical when blocking) and clear those passing."""
    for r in results:
        key = f"readiness.{r.name}"
        if r.ok:
            ctx.alarms.clear(key, f"{r.name}: {r.detail}")
        else:
            sev = Severity.CRITICAL if r.policy == "blocking" else Severity.WARNING
            ctx.alarms.raise_(key, sev, f"{r.name}: {r.detail}", pass_id=pass_id)
