"""Per-channel count rates over a sliding window of tagger time.

Every backend feeds its batches to a :class:`RateMeter`; ``count_rates_hz()`` and the
``tagger rates`` command read it. The window is measured on the tagger's own time base
(``BatchInfo.start_ps``/``end_ps``), not wall time, so rates are right at any clock speed
and an empty batch still lowers the rate. Batches that overlap an overflow are counted
like any other (their events did arrive); :attr:`RateMeter.missed_events` adds up what the
hardware reported lost, so a rate that looks low because of an overflow can be told apart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from drivers.timetagger.base import Batch

_PS_PER_S = 1_000_000_000_000


@dataclass(slots=True)
class _Slice:
    start_ps: int
    end_ps: int
    channels: np.ndarray  # channel numbers present in the batch
    counts: np.ndarray  # counts for those channels


class RateMeter:
    """Count rates per channel over the last ``window_s`` seconds of tagger time.

    Not thread-safe; call from one task (the backend's batch loop).
    """

    def __init__(self, window_s: float = 1.0) -> None:
        if not window_s > 0:
            raise ValueError(f"rate window must be > 0 s, got {window_s}")
        self.window_s = float(window_s)
        self._window_ps = int(round(window_s * _PS_PER_S))
        self._slices: deque[_Slice] = deque()
        #: Every channel ever seen, so a channel that went quiet reports 0 Hz, not nothing.
        self._known: set[int] = set()
        #: Sum of ``BatchInfo.missed_events`` over every batch seen.
        self.missed_events = 0
        #: Total events seen since construction or :meth:`reset`.
        self.total_events = 0

    def reset(self) -> None:
        """Forget everything (e.g. at ``start()``)."""
        self._slices.clear()
        self._known.clear()
        self.missed_events = 0
        self.total_events = 0

    def update(self, batch: Batch) -> None:
        """Account one batch."""
        info = batch.info
        if batch.events.size:
            per_channel = np.bincount(batch.events["channel"], minlength=256)
            channels = np.flatnonzero(per_channel)
            counts = per_channel[channels]
        else:
            channels = np.empty(0, np.uint8)
            counts = np.empty(0, np.int64)
        self._known.update(int(c) for c in channels)
        self.missed_events += int(info.missed_events)
        self.total_events += int(batch.events.size)
        start_ps = int(info.start_ps)
        end_ps = max(int(info.end_ps), start_ps)
        # A backend restarted on a new time base: the old slices mean nothing now.
        if self._slices and end_ps < self._slices[-1].end_ps:
            self._slices.clear()
        self._slices.append(_Slice(start_ps, end_ps, channels, counts))
        horizon_ps = end_ps - self._window_ps
        while self._slices and self._slices[0].end_ps <= horizon_ps:
            self._slices.popleft()

    def add_channels(self, channels: list[int] | set[int]) -> None:
        """Report these channels (at 0 Hz until counts arrive), e.g. all configured ones."""
        self._known.update(int(c) for c in channels)

    def covered_s(self) -> float:
        """Tagger time the current rates are averaged over (≤ ``window_s``)."""
        if not self._slices:
            return 0.0
        end_ps = self._slices[-1].end_ps
        start_ps = max(self._slices[0].start_ps, end_ps - self._window_ps)
        return max(0, end_ps - start_ps) / _PS_PER_S

    def rates_hz(self) -> dict[int, float]:
        """Channel -> events per second over the window (0.0 for a known idle channel).

        A batch only partly inside the window contributes in proportion to its overlap,
        assuming its events are spread evenly; this keeps the rate smooth as batches age.
        """
        rates = {c: 0.0 for c in sorted(self._known)}
        covered_s = self.covered_s()
        if covered_s <= 0:
            return rates
        end_ps = self._slices[-1].end_ps
        horizon_ps = end_ps - self._window_ps
        totals: dict[int, float] = {}
        for s in self._slices:
            length_ps = s.end_ps - s.start_ps
            if s.start_ps >= horizon_ps or length_ps <= 0:
                weight = 1.0
            else:
                weight = (s.end_ps - horizon_ps) / length_ps
            for c, n in zip(s.channels.tolist(), s.counts.tolist(), strict=True):
                totals[c] = totals.get(c, 0.0) + n * weight
        for c, n in totals.items():
            rates[c] = n / covered_s
        return rates


__all__ = ["RateMeter"]
