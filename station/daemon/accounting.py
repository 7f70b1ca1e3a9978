"""The accounting of one pass segment: what of its part of the QKD window it recorded
usefully, and the summaries it publishes at the end.

Nothing here reads a runner's state. The acquisition, the telemetry watch and the join
each hand over what they found; the runner puts it in one frozen :class:`Recorded` when
the segment ends, and :func:`account` turns that into the segment's
:class:`~station.daemon.record.SegmentState` (``completed`` becomes ``degraded`` past the
stated share of the window lost). :func:`publish_summaries` sends the segment's summary
(a resumed pass) and the whole pass's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from station.daemon.passreport import PassReport
from station.daemon.publisher import Publisher
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
from station.events.protocol import Lost
from station.mqtt.messages import TrackingErrorStats
from station.orbit.passes import PassInfo

__all__ = ["Accounting", "Recorded", "account", "events_within", "lost_batch_causes",
           "merge_causes", "publish_summaries", "qkd_window"]

log = logging.getLogger("station.pass")


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a segment recorded and what spoiled it: the accounting's whole input.

    ``spans`` are the clock spans of the batches in the pass file and ``span_events`` the
    events of each; ``causes`` are spans known to have yielded nothing usable (the join,
    a tracking error, batches the disk refused), each with why.
    """

    spans: tuple[Span, ...] = ()
    span_events: tuple[int, ...] = ()
    causes: tuple[Cause, ...] = ()


@dataclass(frozen=True, slots=True)
class Accounting:
    """The segment's share of the window and its record (outcome possibly ``degraded``)."""

    window_s: float
    window_lost_s: float
    window_lost_fraction: float
    segment: SegmentState


def qkd_window(entry: PassInfo) -> Span:
    """The pass's QKD window in clock seconds; empty when the pass has none."""
    start = (entry.qkd_start or entry.aos).timestamp()
    end = (entry.qkd_end or entry.los).timestamp()
    if entry.qkd_start is None or entry.qkd_end is None:
        end = start  # no QKD window: nothing to lose
    return start, end


def lost_batch_causes(lost: Iterable[Lost], epoch_s: float | None) -> tuple[Cause, ...]:
    """Batches the pipeline could not record (tagger time ``epoch_s`` = clock 0), as causes."""
    if epoch_s is None:
        return ()
    return tuple(Cause(start_s=epoch_s + x.start_ps / 1e12, end_s=epoch_s + x.end_ps / 1e12,
                       cause=f"batches not recorded ({x.reason.removeprefix('not recorded: ')})")
                 for x in lost)


def account(entry: PassInfo, report: PassReport, recorded: Recorded, *, started_s: float,
            stream_pass_id: str, now: datetime, alarms_raised: int) -> Accounting:
    """This segment's record: what of its part of the window (from ``started_s``) it
    recorded usefully; ``completed`` becomes ``degraded`` past the stated share lost."""
    lo, hi = qkd_window(entry)
    own = (min(max(lo, started_s), hi), hi)
    bad = [(c.start_s, c.end_s) for c in recorded.causes]
    good = subtract(clip(merge(recorded.spans), *own), bad)
    good_events = events_within(recorded.spans, recorded.span_events, good)
    window_s = own[1] - own[0]
    lost_s = round(max(0.0, window_s - total_s(good)), 3)
    r, tr = report, report.tracking
    seg = SegmentState(
        segment=r.segment, stream_pass_id=stream_pass_id, outcome=r.outcome, reason=r.reason,
        started_at=r.phase_times.get("prepare"), ended_at=now,
        events_recorded=r.events_recorded, events_lost=r.events_lost,
        counts_by_channel=r.counts_by_channel, file_path=r.pass_file,
        max_el_deg=entry.max_el_deg, alarms_raised=alarms_raised,
        tracking=TrackingErrorStats(
            rms_arcsec=tr.rms_sky_error_arcsec, p95_arcsec=tr.p95_error_arcsec,
            max_arcsec=tr.max_error_arcsec, samples=tr.samples_after_acquisition)
        if tr is not None else None,
        good_s=good, good_events=good_events, causes=merge_causes(recorded.causes))
    outcome, reason = degraded(r.outcome, r.reason, own, [seg])
    if outcome != r.outcome:
        log.warning("pass %s segment %d degraded: %s", entry.pass_id, r.segment, reason)
    return Accounting(
        window_s=round(window_s, 3), window_lost_s=lost_s,
        window_lost_fraction=round(lost_s / window_s, 4) if window_s > 0 else 0.0,
        segment=seg.model_copy(update={"outcome": outcome, "reason": reason}))


def publish_summaries(publisher: Publisher, entry: PassInfo, report: PassReport,
                      earlier: list[SegmentState]) -> None:
    """Publish the segment's summary (a resumed pass) and the whole pass's."""
    seg = report.segment_state
    if seg is None:
        raise ValueError(f"pass {entry.pass_id}: no segment record to summarise")
    segments = [*earlier, seg]
    window = qkd_window(entry)
    streamed = {"events_streamed": report.events_streamed}
    if len(segments) > 1:
        own = segment_summary(entry.pass_id, entry.satellite, entry.norad_id, entry.aos,
                              entry.los, window, seg)
        publisher.publish_summary(own.model_copy(update=streamed))
    whole = pass_summary(entry.pass_id, entry.satellite, entry.norad_id, entry.aos,
                         entry.los, window, segments)
    if len(segments) == 1:
        whole = whole.model_copy(update=streamed)
    publisher.publish_summary(whole)
    r = report
    log.info("pass %s %s%s: %d events recorded, %d streamed, %d lost; file %s",
             r.pass_id, r.outcome.value, f" ({r.reason})" if r.reason else "",
             r.events_recorded, r.events_streamed, r.events_lost, r.pass_file)


def events_within(spans: Iterable[Span], events: Iterable[int], good: list[Span]) -> int:
    """Events of the batches (``spans``, ``events``) lying mostly inside ``good``."""
    spans = list(spans)
    if not spans or not good:
        return 0
    t0 = np.array([a for a, _ in spans])
    t1 = np.array([b for _, b in spans])
    inside = np.zeros(len(spans))
    for a, b in good:
        inside += np.clip(np.minimum(t1, b) - np.maximum(t0, a), 0.0, None)
    mostly = inside >= 0.5 * np.maximum(t1 - t0, 1e-12)
    return int(np.asarray(list(events))[mostly].sum())


def merge_causes(causes: Iterable[Cause]) -> list[Cause]:
    """Overlapping spans of one cause joined (a stall is one span, not 2,000)."""
    out: list[Cause] = []
    for c in sorted(causes, key=lambda c: (c.cause, c.start_s)):
        if out and out[-1].cause == c.cause and c.start_s <= out[-1].end_s + 1.0:
            out[-1].end_s = max(out[-1].end_s, c.end_s)
        else:
            out.append(c.model_copy())
    return sorted(out, key=lambda c: c.start_s)
