"""Helpers of the MQTT tests: station configs pointing at a real broker, the real
station's operator commands with a record of what reached them, and a subscriber that
collects messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from station.clock import SimClock
from station.config import load_config
from station.config.mount import MountConfig
from station.config.mqtt import MqttConfig
from station.config.root import StationConfig
from station.config.site import SiteConfig
from station.config.timetagger import TimeTaggerConfig
from station.daemon.alarms import AlarmBook
from station.daemon.context import StationContext
from station.daemon.modes import Mode
from station.daemon.supervisor import Supervisor
from station.mqtt.messages import (
    AbortPassResult,
    GotoResult,
    IncludePassResult,
    ParkResult,
    ReloadElementsResult,
    RescheduleResult,
    SetModeResult,
    SkipPassResult,
    StopResult,
)
from tests.conftest import REPO

SIM = REPO / "config" / "sim.toml"

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


class CommandedStation:
    """The real operator commands of a real station, for the MQTT transport tests.

    The station is built from ``config/sim.toml`` as ``run`` builds it (devices through the
    registry, the mount behind the safety gate) on the test's clock, in manual mode, with
    its mount connected and a plan made; its :class:`~station.daemon.control.OperatorControl`
    answers. Nothing here re-implements a rule or a reply: this class only records which
    verbs reached the station (``calls``) and can hold a ``goto`` in flight (``hold``), so
    the transport tests can say what ran. The command rules themselves are tested end to
    end in ``tests/mqtt/test_commands.py`` on the whole running station.
    """

    def __init__(self, clock: SimClock, state_dir: Path):
        cfg = load_config(SIM, overrides={
            "station_id": "commanded", "state_dir": str(state_dir),
            # A short plan keeps the many small "reschedule" pings cheap.
            "operations": {"start_mode": "manual", "plan_hours": 1.0},
        })
        self.clock = clock
        self.ctx = StationContext.build(cfg, clock, AlarmBook(clock.now))
        self.supervisor = Supervisor(self.ctx)
        self.control = self.supervisor.control
        self.calls: list[tuple[str, Any]] = []
        self.reschedules = 0
        self.hold: asyncio.Event | None = None  # set by a test to hold goto "in flight"

    @property
    def mount(self) -> Any:
        """The simulated mount behind the gate: its ``commands`` are what really moved."""
        return self.ctx.mount._GatedMount__backend  # type: ignore[attr-defined]  # past the gate, to read only

    async def start(self) -> None:
        assert await self.ctx.connect("mount")
        await self.supervisor.replan()
        self.mount.commands.clear()  # what the tests cause, not the start-up

    async def close(self) -> None:
        await self.ctx.close()

    def pass_ids(self) -> list[str]:
        sched = self.supervisor.schedule
        return [p.pass_id for p in sched.passes] if sched else []

    async def park(self) -> ParkResult:
        self.calls.append(("park", None))
        return await self.control.park()

    async def stop(self) -> StopResult:
        self.calls.append(("stop", None))
        return await self.control.stop()

    async def goto(self, az_deg: float, el_deg: float) -> GotoResult:
        self.calls.append(("goto", (az_deg, el_deg)))
        if self.hold is not None:
            await self.hold.wait()
        return await self.control.goto(az_deg, el_deg)

    async def set_mode(self, mode: Mode) -> SetModeResult:
        self.calls.append(("set_mode", mode))
        return await self.control.set_mode(mode)

    async def skip_pass(self, pass_id: str) -> SkipPassResult:
        self.calls.append(("skip_pass", pass_id))
        return await self.control.skip_pass(pass_id)

    async def include_pass(self, pass_id: str) -> IncludePassResult:
        self.calls.append(("include_pass", pass_id))
        return await self.control.include_pass(pass_id)

    async def abort_pass(self, reason: str) -> AbortPassResult:
        self.calls.append(("abort_pass", reason))
        return await self.control.abort_pass(reason)

    async def reload_elements(self) -> ReloadElementsResult:
        self.calls.append(("reload_elements", None))
        return await self.control.reload_elements()

    async def reschedule(self) -> RescheduleResult:
        self.calls.append(("reschedule", None))
        self.reschedules += 1
        return await self.control.reschedule()


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


def pass_in_progress(now: datetime) -> dict[str, Any]:
    """Realistic payload models of a Micius pass in progress, by schema name."""
    from datetime import timedelta

    from station.daemon.modes import Outcome, Phase
    from station.mqtt import messages as m

    aos = now - timedelta(seconds=130)
    los = aos + timedelta(seconds=390)
    ref = m.PassRef(pass_id="41731-20161219T1655Z", satellite="MICIUS", norad_id=41731, aos=aos,
                    tca=aos + timedelta(seconds=195), los=los, max_el_deg=61.3)
    nxt = m.PassRef(pass_id="99001-20161219T1830Z", satellite="SIM-MICROSAT", norad_id=99001,
                    aos=now + timedelta(hours=1, minutes=35), los=now + timedelta(hours=1, minutes=41),
                    max_el_deg=34.0)
    conf = m.ConfigSummary(station_name="Xinglong (NAOC), simulated", latitude_deg=40.39587,
                           longitude_deg=117.57746, height_m=890, clock_source="simulated",
                           clock_speed=10, mount_backend="sim", timetagger_backend="sim")
    return {
        "state": m.StateMessage(time=now, station_id="xinglong-sim", daemon_version="0.1.0",
                                started_at=now - timedelta(minutes=20), uptime_s=1200,
                                mode=Mode.AUTO, phase=Phase.TRACK, current_pass=ref,
                                next_pass=nxt, config=conf),
        "schedule": m.ScheduleMessage(time=now, horizon_end=now + timedelta(hours=24), passes=[
            m.ScheduledPass(**ref.model_dump(), decision="planned", reason="highest priority", priority=2.0),
            m.ScheduledPass(**nxt.model_dump(), decision="skipped", reason="max elevation below 40°"),
        ]),
        "mount": m.MountTelemetry(time=now, actual_az_deg=213.4512, actual_el_deg=48.2071,
                                  commanded_az_deg=213.4530, commanded_el_deg=48.2080,
                                  target_az_deg=213.4529, target_el_deg=48.2079,
                                  tracking_error_arcsec=7.8, moving=True, parked=False, tracking=True),
        "timetagger": m.TimeTaggerTelemetry(time=now, acquiring=True, window_s=1.0,
                                            rates_hz={"H": 5210.0, "V": 4980.5, "D": 5102.0,
                                                      "A": 5033.0, "SYNC": 100e6 / 1000, "PPS": 1.0},
                                            overflow=False, events_total=2_650_000),
        "pass": m.PassProgress(time=now, pass_id=ref.pass_id, satellite="MICIUS", phase=Phase.TRACK,
                               elapsed_s=190.0, remaining_s=260.0, el_deg=48.2, range_km=700.5,
                               events_recorded=2_650_000, events_streamed=2_649_000, events_lost=0),
        "health": m.HealthMessage(time=now, drivers=[m.DriverHealth(name="mount", connected=True),
                                                     m.DriverHealth(name="timetagger", connected=True)],
                                  elements=[m.ElementAge(norad_id=41731, satellite="MICIUS",
                                                         epoch=now - timedelta(days=1.2), age_days=1.2)],
                                  disk_free_bytes=120_000_000_000, expected_pass_bytes=180_000_000,
                                  time_reference_locked=True, stream_consumer_connected=True, ok=True),
        "alarm": m.AlarmMessage(key="timetagger.rate_low", state="raised", severity="warning",
                                message="H rate 20% below expectation", time=now, pass_id=ref.pass_id),
        "pass_summary": m.PassSummary(pass_id="41731-20161218T1655Z", satellite="MICIUS", norad_id=41731,
                                      outcome=Outcome.COMPLETED, planned_aos=aos - timedelta(days=1),
                                      planned_los=los - timedelta(days=1),
                                      counts_by_channel={"H": 1_200_000, "V": 1_150_000},
                                      events_recorded=2_350_000, events_streamed=2_350_000,
                                      tracking_error=m.TrackingErrorStats(rms_arcsec=6.1, p95_arcsec=11.0,
                                                                          max_arcsec=30.2, samples=1950),
                                      file_path="/var/lib/qkd-station/passes/41731-20161218T1655Z.qkdpass"),
        "reply": m.CommandReply(request_id="op-1", verb="goto", ok=False, time=now,
                                error=m.CommandError(code="refused", message="auto mode")),
        "cmd_goto": m.GotoRequest(request_id="op-2", az_deg=120.0, el_deg=45.0),
    }
