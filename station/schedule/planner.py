"""Which passes the station takes, and why every other one is left out.

:func:`plan` predicts the passes of the configured satellites over a window, describes
each (QKD window, Sun, Moon), applies each satellite's constraints, and picks the set of
non-overlapping passes — each pass occupies ``[AOS - lead_time_s, LOS + post_time_s]`` —
that maximises the priority-weighted QKD time ``sum(priority * qkd_duration_s)``
(weighted interval scheduling, solved exactly by dynamic programming). Ties are broken
by a fixed order (busy-interval end, then pass id), so the same input always gives the
same schedule.

Every candidate ends ``scheduled`` or ``rejected`` with a human-readable ``reason``.
Operators force a pass in or out by its id (``<norad>-<AOS YYYYmmddTHHMMSSZ>``; an id
whose AOS is within 2 s of a pass's AOS matches it, so small element refinements do not
orphan an operator's choice). A forced pass is scheduled even if it breaks constraints
(the reason says which); passes overlapping it are rejected.

:func:`plan` is synchronous and CPU-bound (a second or so for a day of a few satellites):
the daemon runs it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import AwareDatetime, BaseModel, Field, field_serializer

from station.config.orbit import PassConstraints
from station.orbit.catalog import Catalog, ElementSet
from station.orbit.passes import PassInfo, _iso, describe_pass, find_passes

if TYPE_CHECKING:
    from station.config.root import StationConfig

__all__ = ["PlanProgress", "PlannedPass", "Schedule", "parse_pass_id", "plan"]

#: Progress of :func:`plan`: (stage "search" or "describe", done, total).
PlanProgress = Callable[[str, int, int], None]

_ID_RE = re.compile(r"^(\d{1,9})-(\d{8}T\d{6}Z)$")
_ID_TOLERANCE_S = 2.0


def parse_pass_id(pass_id: str) -> tuple[int, float]:
    """``(norad_id, AOS clock seconds)`` of a pass id; ValueError naming the expected form."""
    match = _ID_RE.match(pass_id.strip())
    if not match:
        raise ValueError(
            f"pass id {pass_id!r} is not of the form <norad>-<AOS YYYYmmddTHHMMSSZ>, "
            "e.g. 41731-20161219T164844Z"
        )
    aos = datetime.strptime(match.group(2), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return int(match.group(1)), aos.timestamp()


class PlannedPass(PassInfo):
    """A predicted pass with the scheduler's verdict."""

    status: Literal["scheduled", "rejected"] = Field(description="The scheduler's decision.")
    reason: str = Field(description="Why: the first broken constraint, the conflict, or what was gained.")
    violations: list[str] = Field(default_factory=list, description="Every constraint the pass breaks.")
    forced: Literal["include", "exclude"] | None = Field(None, description="Operator override, if any.")
    priority: float = Field(description="Priority of the satellite.")
    weight: float = Field(description="priority * qkd_duration_s: what the scheduler maximises.")
    lead_time_s: float = Field(description="Kept free before AOS.")
    post_time_s: float = Field(description="Kept free after LOS.")
    busy_start: AwareDatetime = Field(description="AOS - lead_time_s.")
    busy_end: AwareDatetime = Field(description="LOS + post_time_s.")

    @field_serializer("busy_start", "busy_end")
    def _ser_busy(self, value: datetime) -> str | None:
        return _iso(value)

    @property
    def busy_start_s(self) -> float:
        return self.busy_start.timestamp()

    @property
    def busy_end_s(self) -> float:
        return self.busy_end.timestamp()


class Schedule(BaseModel):
    """The plan for a window: every candidate pass, sorted by AOS, and the warnings."""

    station_id: str = Field(description="Station the plan is for.")
    site: str = Field(description="Site name.")
    start: AwareDatetime = Field(description="Window start (clock time the plan was made for).")
    end: AwareDatetime = Field(description="Window end.")
    passes: list[PlannedPass] = Field(default_factory=list, description="All candidates, by AOS.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Element ages past the limit, catalog problems, configured satellites without elements.",
    )

    @field_serializer("start", "end")
    def _ser_times(self, value: datetime) -> str | None:
        return _iso(value)

    def scheduled(self) -> list[PlannedPass]:
        """Passes the station will take, in time order."""
        return [p for p in self.passes if p.status == "scheduled"]

    def rejected(self) -> list[PlannedPass]:
        """Passes left out, each with its reason."""
        return [p for p in self.passes if p.status == "rejected"]

    def get(self, pass_id: str) -> PlannedPass | None:
        """The pass with this id (or one whose AOS is within 2 s of it)."""
        return _match(self.passes, pass_id)

    def next_scheduled(self, now_s: float) -> PlannedPass | None:
        """The first scheduled pass whose LOS is still ahead of ``now_s``."""
        return next((p for p in self.scheduled() if p.los_s > now_s), None)


