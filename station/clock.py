"""The station's one Clock: real, or simulated (scaled, manually stepped, or jumping).

Domain code never calls ``time.time()``, ``datetime.now()`` or a bare ``asyncio.sleep``
for domain timing; it is handed a :class:`Clock`. Drivers see the same object through the
structural :class:`drivers.clock.Clock` protocol.

Simulated modes
---------------
``speed=X``
    Simulated time runs X times faster than the event loop's monotonic clock.
``speed=math.inf`` (autojump)
    Whenever every task is waiting on the clock, time jumps straight to the earliest
    deadline: a pass runs as fast as the CPU allows, still in causal order. Work handed
    to threads with ``asyncio.to_thread`` / ``run_in_executor(None, ...)`` counts as
    "not waiting": the clock installs a counting default executor and does not jump while
    any such work is in flight (a track being planned must not see AOS fly past). So
    never park a long-lived blocking loop in the default executor under this clock; give
    it a thread of its own.
``manual=True``
    Time only moves when a test calls :meth:`SimClock.advance` / :meth:`SimClock.advance_to`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any


def to_epoch_s(when: datetime | float) -> float:
    """UTC seconds since the epoch for an aware datetime or a float already in seconds."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(f"naive datetime {when!r}: station times must be timezone-aware UTC")
        return when.timestamp()
    return float(when)


def from_epoch_s(epoch_s: float) -> datetime:
    """Aware UTC datetime for seconds since the epoch."""
    return datetime.fromtimestamp(epoch_s, tz=UTC)


class Clock(ABC):
    """UTC time with awaitable sleeps; see the module docstring."""

    #: "real" or "simulated": recorded in pass files and reports.
    source: str = "real"

    @abstractmethod
    def now_s(self) -> float:
        """Seconds since the Unix epoch, UTC."""

    def now(self) -> datetime:
        """Current time as an aware UTC datetime."""
        return from_epoch_s(self.now_s())

    @property
    @abstractmethod
    def speed(self) -> float:
        """Clock seconds per wall second."""

    @abstractmethod
    async def sleep_until(self, when: datetime | float) -> None:
        """Return once the clock reads ``when`` or later (immediately if already past)."""

    async def sleep(self, duration_s: float) -> None:
        """Sleep ``duration_s`` seconds of clock time."""
        await self.sleep_until(self.now_s() + max(0.0, duration_s))

    def wall_s(self, clock_s: float) -> float:
        """Wall seconds that ``clock_s`` clock seconds take (for I/O deadlines)."""
        if math.isinf(self.speed):
            return 0.0
        return clock_s / self.speed


class RealClock(Clock):
    """Wall-clock UTC. Sleeps re-check the time, so a stepped system clock is followed."""

    source = "real"

    def now_s(self) -> float:
        return time.time()

    @property
    def speed(self) -> float:
        return 1.0

    async def sleep_until(self, when: datetime | float) -> None:
        target_s = to_epoch_s(when)
        while (remaining := target_s - time.time()) > 0:
            # Sleep in bounded chunks so an NTP step does not leave us asleep for hours.
            await asyncio.sleep(min(remaining, 1.0))


