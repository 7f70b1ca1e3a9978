"""How late the event loop wakes against the clock: is the host keeping up?

A simulated clock at ``speed`` X runs X clock seconds per wall second whatever the host
can do. When the host cannot follow (too many tracking ticks and batches per wall
second), every sleep on the clock wakes late, the tracker skips ticks and the pass that
comes out is empty or badly tracked for reasons that have nothing to do with the station.
:class:`LatenessMonitor` sleeps on the clock in short steps and measures by how much each
wake-up misses its time. The median over a few seconds above a limit means the clock runs
faster than the host can follow; a run in that state is invalid.

An autojump clock (``speed = max``) waits for the work, so it is never late: there is
nothing to measure.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel, Field

from station.clock import Clock

log = logging.getLogger("station.lateness")

#: Clock seconds between two measurements.
STEP_S = 0.5
#: Measurements in the sliding window whose median decides.
WINDOW = 10
#: A single wake-up later than this many times the limit invalidates the run at once.
STALL_FACTOR = 10.0


class LatenessStats(BaseModel):
    """How far behind its clock the event loop ran (clock seconds)."""

    speed: float | None = Field(None, description="Clock seconds per wall second (None: autojump).")
    samples: int = 0
    median_s: float = 0.0
    p95_s: float = 0.0
    max_s: float = 0.0
    limit_s: float = Field(0.0, description="Sustained (median) lateness above this makes a run invalid.")
    valid: bool = True
    reason: str = ""


class LatenessMonitor:
    """Measures the loop's lateness on ``clock``; calls ``on_invalid(reason)`` once when
    the median over :data:`WINDOW` consecutive measurements exceeds ``limit_s``."""

    def __init__(self, clock: Clock, *, limit_s: float,
                 on_invalid: Callable[[str], None] | None = None,
                 counts: Callable[[], bool] | None = None):
        self.clock = clock
        self.limit_s = limit_s
        self.on_invalid = on_invalid or (lambda reason: None)
        #: Whether lateness matters now (e.g. only while tracking): other samples are
        #: not taken.
        self.counts = counts or (lambda: True)
        self._all: list[float] = []
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self.stats = LatenessStats(speed=None if math.isinf(clock.speed) else clock.speed,
                                   limit_s=limit_s)

    @property
    def active(self) -> bool:
        return not math.isinf(self.clock.speed)

    async def run(self) -> None:
        """Measure until cancelled (returns at once on an autojump clock)."""
        if not self.active:
            return
        while True:
            target_s = self.clock.now_s() + STEP_S
            counted = self.counts()
            await self.clock.sleep_until(target_s)
            if counted or self.counts():
                self.add(max(0.0, self.clock.now_s() - target_s))
            else:
                self._recent.clear()

    def add(self, late_s: float) -> None:
        self._all.append(late_s)
        self._recent.append(late_s)
        st = self.stats
        st.samples = len(self._all)
        st.max_s = max(st.max_s, late_s)
        if not st.valid:
            return
        speed = self.clock.speed
        if late_s > STALL_FACTOR * self.limit_s:
            # One wake-up this late is a stall, whatever the median says.
            self._invalid(f"the event loop woke {late_s:.2f} s of clock time "
                          f"({late_s / speed * 1e3:.0f} ms wall) late at once")
        elif len(self._recent) == WINDOW and (median := statistics.median(self._recent)) > self.limit_s:
            self._invalid(f"the event loop woke a median {median:.2f} s of clock time "
                          f"({median / speed * 1e3:.0f} ms wall) late over {WINDOW * STEP_S:g} s")

    def judge_tracking(self, ticks: int, skipped_ticks: int, max_lateness_s: float) -> None:
        """The tracking loop's own lateness (it may all fall inside one stall that no
        measurement here saw): most ticks skipped, or one far too late, is invalid too."""
        if not self.active or not self.stats.valid:
            return
        total = ticks + skipped_ticks
        # Skipping some ticks is harmless (commands carry their time; ×20 on a loaded
        # machine skips about half with sub-arcsecond error); skipping nearly all is not.
        if total and skipped_ticks / total > 0.9:
            self._invalid(f"the tracking loop skipped {skipped_ticks} of {total} control ticks")
        elif max_lateness_s > STALL_FACTOR * self.limit_s:
            self._invalid(f"a tracking command went out {max_lateness_s:.2f} s of clock time late")

    def judge_loss(self, window_lost_fraction: float, tolerated_fraction: float) -> None:
        """A pass that lost its window while the loop was behind its clock lost it to the
        host, not to the station: invalid."""
        if not self.active or not self.stats.valid:
            return
        if window_lost_fraction > tolerated_fraction and self.stats.max_s > self.limit_s:
            self._invalid(f"the pass lost {100 * window_lost_fraction:.0f} % of its QKD window "
                          f"while the event loop ran up to {self.stats.max_s:.2f} s of clock "
                          "time behind")

    def _invalid(self, what: str) -> None:
        st = self.stats
        st.valid = False
        if self.clock.source == "simulated":
            st.reason = (f"the simulated clock (×{self.clock.speed:g}) runs faster than this "
                         f"host can follow: {what}, above the {self.limit_s:g} s that tracking "
                         "tolerates; the run is invalid — use a lower speed or 'max'")
        else:
            st.reason = (f"the station fell behind the real clock (overloaded, or the process "
                         f"was stopped): {what}, above the {self.limit_s:g} s that tracking "
                         "tolerates")
        log.error("%s", st.reason)
        self.on_invalid(st.reason)

    def finish(self) -> LatenessStats:
        """The figures so far (call after the run)."""
        st = self.stats
        if self._all:
            ordered = sorted(self._all)
            st.median_s = round(statistics.median(ordered), 4)
            st.p95_s = round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4)
            st.max_s = round(st.max_s, 4)
        return st


def tolerated_lateness_s(rate_hz: float) -> float:
    """Sustained lateness a rehearsal tolerates: forty control periods, at least 2 s.

    Tracking commands carry the time they are meant for, so a loop somewhat behind still
    tracks (×20 on a loaded 2-core machine runs ~0.1–0.5 s behind with sub-arcsecond
    error); seconds behind, sustained, is a host that cannot follow."""
    return max(2.0, 40.0 / rate_hz)