def _match(passes: Iterable[PassInfo], pass_id: str) -> PlannedPass | None:
    try:
        norad, aos_s = parse_pass_id(pass_id)
    except ValueError:
        return None
    best = None
    for p in passes:
        if p.norad_id == norad and abs(p.aos_s - aos_s) <= _ID_TOLERANCE_S:
            if best is None or abs(p.aos_s - aos_s) < abs(best.aos_s - aos_s):
                best = p
    return best  # type: ignore[return-value]


def _fmt_el(value: float) -> str:
    return f"{value:+.1f}°"


def _violations(
    info: PassInfo, c: PassConstraints, gate_sun_exclusion_deg: float = 0.0
) -> list[str]:
    out = []
    if info.sun_el_deg > c.max_sun_el_deg:
        out.append(f"daylight: sun at {_fmt_el(info.sun_el_deg)} (limit {_fmt_el(c.max_sun_el_deg)})")
    if info.max_el_deg < c.min_peak_el_deg:
        out.append(f"low: peak elevation {info.max_el_deg:.1f}° below the minimum {c.min_peak_el_deg:g}°")
    if info.qkd_duration_s <= 0:
        limit = f"{c.qkd_min_el_deg:g}°" + (
            f" within {c.qkd_max_range_km:g} km" if c.qkd_max_range_km is not None else ""
        )
        out.append(f"no QKD window: never above {limit}")
    elif info.qkd_duration_s < c.min_qkd_s:
        out.append(f"short: QKD window {info.qkd_duration_s:.0f} s, minimum {c.min_qkd_s:g} s")
    # The Sun is checked at every point, up or not, like the mount's safety gate does: a
    # pass the gate would refuse to track must not be scheduled.
    sun_limit = max(c.sun_exclusion_deg, gate_sun_exclusion_deg)
    if info.sun_min_sep_deg < sun_limit:
        who = "safety gate" if gate_sun_exclusion_deg > c.sun_exclusion_deg else "exclusion"
        out.append(f"sun: line of sight {info.sun_min_sep_deg:.1f}° from the Sun ({who} {sun_limit:g}°)")
    if info.moon_min_sep_up_deg is not None and info.moon_min_sep_up_deg < c.moon_exclusion_deg:
        out.append(
            f"moon: line of sight {info.moon_min_sep_up_deg:.1f}° from the Moon "
            f"(exclusion {c.moon_exclusion_deg:g}°)"
        )
    if c.require_satellite_in_shadow and info.qkd_sunlit:
        out.append("sunlit: the satellite is in sunlight during the QKD window")
    return out


def _overlaps(a: PlannedPass, b: PlannedPass) -> bool:
    return a.busy_start_s < b.busy_end_s and b.busy_start_s < a.busy_end_s


def _best_subset(cands: list[PlannedPass]) -> set[str]:
    """Weighted interval scheduling: the non-overlapping subset of largest total weight."""
    order = sorted(cands, key=lambda p: (p.busy_end_s, p.pass_id))
    ends = [p.busy_end_s for p in order]
    n = len(order)
    best = [0.0] * (n + 1)
    take = [False] * n
    prev = [0] * n
    for i, p in enumerate(order):
        # Number of passes (in order) ending at or before this one's start.
        prev[i] = bisect.bisect_right(ends, p.busy_start_s)
        prev[i] = min(prev[i], i)
        with_it = p.weight + best[prev[i]]
        # Strictly better to take it; on a tie keep the earlier choice (determinism).
        take[i] = with_it > best[i] + 1e-9
        best[i + 1] = with_it if take[i] else best[i]
    chosen: set[str] = set()
    i = n
    while i > 0:
        if take[i - 1]:
            chosen.add(order[i - 1].pass_id)
            i = prev[i - 1]
        else:
            i -= 1
    return chosen


def _conflict_reason(p: PlannedPass, blocker: PlannedPass, forced: bool = False) -> str:
    when = f"{blocker.aos:%Y-%m-%dT%H:%M:%SZ}"
    if forced:
        why = "forced by operator"
    elif blocker.priority > p.priority:
        why = "higher priority"
    elif blocker.weight > p.weight:
        why = "more priority-weighted QKD time"
    else:
        why = "together with its neighbours it gives more QKD time"
    return f"conflict with {blocker.satellite} {when} ({why})"


