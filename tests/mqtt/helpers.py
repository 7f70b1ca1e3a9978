"""Helpers of the MQTT tests: station configs pointing at a real broker, a small station
that really drives the simulated mount, and a subscriber that collects messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from drivers.mount.sim import SimMount
from station.clock import SimClock
from station.config.mount import MountConfig
from station.config.mqtt import MqttConfig
from station.config.root import StationConfig
from station.config.site import SiteConfig
from station.config.timetagger import TimeTaggerConfig
from station.daemon.modes import Mode
from station.mqtt.commands import CommandRefused

START = datetime(2016, 12, 19, 16, 40, tzinfo=UTC)


def make_cfg(tmp_path: Path, host: str, port: int, *, station_id: str = "teststation",
             **mqtt: Any) -> StationConfig:
    """A station config talking to ``host:port``. Device sections are not validated here:
    these tests exercise MQTT only, and must not depend on every backend being present."""
    # model_construct: the MQTT and site sections are validated by their own models, while
    # the device sections are left alone (their backends belong to other tests).
    return StationConfig.model_construct(
        station_id=station_id,
        state_dir=tmp_path / "state",
        log_level="INFO",
        site=SiteConfig(name="Test site", latitude_deg=40.39587, longitude_deg=117.57746,
                        height_m=890),
        mqtt=MqttConfig(**{"host": host, "port": port, "reconnect_min_s": 0.05,
                           "reconnect_max_s": 0.5, **mqtt}),
        mount=MountConfig.model_construct(backend="sim", options={}),
        timetagger=TimeTaggerConfig.model_construct(backend="sim", options={}),
    )


class LabStation:
    """A small station-like controller implementing StationControl over a real SimMount.

    It keeps the rules a real daemon keeps (no operator motion in auto or safe mode, an
    elevation floor, passes that must exist), so replies can be checked against the
    mount's own record of accepted commands.
    """

    EL_FLOOR_DEG = 10.0

    def __init__(self, clock: SimClock):
        self.clock = clock
        self.mount = SimMount(SimMount.Options(), clock=clock)
        self.mode = Mode.MANUAL
        self.passes = {"41731-20161219T1655Z": "planned", "99001-20161219T1830Z": "skipped"}
        self.current_pass: str | None = "41731-20161219T1655Z"
        self.calls: list[tuple[str, Any]] = []
        self.reschedules = 0
        self.hold: asyncio.Event | None = None  # set by a test to hold goto "in flight"

    async def park(self) -> dict[str, Any]:
        self.calls.append(("park", None))
        await self.mount.park()
        return {"park_az_deg": self.mount.options.park_az_deg,
                "park_el_deg": self.mount.options.park_el_deg}

    async def stop(self) -> dict[str, Any]:
        self.calls.append(("stop", None))
        await self.mount.stop()
        return {"stopped": True}

    async def goto(self, az_deg: float, el_deg: float) -> dict[str, Any]:
        self.calls.append(("goto", (az_deg, el_deg)))
        if self.mode not in (Mode.MANUAL, Mode.MAINTENANCE):
            raise CommandRefused(f"goto refused: the station is in {self.mode} mode; "
                                 "set_mode manual first")
        if el_deg < self.EL_FLOOR_DEG:
            raise CommandRefused(f"goto refused by the safety gate: el {el_deg:.1f}° is below "
                                 f"the elevation limit {self.EL_FLOOR_DEG:.1f}°")
        if self.hold is not None:
            await self.hold.wait()
        await self.mount.slew_to(az_deg, el_deg)
        return {"az_deg": az_deg, "el_deg": el_deg}

    async def set_mode(self, mode: Mode) -> dict[str, Any]:
        self.calls.append(("set_mode", mode))
        previous, self.mode = self.mode, mode
        return {"mode": str(mode), "previous": str(previous)}

    async def skip_pass(self, pass_id: str) -> dict[str, Any]:
        self.calls.append(("skip_pass", pass_id))
        if pass_id not in self.passes:
            raise CommandRefused(f"no pass {pass_id!r} in the schedule")
        self.passes[pass_id] = "excluded"
        return {"pass_id": pass_id, "decision": "excluded"}

    async def include_pass(self, pass_id: str) -> dict[str, Any]:
        self.calls.append(("include_pass", pass_id))
        if pass_id not in self.passes:
            raise CommandRefused(f"no pass {pass_id!r} in the schedule")
        self.passes[pass_id] = "included"
        return {"pass_id": pass_id, "decision": "included"}

    async def abort_pass(self, reason: str) -> dict[str, Any]:
        self.calls.append(("abort_pass", reason))
        if self.current_pass is None:
            raise CommandRefused("no pass in progress")
        aborted, self.current_pass = self.current_pass, None
        await self.mount.park()
        return {"pass_id": aborted, "reason": reason}

    async def reload_elements(self) -> dict[str, Any]:
        self.calls.append(("reload_elements", None))
        return {"satellites": 2}

    async def reschedule(self) -> dict[str, Any]:
        self.calls.append(("reschedule", None))
        self.reschedules += 1
        return {"passes": len(self.passes)}


class Collector:
    """A real MQTT client collecting every message on some topics, for assertions."""

    def __init__(self, client: aiomqtt.Client):
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        async for m in self.client.messages:
            self.messages.append(m)
            self._changed.set()

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages if m.topic.value == topic]  # type: ignore[misc]

    def json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads(topic)]

    async def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> None:
        """Wait until ``predicate()`` is true; the timeout only stops a hung test."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def collector(host: str = "127.0.0.1", port: int = 1883, *topics: str,
                    **kwargs: Any) -> AsyncIterator[Collector]:
    """A connected :class:`Collector` subscribed to ``topics`` (QoS 1)."""
    if "hostname" in kwargs:
        host = kwargs.pop("hostname")
    topics = topics + tuple(kwargs.pop("topics", ()))
    async with aiomqtt.Client(host, port, **kwargs) as client:
        for t in topics:
            await client.subscribe(t, qos=1)
        col = Collector(client)
        task = asyncio.create_task(col._run(), name="test-collector")
        try:
            yield col
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
