"""The clock protocol drivers are given.

The station owns the one Clock (real or simulated, :mod:`station.clock`); drivers only
see this structural interface, so a simulated mount or time tagger moves on simulated
time exactly as the rest of the station does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """UTC time source with awaitable sleeps.

    ``now()`` is timezone-aware UTC. ``sleep(duration_s)`` and ``sleep_until(when)``
    suspend for *clock* time, which on a simulated clock may be much faster than wall time.
    """

    def now(self) -> datetime: ...

    def now_s(self) -> float:
        """Seconds since the Unix epoch (UTC), as a float: cheap for control loops."""
        ...

    @property
    def speed(self) -> float:
        """Clock seconds per wall second (1 for the real clock)."""
        ...

    async def sleep(self, duration_s: float) -> None: ...

    async def sleep_until(self, when: datetime | float) -> None: ...