def plan(
    cfg: StationConfig,
    catalog: Catalog,
    start_s: float,
    hours: float,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    *,
    progress: PlanProgress | None = None,
) -> Schedule:
    """Predict, describe, constrain and schedule the passes of ``[start_s, start_s + hours]``.

    ``include``/``exclude`` are operator pass ids, added to ``cfg.schedule.force_include``
    / ``force_exclude``. Synchronous; run it off the event loop.
    """
    end_s = start_s + hours * 3600.0
    sched_cfg = cfg.schedule
    include_ids = list(dict.fromkeys([*sched_cfg.force_include, *include]))
    exclude_ids = list(dict.fromkeys([*sched_cfg.force_exclude, *exclude]))
    warnings = list(catalog.last_report.problems)
    warnings += catalog.warnings(start_s)
    for pid in [*include_ids, *exclude_ids]:
        try:
            parse_pass_id(pid)
        except ValueError as exc:
            warnings.append(str(exc))

    snapshot = catalog.snapshot()
    sets: list[ElementSet] = []
    if cfg.orbit.satellites:
        for sc in cfg.orbit.satellites:
            if not sc.enabled:
                continue
            es = snapshot.get(sc.norad_id)
            if es is None:
                warnings.append(
                    f"{sc.name or sc.norad_id} ({sc.norad_id}) is configured but no element source has "
                    "elements for it; add them (`qkd-station tle update SOURCE`)"
                )
            else:
                sets.append(es)
    else:
        sets = list(snapshot.values())

    search = find_passes(
        sets, cfg.site, start_s, end_s, step_s=sched_cfg.search_step_s,
        progress=(lambda done, total: progress("search", done, total)) if progress else None,
    )
    warnings += search.problems
    by_norad = {es.norad_id: es for es in sets}

    gate_sun_deg = float(cfg.safety.sun_exclusion_deg)
    candidates: list[PlannedPass] = []
    for n_done, ev in enumerate(search.passes):
        if progress is not None:
            progress("describe", n_done, len(search.passes))
        es = by_norad[ev.norad_id]
        sat_cfg = cfg.orbit.satellite(ev.norad_id)
        c = sched_cfg.for_satellite(sat_cfg)
        info, _track = describe_pass(
            es, cfg.site, ev, qkd_min_el_deg=c.qkd_min_el_deg, qkd_max_range_km=c.qkd_max_range_km
        )
        if sat_cfg is not None and sat_cfg.name:
            info.satellite = sat_cfg.name
        violations = _violations(info, c, gate_sun_deg)
        if info.qkd_end is not None and info.qkd_end.timestamp() <= start_s:
            violations.insert(0, "over: the QKD window ended before the plan start")
        priority = sat_cfg.priority if sat_cfg else 1.0
        candidates.append(PlannedPass(
            **info.model_dump(),
            status="rejected",
            reason="",
            violations=violations,
            priority=priority,
            weight=round(priority * info.qkd_duration_s, 3),
            lead_time_s=c.lead_time_s,
            post_time_s=c.post_time_s,
            busy_start=datetime.fromtimestamp(ev.aos_s - c.lead_time_s, tz=UTC),
            busy_end=datetime.fromtimestamp(ev.los_s + c.post_time_s, tz=UTC),
        ))

    if progress is not None:
        progress("describe", len(search.passes), len(search.passes))
    for pid in exclude_ids:
        p = _match(candidates, pid)
        if p is None:
            warnings.append(f"force_exclude {pid}: no pass with that id in this window")
        else:
            p.forced = "exclude"
    for pid in include_ids:
        p = _match(candidates, pid)
        if p is None:
            warnings.append(f"force_include {pid}: no pass with that id in this window")
        elif p.forced == "exclude":
            warnings.append(f"{p.pass_id} is both force-included and force-excluded; excluding it")
        else:
            p.forced = "include"

    # Forced passes first, the heavier first when two of them collide.
    forced = sorted((p for p in candidates if p.forced == "include"), key=lambda p: (-p.weight, p.pass_id))
    taken: list[PlannedPass] = []
    for p in forced:
        blocker = next((q for q in taken if _overlaps(p, q)), None)
        if blocker is not None:
            p.reason = _conflict_reason(p, blocker, forced=True)
            continue
        p.status = "scheduled"
        p.reason = "forced by operator" + (f" (overrides {'; '.join(p.violations)})" if p.violations else "")
        taken.append(p)

    free: list[PlannedPass] = []
    for p in candidates:
        if p.forced == "include":
            continue
        if p.forced == "exclude":
            p.reason = "excluded by operator"
        elif p.violations:
            p.reason = p.violations[0]
        else:
            blocker = next((q for q in taken if _overlaps(p, q)), None)
            if blocker is not None:
                p.reason = _conflict_reason(p, blocker, forced=True)
            else:
                free.append(p)

    chosen = _best_subset(free)
    for p in free:
        if p.pass_id in chosen:
            p.status = "scheduled"
            p.reason = f"QKD window {p.qkd_duration_s:.0f} s x priority {p.priority:g}"
            taken.append(p)
    for p in free:
        if p.status != "scheduled":
            clashes = [q for q in taken if _overlaps(p, q)]
            if clashes:
                blocker = max(clashes, key=lambda q: (q.priority, q.weight, q.pass_id))
                p.reason = _conflict_reason(p, blocker)
            else:  # only a zero-weight pass can be left out without a conflict
                p.reason = "no priority-weighted QKD time to gain"

    candidates.sort(key=lambda p: (p.aos_s, p.norad_id))
    return Schedule(
        station_id=cfg.station_id,
        site=cfg.site.name,
        start=datetime.fromtimestamp(start_s, tz=UTC),
        end=datetime.fromtimestamp(end_s, tz=UTC),
        passes=candidates,
        warnings=warnings,
    )
