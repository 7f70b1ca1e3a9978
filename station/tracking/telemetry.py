"""Tracking telemetry: one :class:`TrackingSample` per reading, fanned out to subscribers.

Every subscriber has a bounded queue of its own (:class:`TelemetrySubscription`): a slow
reader loses its oldest samples (counted in ``dropped``) and never slows the control loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import BaseModel, Field


class TrackingSample(BaseModel):
    """One control tick as published (MQTT, pass reports)."""

    pass_id: str = Field(description="The pass being tracked ('' outside a pass).")
    phase: str = Field(description="'preposition', 'tracking' or 'parking'.")
    time_s: float = Field(description="Clock time of the position reading, UTC epoch seconds.")
    commanded_az_deg: float = Field(description="Planned mount azimuth at time_s.")
    commanded_el_deg: float = Field(description="Planned mount elevation axis at time_s.")
    actual_az_deg: float = Field(description="Mount azimuth read back.")
    actual_el_deg: float = Field(description="Mount elevation axis read back.")
    error_arcsec: float = Field(description="Angle between actual and commanded.")
    sky_error_arcsec: float = Field(description="Angle between actual and the satellite.")
    lateness_s: float = Field(description="How late this tick ran against its schedule.")
    acquired: bool = Field(description="The target counts as acquired.")


_END = object()


class TelemetrySubscription:
    """An async iterator of :class:`TrackingSample`; a slow reader loses the oldest
    samples, and ``dropped`` counts them."""

    def __init__(self, maxsize: int):
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._closed = False

    def _put(self, item: object) -> None:
        if self._closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    def close(self) -> None:
        self._put(_END)
        self._closed = True

    def __aiter__(self) -> AsyncIterator[TrackingSample]:
        return self

    async def __anext__(self) -> TrackingSample:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        assert isinstance(item, TrackingSample)
        return item


class TelemetryFanout:
    """The subscribers of one tracker; :meth:`publish` hands each a sample."""

    def __init__(self, default_maxsize: int):
        self.default_maxsize = default_maxsize
        self._subs: list[TelemetrySubscription] = []

    def subscribe(self, maxsize: int | None = None) -> TelemetrySubscription:
        """A new telemetry stream; iterate it with ``async for``. Ends at :meth:`close`."""
        sub = TelemetrySubscription(maxsize or self.default_maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: TelemetrySubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            sub.close()

    def close(self) -> None:
        """End every telemetry stream."""
        for sub in self._subs:
            sub.close()
        self._subs.clear()

    def publish(self, sample: TrackingSample) -> None:
        for sub in self._subs:
            sub._put(sample)

    def dropped(self) -> int:
        """Samples the current subscribers have lost so far."""
        return sum(s.dropped for s in self._subs)
