"""The true record of a pass: its segments, the window they covered and what was lost.

A pass may be recorded in several segments (the daemon died and resumed it). Each segment
ends with a :class:`SegmentState`: its outcome, its counts and the parts of the QKD window
it recorded *usefully* (batches in the file while the pointing was within the tracking
error limit). :func:`pass_summary` adds the segments up into the whole pass's summary: the
window seconds lost and each gap with its cause. :func:`segment_from_file` rebuilds a
segment from its pass file after a crash, so an interrupted segment says what is on disk.

Times here are clock seconds (Unix epoch, UTC) in ``(start_s, end_s)`` spans.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import AwareDatetime, BaseModel, Field

from station.clock import from_epoch_s
from station.daemon.modes import Outcome
from station.mqtt.messages import PassSummary, SegmentBrief, TrackingErrorStats, WindowGap

log = logging.getLogger("station.record")

#: A pass that ran to its end but lost more than this share of its QKD window (not
#: recorded, or recorded with the pointing above the tracking error limit) is ``degraded``.
DEGRADED_WINDOW_LOSS_FRACTION = 0.05

#: Gaps shorter than this (clock seconds) are rounding between batches, not losses.
_MIN_GAP_S = 1e-3

Span = tuple[float, float]


# -- spans --------------------------------------------------------------------------------
def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-overlapping spans covering the same time (touching spans joined)."""
    out: list[list[float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in spans if b > a):
        if out and a <= out[-1][1] + _MIN_GAP_S:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def clip(spans: Iterable[Span], lo: float, hi: float) -> list[Span]:
    return merge((max(a, lo), min(b, hi)) for a, b in spans)


def subtract(spans: Iterable[Span], cuts: Iterable[Span]) -> list[Span]:
    """``spans`` minus ``cuts``."""
    out = merge(spans)
    for c0, c1 in merge(cuts):
        nxt: list[Span] = []
        for a, b in out:
            if c1 <= a or c0 >= b:
                nxt.append((a, b))
                continue
            if a < c0:
                nxt.append((a, c0))
            if c1 < b:
                nxt.append((c1, b))
        out = nxt
    return out


def total_s(spans: Iterable[Span]) -> float:
    return float(sum(b - a for a, b in merge(spans)))


# -- one segment ----------------------------------------------------------------------------
class Cause(BaseModel):
    """A span of clock time with a known reason why it yielded nothing usable."""

    start_s: float
    end_s: float
    cause: str


class SegmentState(BaseModel):
    """What one segment amounted to; kept in the state file until the pass is over."""

    segment: int
    stream_pass_id: str
    outcome: Outcome
    reason: str = ""
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    events_recorded: int = 0
    events_lost: int = 0
    counts_by_channel: dict[str, int] = Field(default_factory=dict)
    file_path: str | None = None
    max_el_deg: float | None = None
    alarms_raised: int = 0
    tracking: TrackingErrorStats | None = None
    #: Clock spans of the QKD window recorded with the pointing within the limit.
    good_s: list[Span] = Field(default_factory=list)
    #: Events recorded in those spans (the rate the gaps are estimated at).
    good_events: int | None = None
    #: Known causes of lost window time (tracking error, stall, join delay, disk).
    causes: list[Cause] = Field(default_factory=list)

    def brief(self, window: Span) -> SegmentBrief:
        return SegmentBrief(
            segment=self.segment, stream_pass_id=self.stream_pass_id, outcome=self.outcome,
            reason=self.reason, started_at=self.started_at, ended_at=self.ended_at,
            events_recorded=self.events_recorded, events_lost=self.events_lost,
            window_recorded_s=round(total_s(clip(self.good_s, *window)), 3),
            file_path=self.file_path)


def window_gaps(window: Span, segments: list[SegmentState]) -> list[WindowGap]:
    """The parts of ``window`` no segment recorded usefully, each with its likeliest cause."""
    lo, hi = window
    good = merge(s for seg in segments for s in seg.good_s)
    holes = subtract([(lo, hi)], good)
    spans = [(seg, seg.started_at.timestamp() if seg.started_at else None,
              seg.ended_at.timestamp() if seg.ended_at else None) for seg in segments]
    gaps = []
    for a, b in holes:
        if b - a < _MIN_GAP_S:
            continue
        gaps.append(WindowGap(start=from_epoch_s(a), end=from_epoch_s(b),
                              duration_s=round(b - a, 3), cause=_cause(a, b, segments, spans)))
    return gaps


def _cause(a: float, b: float, segments: list[SegmentState],
           spans: list[tuple[SegmentState, float | None, float | None]]) -> str:
    # The known cause that overlaps the gap most.
    best, best_overlap = None, 0.0
    for seg in segments:
        for c in seg.causes:
            overlap = min(b, c.end_s) - max(a, c.start_s)
            if overlap > best_overlap:
                best, best_overlap = c.cause, overlap
    if best is not None:
        return best
    first_good = min((seg.good_s[0][0] for seg in segments if seg.good_s), default=None)
    if first_good is not None and b <= first_good + _MIN_GAP_S:
        return "before acquisition started"
    for (prev, _, prev_end), (nxt, nxt_start, _) in zip(spans, spans[1:], strict=False):
        if prev_end is not None and nxt_start is not None and prev_end - 1.0 <= a and b <= nxt_start + 600:
            return (f"between segments {prev.segment} ({prev.outcome.value}) and {nxt.segment}: "
                    "the daemon was down or re-joining the track")
    last = segments[-1] if segments else None
    if last is not None and last.outcome == Outcome.INTERRUPTED and (
            last.ended_at is None or a >= last.ended_at.timestamp() - 1.0):
        return f"after segment {last.segment} was interrupted (not resumed)"
    return "nothing recorded"


def _window_figures(window: Span, segments: list[SegmentState]
                    ) -> tuple[float, float, float, list[WindowGap], int | None]:
    lo, hi = window
    window_s = max(0.0, hi - lo)
    gaps = window_gaps(window, segments)
    lost_s = min(window_s, sum(g.duration_s for g in gaps))
    good_s = window_s - lost_s
    # Events per usable second: what the gaps would have held. Events recorded while the
    # pointing was off do not count (they are the link's failure, not its rate).
    recorded = sum(seg.events_recorded if seg.good_events is None else seg.good_events
                   for seg in segments)
    estimate = round(recorded / good_s * lost_s) if good_s > 1.0 and recorded else None
    return window_s, lost_s, (lost_s / window_s if window_s > 0 else 0.0), gaps, estimate


def degraded(outcome: Outcome, reason: str, window: Span, segments: list[SegmentState]
             ) -> tuple[Outcome, str]:
    """``completed`` becomes ``degraded`` when more than the stated share of the window
    was lost; the reason says how much and why."""
    window_s, lost_s, share, gaps, _ = _window_figures(window, segments)
    if outcome != Outcome.COMPLETED or share <= DEGRADED_WINDOW_LOSS_FRACTION:
        return outcome, reason
    # The causes in order of the time they cost; slivers (a batch boundary) left out.
    weight = {c: sum(g.duration_s for g in gaps if g.cause == c) for c in {g.cause for g in gaps}}
    causes = [c for c in sorted(weight, key=lambda c: -weight[c]) if weight[c] >= 0.5] \
        or sorted(weight, key=lambda c: -weight[c])
    text = (f"{lost_s:.1f} s ({100 * share:.1f} %) of the {window_s:.0f} s QKD window lost "
            f"(more than {100 * DEGRADED_WINDOW_LOSS_FRACTION:g} %): {'; '.join(causes)}")
    return Outcome.DEGRADED, text if not reason else f"{reason}; {text}"


def segment_summary(pass_id: str, satellite: str, norad_id: int, planned_aos: datetime,
                    planned_los: datetime, window: Span, seg: SegmentState) -> PassSummary:
    """The summary of one segment alone (``passes/<pass_id>-s<N>/summary``)."""
    start = max(window[0], seg.started_at.timestamp()) if seg.started_at else window[0]
    own = (min(start, window[1]), window[1])
    window_s, lost_s, share, gaps, estimate = _window_figures(own, [seg])
    return PassSummary(
        pass_id=f"{pass_id}-s{seg.segment}", satellite=satellite, norad_id=norad_id,
        outcome=seg.outcome, reason=seg.reason, segment=seg.segment, planned_aos=planned_aos,
        planned_los=planned_los, started_at=seg.started_at, ended_at=seg.ended_at,
        max_el_deg=seg.max_el_deg, counts_by_channel=seg.counts_by_channel,
        events_recorded=seg.events_recorded, events_lost=seg.events_lost,
        tracking_error=seg.tracking, file_path=seg.file_path, alarms_raised=seg.alarms_raised,
        window_s=round(window_s, 3), window_lost_s=round(lost_s, 3),
        window_lost_fraction=round(share, 4), events_lost_in_gaps_estimate=estimate,
        segments=[seg.brief(own)], gaps=gaps)


def combined_outcome(window: Span, segments: list[SegmentState]) -> tuple[Outcome, str]:
    """The whole pass's outcome from its segments'."""
    if len(segments) == 1:
        return segments[0].outcome, segments[0].reason
    last = segments[-1]
    aborted = [s for s in segments if s.outcome == Outcome.ABORTED]
    if aborted:
        return Outcome.ABORTED, f"segment {aborted[0].segment}: {aborted[0].reason}"
    interrupted = [s.segment for s in segments if s.outcome == Outcome.INTERRUPTED]
    if last.outcome in (Outcome.INTERRUPTED, Outcome.SKIPPED):
        return Outcome.INTERRUPTED, (f"interrupted in segment(s) {interrupted}; "
                                     f"last segment {last.segment} {last.outcome.value}: {last.reason}")
    window_s, lost_s, share, gaps, _ = _window_figures(window, segments)
    return Outcome.DEGRADED, (
        f"interrupted in segment(s) {interrupted} and resumed; {lost_s:.1f} s "
        f"({100 * share:.1f} %) of the {window_s:.0f} s QKD window not usefully recorded")


def pass_summary(pass_id: str, satellite: str, norad_id: int, planned_aos: datetime,
                 planned_los: datetime, window: Span, segments: list[SegmentState]) -> PassSummary:
    """The whole pass (``passes/<pass_id>/summary``): every segment and every gap."""
    if not segments:
        raise ValueError("a pass summary needs at least one segment")
    outcome, reason = combined_outcome(window, segments)
    window_s, lost_s, share, gaps, estimate = _window_figures(window, segments)
    counts: dict[str, int] = {}
    for seg in segments:
        for k, v in seg.counts_by_channel.items():
            counts[k] = counts.get(k, 0) + v
    els = [s.max_el_deg for s in segments if s.max_el_deg is not None]
    tracked = [s.tracking for s in segments if s.tracking is not None]
    last = segments[-1]
    return PassSummary(
        pass_id=pass_id, satellite=satellite, norad_id=norad_id, outcome=outcome,
        reason=reason, segment=None, planned_aos=planned_aos, planned_los=planned_los,
        started_at=segments[0].started_at, ended_at=last.ended_at,
        max_el_deg=max(els) if els else None, counts_by_channel=counts,
        events_recorded=sum(s.events_recorded for s in segments),
        events_lost=sum(s.events_lost for s in segments),
        tracking_error=_worst(tracked), file_path=last.file_path,
        alarms_raised=sum(s.alarms_raised for s in segments),
        window_s=round(window_s, 3), window_lost_s=round(lost_s, 3),
        window_lost_fraction=round(share, 4), events_lost_in_gaps_estimate=estimate,
        segments=[s.brief(window) for s in segments], gaps=gaps)


def _worst(stats: list[TrackingErrorStats]) -> TrackingErrorStats | None:
    if not stats:
        return None
    if len(stats) == 1:
        return stats[0]
    n = sum(s.samples for s in stats)
    rms = float(np.sqrt(sum(s.rms_arcsec ** 2 * s.samples for s in stats) / n)) if n else 0.0
    return TrackingErrorStats(rms_arcsec=rms, p95_arcsec=max(s.p95_arcsec for s in stats),
                              max_arcsec=max(s.max_arcsec for s in stats), samples=n)


# -- a segment from its file (after a crash) --------------------------------------------------
def segment_from_file(path: Path | str, *, segment: int, outcome: Outcome, reason: str,
                      started_at: datetime | None, fallback_end: datetime | None,
                      site: object | None = None) -> tuple[SegmentState, str]:
    """What a recovered pass file holds: counts per channel, the span of its batches, the
    tagger's missed events, the disk's refusals (loss record) and the highest elevation of
    the satellite over the recorded span; and the satellite's name from the header.
    Blocking: run it in a thread."""
    from station.events import passfile

    path = Path(path)
    counts = np.zeros(256, np.int64)
    events = missed = 0
    good: list[Span] = []
    header: dict[str, str] = {}
    try:
        with passfile.PassFileReader(path) as reader:
            header = reader.header
            for b in reader:
                info = b.info
                if passfile.is_loss_record(b.metadata):
                    continue
                counts += np.bincount(b.channel, minlength=256)[:256]
                events += len(b.timestamp_ps)
                missed += info.missed_events
                if info.start_time_s is not None:
                    good.append((info.start_time_s,
                                 info.start_time_s + (info.end_ps - info.start_ps) / 1e12))
    except OSError as exc:
        log.error("cannot read %s for the interrupted summary: %s", path, exc)
    loss = passfile.read_loss_record(path)
    lost_disk = loss.events if loss is not None else 0
    names: dict[int, str] = {}
    try:
        names = {int(k): v for k, v in json.loads(header.get("channel_map", "{}")).items()}
    except ValueError:
        pass
    by_name = {names.get(c, f"ch{c}"): int(n) for c, n in enumerate(counts) if n}
    good = merge(good)
    ended = from_epoch_s(good[-1][1]) if good else fallback_end
    max_el = None
    if good and site is not None and header.get("elements"):
        max_el = _max_el(header["elements"], site, good[0][0], good[-1][1])
    seg = SegmentState(
        segment=segment, stream_pass_id=header.get("stream_pass_id", path.stem),
        outcome=outcome, reason=reason, started_at=started_at, ended_at=ended,
        events_recorded=events, events_lost=missed + lost_disk, counts_by_channel=by_name,
        file_path=str(path), max_el_deg=max_el, good_s=good)
    return seg, header.get("satellite", "")


def _max_el(elements: str, site: object, t0: float, t1: float) -> float | None:
    from station.orbit.catalog import satellite_from_text
    from station.orbit.geometry import SatelliteLinkGeometry

    for fmt in ("tle", "omm-json"):
        try:
            sat = satellite_from_text(elements, fmt)  # type: ignore[arg-type]
            break
        except Exception:
            continue
    else:
        return None
    try:
        t = np.linspace(t0, t1, max(2, int((t1 - t0) / 2.0) + 1))
        _, el = SatelliteLinkGeometry(sat, site).range_el_at(t)  # type: ignore[arg-type]
        return round(float(np.max(el)), 2)
    except Exception as exc:
        log.warning("cannot compute the elevation over %s: %s", elements.splitlines()[:1], exc)
        return None