class SimClock(Clock):
    """Simulated UTC clock starting at ``start``; see the module docstring for modes."""

    source = "simulated"

    def __init__(self, start: datetime | float, *, speed: float = 1.0, manual: bool = False):
        if not manual and not speed > 0:
            raise ValueError(f"simulated clock speed must be > 0, got {speed}")
        self._start_s = to_epoch_s(start)
        self._speed = speed
        self.manual = manual
        self._jump = manual or math.isinf(speed)
        # For scaled mode: loop time at which the clock read _start_s; set on first use
        # so a clock built before the loop starts does not lose time.
        self._t0_loop: float | None = None
        # For manual and autojump: the simulated "now" and the sleepers' heap.
        self._now_s = self._start_s
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()
        self._jumper: asyncio.Task[None] | None = None
        self._executor_loop: asyncio.AbstractEventLoop | None = None

    @property
    def speed(self) -> float:
        return self._speed

    def now_s(self) -> float:
        if self._jump:
            if not self.manual and self._executor_loop is None and _has_loop():
                self._install_executor()
            return self._now_s
        loop = asyncio.get_running_loop() if _has_loop() else None
        if loop is None:
            return self._start_s if self._t0_loop is None else self._now_s
        if self._t0_loop is None:
            self._t0_loop = loop.time()
        self._now_s = self._start_s + (loop.time() - self._t0_loop) * self._speed
        return self._now_s

    async def sleep_until(self, when: datetime | float) -> None:
        target_s = to_epoch_s(when)
        if not self._jump:
            while (remaining := target_s - self.now_s()) > 0:
                await asyncio.sleep(remaining / self._speed)
            return
        if target_s <= self._now_s:
            await asyncio.sleep(0)  # still a scheduling point, as a real sleep would be
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (target_s, next(self._counter), fut))
        if not self.manual:
            self._ensure_jumper()
        await fut

    # -- manual stepping ---------------------------------------------------------------
    async def advance(self, duration_s: float) -> None:
        """Manual mode: move time forward ``duration_s``, waking sleepers in order."""
        await self.advance_to(self._now_s + duration_s)

    async def advance_to(self, when: datetime | float) -> None:
        """Manual mode: move time to ``when``, waking each sleeper at its own deadline.

        Between wake-ups the event loop runs until woken tasks have settled, so a task
        that sleeps again inside the stepped interval is woken in the same call.
        """
        if not self.manual:
            raise RuntimeError("advance() is only for a SimClock built with manual=True")
        target_s = to_epoch_s(when)
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target_s:
            self._wake_earliest()
            await _settle()
        self._now_s = max(self._now_s, target_s)
        await _settle()

    @property
    def pending_sleepers(self) -> int:
        """How many tasks are waiting on this clock (manual/autojump modes)."""
        self._drop_cancelled()
        return len(self._sleepers)

    # -- internals --------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        self._sleepers = [s for s in self._sleepers if not s[2].done()]
        heapq.heapify(self._sleepers)

    def _wake_earliest(self) -> None:
        deadline_s, _, _ = self._sleepers[0]
        self._now_s = max(self._now_s, deadline_s)
        # Wake everyone due at this instant together.
        while self._sleepers and self._sleepers[0][0] <= self._now_s:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def _install_executor(self) -> None:
        """Make the loop's default executor count its work (see the module docstring).

        Done at the clock's first use inside the loop, before anyone hands work to a
        thread: work already running in another executor would be invisible to the jumper.
        """
        loop = asyncio.get_running_loop()
        if not isinstance(getattr(loop, "_default_executor", None), CountingExecutor):
            loop.set_default_executor(CountingExecutor(thread_name_prefix="simclock-worker"))
        self._executor_loop = loop

    def _ensure_jumper(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor_loop is not loop:
            self._install_executor()
        if self._jumper is None or self._jumper.done():
            self._jumper = loop.create_task(self._jump_when_idle(), name="simclock-autojump")

    async def _jump_when_idle(self) -> None:
        executor = getattr(asyncio.get_running_loop(), "_default_executor", None)
        while True:
            await _settle()
            if isinstance(executor, CountingExecutor) and executor.in_flight:
                # A thread is still working for some task: time waits for it. Polling in
                # wall time is the point here (the work is not on the clock).
                await asyncio.sleep(0.0005)
                continue
            self._drop_cancelled()
            if not self._sleepers:
                return
            # Everyone runnable has run and is waiting again: time may jump.
            self._wake_earliest()
            if not self._sleepers:
                # Nobody else waits: end now; the next sleeper starts a new jumper.
                return


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor under an autojump clock: it counts work in flight."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.in_flight = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.in_flight += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self.in_flight -= 1
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any]) -> None:
        # Called from the worker thread; += / -= on an int under the GIL is atomic enough
        # for a counter only compared with zero by the loop thread.
        self.in_flight -= 1


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _settle(rounds: int = 8) -> None:
    """Let ready tasks run: a few loop iterations, plus a zero-length I/O poll."""
    for _ in range(rounds):
        await asyncio.sleep(0)
