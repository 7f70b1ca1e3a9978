"""Key-store levels on MQTT: numbers only, with a low-store alarm per peer.

The KME process publishes, under the station's topics (docs/mqtt.md, ``P`` =
``<topic_root>/<station_id>``):

- ``P/keys/levels`` (retained, QoS 1): :class:`KeyLevels` — per peer the available bits and
  blocks, reserved and consumed blocks, and ``low``; on every change and at least every
  ``interval_s``;
- ``P/alarms`` (QoS 1): the station's alarm format, key ``keys.low.<peer>``, ``raised``
  when a peer's available bits fall below ``low_store_bits`` and ``cleared`` when they are
  back at or above it.

Never a key bit: the payloads are built from :meth:`KeyStore.level` alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

import aiomqtt
from pydantic import BaseModel, Field

from postprocessing.keystore import KeyStore
from station.clock import Clock, RealClock
from station.config.base import Strict

log = logging.getLogger("postprocessing.kme")


class LevelsMqttConfig(Strict):
    """Where and how often the KME publishes its store's levels."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    topic_root: str = "qkd"
    station_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    low_store_bits: int = Field(4096, ge=0, description="Alarm below this many available bits.")
    interval_s: float = Field(10.0, gt=0)
    peers: list[str] = Field(default_factory=list,
                             description="Peers always reported (even when empty); others as found.")


class PeerLevel(BaseModel):
    peer: str
    available_bits: int
    available_blocks: int
    reserved_blocks: int
    consumed_blocks: int
    low: bool


class KeyLevels(BaseModel):
    """Payload of ``P/keys/levels``."""

    time: datetime
    station_id: str
    low_store_bits: int
    peers: list[PeerLevel]


def key_levels(store: KeyStore, cfg: LevelsMqttConfig, now: datetime) -> KeyLevels:
    """The levels of every peer in ``store`` (and of ``cfg.peers``), numbers only."""
    names = sorted(set(store.peers()) | set(cfg.peers))
    peers = []
    for name in names:
        lvl = store.level(name)
        peers.append(PeerLevel(
            peer=name, available_bits=lvl.available_bits, available_blocks=lvl.available_blocks,
            reserved_blocks=lvl.reserved_blocks, consumed_blocks=lvl.consumed_blocks,
            low=lvl.available_bits < cfg.low_store_bits))
    return KeyLevels(time=now, station_id=cfg.station_id, low_store_bits=cfg.low_store_bits,
                     peers=peers)


class LevelsPublisher:
    """Publishes :class:`KeyLevels` and low-store alarms until stopped."""

    def __init__(self, store: KeyStore, cfg: LevelsMqttConfig, *, clock: Clock | None = None):
        self.store = store
        self.cfg = cfg
        self.clock = clock or RealClock()
        self.prefix = f"{cfg.topic_root}/{cfg.station_id}"
        self._low: dict[str, bool] = {}
        self._last: list[PeerLevel] | None = None
        self.changed = asyncio.Event()  # set by the KME after each delivery
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (reconnecting with a pause after a loss) and publish until ``stop``."""
        while not stop.is_set():
            try:
                async with aiomqtt.Client(self.cfg.host, self.cfg.port,
                                          username=self.cfg.username,
                                          password=self.cfg.password,
                                          identifier=f"{self.cfg.station_id}-kme-levels") as client:
                    self._last = None  # publish at once on every (re)connect
                    await self._loop(client, stop)
            except aiomqtt.MqttError as exc:
                log.warning("key levels: MQTT broker %s:%d: %s; retrying", self.cfg.host,
                            self.cfg.port, exc)
                try:
                    await asyncio.wait_for(stop.wait(), 2.0)
                except TimeoutError:
                    pass

    async def _loop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while True:
            self.changed.clear()
            await self.publish_once(client)
            if stop.is_set():  # one last publish on the way out: the final levels
                return
            stop_wait = asyncio.ensure_future(stop.wait())
            change_wait = asyncio.ensure_future(self.changed.wait())
            try:
                # The interval is wall time: a KME serves on the real clock.
                await asyncio.wait({stop_wait, change_wait}, timeout=self.cfg.interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
                change_wait.cancel()

    async def publish_once(self, client: aiomqtt.Client, *, force: bool = True) -> KeyLevels:
        levels = await asyncio.to_thread(key_levels, self.store, self.cfg, self.clock.now())
        if force or levels.peers != self._last:
            await client.publish(f"{self.prefix}/keys/levels", levels.model_dump_json(),
                                 qos=1, retain=True)
            self.published += 1
        self._last = levels.peers
        for p in levels.peers:
            was = self._low.get(p.peer, False)
            if p.low != was or (p.low and p.peer not in self._low):
                await self._alarm(client, p, levels.time)
            self._low[p.peer] = p.low
        return levels

    async def _alarm(self, client: aiomqtt.Client, p: PeerLevel, now: datetime) -> None:
        state = "raised" if p.low else "cleared"
        body = {
            "key": f"keys.low.{p.peer}", "state": state, "severity": "warning",
            "message": (f"key store for {p.peer}: {p.available_bits} bits available, "
                        f"{'below' if p.low else 'back at or above'} the "
                        f"{self.cfg.low_store_bits}-bit threshold"),
            "time": now.isoformat().replace("+00:00", "Z"), "pass_id": None,
        }
        await client.publish(f"{self.prefix}/alarms", json.dumps(body), qos=1)
        log.log(logging.WARNING if p.low else logging.INFO, "alarm %s %s: %s", body["key"],
                state, body["message"])
