"""Relay events: what a station's relay component did, for its log and ``P/transitions``.

A station's side of the relay (:func:`postprocessing.relay.offer` at A,
:func:`postprocessing.relay.receive` at B) reports each step as a :class:`KeyRelayEvent`:
numbers and IDs only (counts of key IDs and bits, the request's UUID, a reason in words),
never a key bit or a key ID list. :class:`RelayEvents` logs every event on the
``postprocessing.relay`` logger and, given a broker, publishes it on the station's
transitions topic ``<topic_root>/<station_id>/transitions`` (QoS 1, not retained) as a
second message kind beside the phase transitions (docs/mqtt.md, *Transitions*). Publishing
never holds the relay up: events queue (at most ``queue_max``, oldest dropped and counted)
and a background task sends them, reconnecting after a broker loss.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime
from typing import Annotated, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field

from postprocessing.channel.messages import NAME_PATTERN
from station.clock import Clock, RealClock

log = logging.getLogger("postprocessing.relay")

RelayStep = Literal["offered", "accepted", "requested", "announced", "recovered", "refused"]
_Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class KeyRelayEvent(BaseModel):
    """One step of the trusted-node relay at one station (numbers and IDs only).

    Steps at the offering station A: ``offered`` (blocks set aside and offered to the
    satellite for the partner), ``accepted`` (the satellite took them: they are now A's
    key with the partner). At the receiving station B: ``requested`` (asked the satellite
    for the partner's key), ``announced`` (the satellite's authenticated announcement
    arrived), ``recovered`` (the partner's key is stored under its key IDs). At either:
    ``refused`` (the satellite refused, the channel failed, or a check failed; nothing
    was stored or spent), with ``reason``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["relay"] = Field("relay", description="Message kind on P/transitions.")
    time: datetime = Field(description="When the step happened (station clock, UTC).")
    station_id: str = Field(description="The station whose relay component reports.")
    step: RelayStep = Field(description="offered | accepted | requested | announced | "
                            "recovered | refused.")
    role: Literal["offering", "receiving"] = Field(
        description="offering: this station gives key (A); receiving: it recovers it (B).")
    partner: _Name = Field(description="The other station of the relay.")
    satellite: _Name = Field(description="The trusted node relaying.")
    request_id: str | None = Field(None, max_length=36,
                                   description="UUID of the receiving station's request.")
    key_ids: int = Field(0, ge=0, description="Number of key IDs (blocks) in this step.")
    bits: int = Field(0, ge=0, description="Key bits in those blocks (a count, never bits).")
    reason: str | None = Field(None, max_length=300,
                               description="Why, for refused (words; no key material).")

    def log_line(self) -> str:
        text = (f"relay event {self.station_id}: {self.step} ({self.role}, partner "
                f"{self.partner}, via {self.satellite}): {self.key_ids} key IDs, {self.bits} bits")
        if self.request_id:
            text += f", request {self.request_id}"
        return text + (f": {self.reason}" if self.reason else "")


class RelayEvents:
    """A station's relay-event sink: logs each event, publishes it if a broker is given.

    ``emit`` never blocks. Use ``async with RelayEvents(...)`` (or :meth:`start` /
    :meth:`aclose`) when publishing; :meth:`aclose` sends what is queued, waiting at most
    ``flush_s`` wall seconds for the broker.
    """

    def __init__(self, station_id: str, *, clock: Clock | None = None,
                 mqtt: tuple[str, int] | None = None, topic_root: str = "qkd",
                 username: str | None = None, password: str | None = None,
                 queue_max: int = 1000, flush_s: float = 10.0):
        self.station_id = station_id
        self.clock = clock or RealClock()
        self.mqtt = mqtt
        self.topic = f"{topic_root}/{station_id}/transitions"
        self._auth = {"username": username, "password": password}
        self._queue: deque[KeyRelayEvent] = deque(maxlen=queue_max)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.flush_s = flush_s
        self.events: list[KeyRelayEvent] = []  # everything emitted (tests, the demo's summary)
        self.published = 0
        self.dropped = 0

    def emit(self, step: RelayStep, *, role: Literal["offering", "receiving"], partner: str,
             satellite: str, key_ids: int = 0, bits: int = 0, request_id: str | None = None,
             reason: str | None = None) -> KeyRelayEvent:
        """Record one step: log it now, queue it for the broker."""
        event = KeyRelayEvent(time=self.clock.now(), station_id=self.station_id, step=step,
                              role=role, partner=partner, satellite=satellite,
                              request_id=request_id, key_ids=key_ids, bits=bits,
                              reason=None if reason is None else reason[:300])
        log.log(logging.WARNING if step == "refused" else logging.INFO, "%s", event.log_line())
        self.events.append(event)
        if self.mqtt is not None:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(event)
            self._wake.set()
        return event

    async def start(self) -> None:
        if self.mqtt is not None and self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name=f"relay-events-{self.station_id}")

    async def aclose(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.flush_s)
        except TimeoutError:
            log.warning("relay events of %s: %d not published (broker unreachable)",
                        self.station_id, len(self._queue))
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def __aenter__(self) -> RelayEvents:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        assert self.mqtt is not None
        host, port = self.mqtt
        while True:
            try:
                async with aiomqtt.Client(host, port, identifier=f"{self.station_id}-relay-events",
                                          **self._auth) as client:
                    await self._send(client)
                    return
            except aiomqtt.MqttError as exc:
                log.warning("relay events of %s: broker %s:%d: %s; retrying", self.station_id,
                            host, port, exc)
                await asyncio.sleep(1.0)  # wall pacing of reconnects to a real broker

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            while self._queue:
                event = self._queue[0]
                await client.publish(self.topic, event.model_dump_json(), qos=1)
                self._queue.popleft()  # only once the broker has it
                self.published += 1
            if self._stop.is_set():
                return
            self._wake.clear()
            await self._wake.wait()


__all__ = ["KeyRelayEvent", "RelayEvents", "RelayStep"]
