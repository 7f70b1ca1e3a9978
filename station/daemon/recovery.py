"""Crash recovery: what the state file left by the previous run says, and what follows.

:func:`recover` reads the state file once at start-up and returns a :class:`Recovery`:
the mode to start in, the passes already done, and (when the daemon died during a pass
whose QKD window is still open) the segment to resume. Along the way it closes the
interrupted segment's pass file, raises ``pass.interrupted`` and publishes the segment's
and the whole pass's summaries. The supervisor saves the state and starts the resume.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from station.daemon.alarms import Severity
from station.daemon.context import StationContext
from station.daemon.joining import MIN_USEFUL_WINDOW_S
from station.daemon.modes import Mode, Outcome, Phase
from station.daemon.publisher import Publisher
from station.daemon.record import (
    Cause,
    SegmentState,
    pass_summary,
    segment_from_file,
    segment_summary,
)
from station.daemon.statefile import PassState, StationState, stamp
from station.events import passfile
from station.utc import log_time

log = logging.getLogger("station.supervisor")


@dataclass
class Resume:
    """A pass to take up again in a new segment."""

    current: PassState
    segment: int
    earlier: list[SegmentState]


@dataclass
class Recovery:
    """What start-up found: the state to save, the mode, passes done, a resume if any."""

    state: StationState
    mode_reason: str = ""
    done: dict[str, Outcome] = field(default_factory=dict)
    resume: Resume | None = None


def stream_stem(pass_id: str, segment: int) -> str:
    """The stream and file name of a pass's segment: the pass id, then ``-s<n>`` from 2."""
    return pass_id if segment == 1 else f"{pass_id}-s{segment}"




def _start_mode(saved: StationState, start_mode: Mode) -> tuple[Mode, str]:
    if saved.mode == Mode.SAFE:
        return Mode.SAFE, "safe mode kept from before the restart"
    if saved.mode != Mode.AUTO:
        return saved.mode, ""
    return start_mode, ""


async def recover(ctx: StationContext, saved: StationState | None, start_mode: Mode,
                  publisher: Publisher) -> Recovery:
    """Deal with what the previous run's state file ``saved`` says (None: no file)."""
    now = ctx.clock.now()
    if saved is None:
        return Recovery(StationState(mode=start_mode, updated=now))
    mode, reason = _start_mode(saved, start_mode)
    idle = stamp(saved, now, clean_shutdown=False, mode=mode, phase=Phase.IDLE, current_pass=None)
    out = Recovery(idle, mode_reason=reason)
    cur = saved.current_pass
    if saved.clean_shutdown or cur is None or saved.phase == Phase.IDLE:
        return out
    side = passfile.read_sidecar(Path(cur.pass_file)) if cur.pass_file else None
    if side is not None and side.get("state") == "closed":
        # The pass did end (its file is closed, its summary went out) and only the
        # state file missed the news, e.g. on a full disk: not an interruption.
        outcome = (side.get("totals") or {}).get("outcome") or Outcome.COMPLETED.value
        log.warning("state file says %s of pass %s, but its file %s was closed (%s): "
                    "the pass had ended", saved.phase.value, cur.pass_id, cur.pass_file, outcome)
        try:
            out.done[cur.pass_id] = Outcome(outcome)
        except ValueError:
            out.done[cur.pass_id] = Outcome.ABORTED
        return out
    await _interrupted(ctx, saved, cur, mode, out, publisher)
    return out


async def _interrupted(ctx: StationContext, saved: StationState, cur: PassState, mode: Mode,
                       out: Recovery, publisher: Publisher) -> None:
    """The daemon died in the middle of a pass: close its segment, decide on a resume."""
    detail = f"the daemon stopped during {saved.phase.value} of pass {cur.pass_id}"
    seg, satellite = await _interrupted_segment(ctx, cur, saved.updated, detail)
    detail = seg.reason
    ctx.alarms.raise_("pass.interrupted", Severity.WARNING, detail, pass_id=cur.pass_id)
    now_s = ctx.clock.now_s()
    segments = [*cur.earlier_segments, seg]
    if now_s < saved.updated.timestamp():
        # The clock is before the state file's last entry: a simulated night started
        # over. The pass is ahead again, not interrupted in progress.
        log.warning("%s; the clock (%s) is before that, so the pass will be taken "
                    "afresh when it comes", detail, log_time(ctx.clock.now()))
    elif (ctx.cfg.operations.resume_after_crash and mode == Mode.AUTO
            and cur.qkd_end.timestamp() - MIN_USEFUL_WINDOW_S > now_s):
        # The runner checks again once it knows how long joining the track takes.
        out.resume = Resume(cur, cur.segment + 1, segments)
        log.warning("%s; resuming in segment %d while the QKD window is open",
                    detail, cur.segment + 1)
    else:
        out.done[cur.pass_id] = Outcome.INTERRUPTED
        log.warning("%s; the QKD window is over, not resuming", detail)
    name = satellite or satellite_name(ctx, cur.norad_id)
    window = (cur.qkd_start.timestamp(), cur.qkd_end.timestamp())
    # The interrupted segment's summary (if the pass has or will have several) and the
    # whole pass's, as known now (replaced when a resumed segment ends).
    if out.resume is not None or len(segments) > 1:
        publisher.publish_summary(segment_summary(
            cur.pass_id, name, cur.norad_id, cur.aos, cur.los, window, segments[-1]))
    publisher.publish_summary(pass_summary(
        cur.pass_id, name, cur.norad_id, cur.aos, cur.los, window, segments))


async def _interrupted_segment(ctx: StationContext, cur: PassState, last_saved: datetime,
                               detail: str) -> tuple[SegmentState, str | None]:
    """Close the interrupted segment's file and say what it holds, from the file; with the
    satellite's name the file gives (None without a file)."""
    started = cur.phase_times.get(Phase.PREPARE.value)
    if not cur.pass_file:
        return SegmentState(
            segment=cur.segment, stream_pass_id=stream_stem(cur.pass_id, cur.segment),
            outcome=Outcome.INTERRUPTED, reason=f"{detail}; no pass file was open yet",
            started_at=started, ended_at=last_saved), None
    info = await asyncio.to_thread(ctx.pipeline.recover_interrupted, cur.pass_file)
    seg, satellite = await asyncio.to_thread(
        segment_from_file, cur.pass_file, segment=cur.segment, outcome=Outcome.INTERRUPTED,
        reason=f"{detail}; pass file {cur.pass_file}: {info}", started_at=started,
        fallback_end=last_saved, site=ctx.cfg.site)
    # The window from the last batch on disk to now went unrecorded: the daemon was down.
    end_s = seg.ended_at.timestamp() if seg.ended_at else last_saved.timestamp()
    seg.causes.append(Cause(start_s=end_s, end_s=max(end_s, ctx.clock.now_s()), cause=(
        f"the daemon stopped during segment {cur.segment} (last batch on disk "
        f"{log_time(seg.ended_at)}) and was restarted at {log_time(ctx.clock.now())}")))
    return seg, satellite


def satellite_name(ctx: StationContext, norad_id: int) -> str:
    """The name passes carry: the config's, else the element set's, else the number."""
    for sat in ctx.cfg.orbit.satellites:
        if sat.norad_id == norad_id and sat.name:
            return sat.name
    for age in ctx.catalog.ages(ctx.clock.now_s()):
        if age.norad_id == norad_id:
            return age.name
    return str(norad_id)
