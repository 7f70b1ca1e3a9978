"""Fixtures of the event pipeline tests: synthetic tagger batches and a running pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from drivers.timetagger.base import EVENT_DTYPE, Batch, BatchInfo
from station.config.events import EventsConfig
from station.events import EventPipeline, PassHeader

PS = 10**12


def make_batches(n: int, *, seed: int = 0, max_events: int = 3000, span_ps: int = 10**9,
                 lossy: set[int] | None = None) -> list[Batch]:
    """Tagger-like batches: contiguous intervals, sorted timestamps, channels 1-6."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(0, max_events + 1))
        ev = np.empty(k, EVENT_DTYPE)
        ev["timestamp_ps"] = np.sort(rng.integers(i * span_ps, (i + 1) * span_ps, k))
        ev["channel"] = rng.integers(1, 7, k)
        lossy = lossy or set()
        bad = i in lossy
        # A run of lossy batches is one overflow period: begins in the first, ends in the last.
        begin, end = bad and i - 1 not in lossy, bad and i + 1 not in lossy
        out.append(Batch(BatchInfo(seq=i, start_ps=i * span_ps, end_ps=(i + 1) * span_ps,
                                   resolution_ps=1.0, overflow_begin=begin, overflow_end=end,
                                   in_overflow=bad and not begin and not end,
                                   missed_events=17 if bad else 0,
                                   start_time_s=1_482_166_198.0 + i * span_ps / PS), ev))
    return out


def header(pass_id: str = "41731-20161219T164812Z", segment: int = 1) -> PassHeader:
    return PassHeader(pass_id=pass_id, segment=segment, station_id="test", satellite="MICIUS",
                      norad_id=41731, channel_map={"1": "H", "2": "V", "3": "D", "4": "A",
                                                   "5": "SYNC", "6": "PPS"},
                      tagger_model="synthetic", tagger_resolution_ps=1.0, clock_source="simulated",
                      software_version="test")


def same_events(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and bool(np.array_equal(a["timestamp_ps"], b["timestamp_ps"])) \
        and bool(np.array_equal(a["channel"], b["channel"]))


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[EventPipeline]:
    p = EventPipeline(EventsConfig(stream_endpoint="tcp://127.0.0.1:*", flush_interval_s=0.2,
                                   consumer_timeout_s=3.0),
                      state_dir=tmp_path / "state")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()
