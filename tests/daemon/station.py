"""Running the whole station in-process on a simulated clock, against real peers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from station.config import StationConfig, load_config
from station.daemon.app import assemble
from station.daemon.context import StationContext, clock_from_config
from station.daemon.supervisor import Supervisor
from station.mqtt.service import MqttService
from tests.conftest import REPO, free_port

SIM = REPO / "config" / "sim.toml"
MICIUS = "41731-20161219T164844Z"
#: A few minutes before Micius's prepare time (AOS 16:48:43 − 120 s).
BEFORE_MICIUS = "2016-12-19T16:45:30Z"


def sim_config(tmp_path: Path, broker_port: int, **overrides: Any) -> StationConfig:
    """config/sim.toml on a max-speed clock, with this test's broker, state dir and stream."""
    base: dict[str, Any] = {
        # A station id of the test's own: retained topics on the shared broker stay apart.
        "station_id": f"t{zlib.crc32(str(tmp_path).encode()):08x}",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"port": broker_port, "embedded": False},
        "events": {"stream_endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "clock": {"mode": "simulated", "start": BEFORE_MICIUS, "speed": "max"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_config(SIM, overrides=base)


@dataclass
class Recorder:
    """Every MQTT message under the station's prefix, as (topic, payload) in arrival order."""

    prefix: str
    messages: list[tuple[str, str]] = field(default_factory=list)

    def on(self, suffix: str) -> list[str]:
        topic = f"{self.prefix}/{suffix}"
        return [p for t, p in self.messages if t == topic]

    def json_on(self, suffix: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(suffix) if p]

    async def wait_json(self, suffix: str, predicate: Any, timeout_s: float = 15.0) -> dict[str, Any]:
        """The first JSON message on ``suffix`` that satisfies ``predicate``; waits (wall
        time) for the broker to deliver it."""
        async with asyncio.timeout(timeout_s):
            while True:
                for msg in self.json_on(suffix):
                    if predicate(msg):
                        return msg
                await asyncio.sleep(0.02)


async def _listen(port: int, prefix: str, rec: Recorder, ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"{prefix}/#", qos=1)
        ready.set()
        async for msg in client.messages:
            rec.messages.append((str(msg.topic), bytes(msg.payload).decode()))


@dataclass
class Running:
    ctx: StationContext
    supervisor: Supervisor
    mqtt: MqttService
    mqtt_log: Recorder

    async def next_pass(self, wall_timeout_s: float = 240.0) -> Any:
        """Wait (in wall time) for the next pass to end; its report."""
        sup = self.supervisor
        sup.slot.finished.clear()
        async with asyncio.timeout(wall_timeout_s):
            await sup.slot.finished.wait()
        return sup.reports[-1]


@contextlib.asynccontextmanager
async def running_station(cfg: StationConfig) -> AsyncIterator[Running]:
    """The station as `qkd-station run` assembles it, minus signals and systemd."""
    clock = clock_from_config(cfg.clock)
    ctx, supervisor, mqtt = assemble(cfg, clock)
    rec = Recorder(cfg.topic_prefix)
    ready = asyncio.Event()
    listener = asyncio.create_task(_listen(cfg.mqtt.port, cfg.topic_prefix, rec, ready),
                                   name="test-mqtt-listener")
    await asyncio.wait_for(ready.wait(), 10)
    await ctx.pipeline.start()
    try:
        async with mqtt:
            sup_task = asyncio.create_task(supervisor.run(), name="supervisor")
            try:
                # Ready as an operator would see it: drivers connected and a schedule made.
                async with asyncio.timeout(60):
                    while supervisor.schedule is None and not sup_task.done():
                        await asyncio.sleep(0.01)
                yield Running(ctx, supervisor, mqtt, rec)
            finally:
                sup_task.cancel()
                await asyncio.gather(sup_task, return_exceptions=True)
                await supervisor.shutdown()
                await mqtt.wait_drained()
    finally:
        await ctx.pipeline.stop()
        await ctx.close()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


def backend_of(ctx: StationContext) -> Any:
    """The mount backend behind the gate, for fault injection in tests only."""
    return ctx.mount._GatedMount__backend  # deliberately past the gate
