"""The systemd watchdog, fed only while the supervisor loop is alive.

The supervisor calls :meth:`Heartbeat.beat` every time round its loop (its waits are
bounded to a fraction of the watchdog period). The feeder task sends ``WATCHDOG=1`` only
when the last beat is recent, so a supervisor stuck in a call, or an event loop blocked
by a runaway computation, stops the feeding and systemd restarts the service.

This measures the event loop's monotonic time on purpose: the watchdog is about the
process being alive in wall time, not about simulated station time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from station.systemd import SystemdNotifier

if TYPE_CHECKING:
    from station.clock import Clock

log = logging.getLogger(__name__)

T = TypeVar("T")


class Heartbeat:
    """When the supervisor last showed it was alive (event-loop monotonic seconds)."""

    def __init__(self) -> None:
        self.last_beat_s = asyncio.get_running_loop().time()

    def beat(self) -> None:
        self.last_beat_s = asyncio.get_running_loop().time()

    def age_s(self) -> float:
        return asyncio.get_running_loop().time() - self.last_beat_s


async def feed_watchdog(notifier: SystemdNotifier, heartbeat: Heartbeat,
                        alive: Callable[[], bool] = lambda: True) -> None:
    """Run forever: WATCHDOG=1 at half the watchdog period while the heartbeat is fresh
    and ``alive()`` (the services the station cannot do without, e.g. MQTT) is true."""
    interval_s = notifier.watchdog_interval_s
    if interval_s is None:
        return
    starved = False
    while True:
        if not alive():
            if not starved:
                log.error("an essential service ended: not feeding the systemd watchdog")
                starved = True
        elif heartbeat.age_s() <= interval_s:
            notifier.watchdog()
            if starved:
                log.warning("supervisor alive again; feeding the systemd watchdog")
                starved = False
        elif not starved:
            log.error("supervisor silent for %.1f s: not feeding the systemd watchdog",
                      heartbeat.age_s())
            starved = True
        await asyncio.sleep(interval_s)  # wall-time period, by design (see module doc)


#: Longest the supervisor may wait between beats (wall seconds).
def beat_period_s(notifier: SystemdNotifier) -> float:
    interval_s = notifier.watchdog_interval_s
    return 1.0 if interval_s is None else min(1.0, interval_s / 2)


async def beating(work: Awaitable[T], heartbeat: Heartbeat | None, period_s: float,
                  limit_s: float = 120.0) -> T:
    """Await ``work`` (e.g. planning in a thread) while the heartbeat goes on, for at most
    ``limit_s`` wall seconds: waiting on a thread is being alive, but a thread stuck for
    minutes must still let the watchdog restart the daemon."""
    future = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    give_up_s = loop.time() + limit_s
    while not future.done():
        if heartbeat is not None and loop.time() < give_up_s:
            heartbeat.beat()
        # Wall-time pacing of the heartbeat, not domain time.
        await asyncio.wait({future}, timeout=period_s)
    return future.result()


async def wait_beating(clock: Clock, until_s: float, wake: asyncio.Event,
                       ends: asyncio.Future[Any] | None, beat: Callable[[], None],
                       chunk_s: float) -> None:
    """Sleep on ``clock`` until ``until_s``, until ``wake`` is set (then clear it) or until
    ``ends`` is done, calling ``beat`` at least every ``chunk_s`` clock seconds."""
    while True:
        beat()
        now_s = clock.now_s()
        if wake.is_set() or now_s >= until_s:
            wake.clear()
            return
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(clock.sleep(min(until_s - now_s, chunk_s))),
            asyncio.ensure_future(wake.wait())]
        try:
            done, _ = await asyncio.wait(waits if ends is None else [*waits, ends],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if ends is not None and ends in done:
            return
