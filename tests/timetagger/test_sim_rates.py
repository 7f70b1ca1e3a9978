"""RateMeter: per-channel rates over a sliding window of tagger time."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.timetagger.base import EVENT_DTYPE, Batch, BatchInfo
from drivers.timetagger.rates import RateMeter

PS = 1_000_000_000_000


def _batch(seq: int, start_s: float, end_s: float, counts: dict[int, int]) -> Batch:
    parts = []
    for ch, n in counts.items():
        ev = np.empty(n, EVENT_DTYPE)
        ev["timestamp_ps"] = np.linspace(start_s * PS, end_s * PS, n, endpoint=False).astype(np.int64)
        ev["channel"] = ch
        parts.append(ev)
    events = np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)
    events = np.sort(events, order="timestamp_ps", kind="stable")
    info = BatchInfo(seq=seq, start_ps=int(start_s * PS), end_ps=int(end_s * PS), resolution_ps=1.0)
    return Batch(info, events)


def test_rates_over_window_and_idle_channel_reports_zero() -> None:
    meter = RateMeter(window_s=1.0)
    for i in range(10):
        meter.update(_batch(i, i * 0.1, (i + 1) * 0.1, {1: 100, 2: 10}))
    rates = meter.rates_hz()
    assert rates[1] == pytest.approx(1000.0)
    assert rates[2] == pytest.approx(100.0)
    # Channel 2 goes quiet for a full window: it is still reported, at 0 Hz.
    for i in range(10, 20):
        meter.update(_batch(i, i * 0.1, (i + 1) * 0.1, {1: 50}))
    rates = meter.rates_hz()
    assert rates[1] == pytest.approx(500.0)
    assert rates[2] == 0.0
    assert meter.total_events == 10 * 110 + 10 * 50


def test_partial_window_and_missed_events_are_counted() -> None:
    meter = RateMeter(window_s=2.0)
    meter.update(_batch(0, 0.0, 0.5, {3: 500}))
    assert meter.covered_s() == pytest.approx(0.5)
    assert meter.rates_hz()[3] == pytest.approx(1000.0)
    info = BatchInfo(seq=1, start_ps=int(0.5 * PS), end_ps=PS, resolution_ps=1.0,
                     overflow_begin=True, missed_events=42)
    meter.update(Batch(info, np.empty(0, EVENT_DTYPE)))
    assert meter.missed_events == 42
    assert meter.rates_hz()[3] == pytest.approx(500.0)


def test_bad_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="window"):
        RateMeter(window_s=0)
