"""The broker goes away mid-pass and comes back: the pass loop never waits on MQTT,
retained state is republished (the newest value), telemetry resumes, and alarms raised
while the broker was away are delivered afterwards."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import aiomqtt

from drivers.mount.sim import SimMount
from station.daemon.modes import Mode, Phase
from station.mqtt.messages import (
    AlarmMessage,
    ConfigSummary,
    MountTelemetry,
    PassProgress,
    StateMessage,
)
from station.mqtt.service import MqttService
from tests.conftest import free_port, start_mosquitto
from tests.mqtt.helpers import START, make_cfg

ID = "resilient"


def state(clock, phase: Phase, message: str = "") -> StateMessage:
    return StateMessage(
        time=clock.now(), station_id=ID, daemon_version="test", started_at=START,
        uptime_s=clock.now_s() - START.timestamp(), mode=Mode.AUTO, phase=phase,
        config=ConfigSummary(station_name="Test site", latitude_deg=40.4, longitude_deg=117.6,
                             height_m=890, clock_source="simulated", mount_backend="sim",
                             timetagger_backend="sim"),
        message=message,
    )


async def test_broker_restart_mid_pass(tmp_path, clock):
    port = free_port()
    # Persistence lets the test's subscriber keep its session across the restart, so it can
    # see what the station sends the moment it is back. The station itself relies on none.
    db = tmp_path / "db"
    db.mkdir()
    broker = start_mosquitto(tmp_path, port=port, extra_conf=(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {db}/\nautosave_interval 1\nautosave_on_changes true\n"))
    # The pass's mount: the simulated one, driven as a pass's control loop drives it.
    mount = SimMount(SimMount.Options(), clock=clock)
    await mount.connect()
    # The station retries every 1.5-2 s, the dashboard every 20 ms: after the restart the
    # dashboard is (almost always) subscribed again before the station sends what it
    # queued; its persistent session covers the rare other order.
    cfg = make_cfg(tmp_path, "127.0.0.1", port, station_id=ID, reconnect_min_s=1.5,
                   reconnect_max_s=2.0)
    received: list[aiomqtt.Message] = []
    got = asyncio.Event()

    async def subscribe() -> None:
        # A dashboard with a persistent session that keeps reconnecting.
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="dash-resilience",
                                          clean_session=False) as c:
                    await c.subscribe(f"qkd/{ID}/#", qos=1)
                    async for m in c.messages:
                        received.append(m)
                        got.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.02)

    def wait_for(pred, timeout_s=45.0):
        async def _w() -> None:
            async with asyncio.timeout(timeout_s):
                while not pred():
                    got.clear()
                    await got.wait()
        return _w()

    def on(topic: str) -> list[aiomqtt.Message]:
        return [m for m in received if m.topic.value == f"qkd/{ID}/{topic}"]

    sub = asyncio.create_task(subscribe(), name="test-dashboard")
    calls_while_down = 0
    try:
        async with MqttService(cfg, clock) as service:
            async with asyncio.timeout(10):
                await service.wait_connected()
            service.publish_state(state(clock, Phase.TRACK))
            await mount.slew_to(30.0, 60.0)
            await wait_for(lambda: on("state"))

            stop_loop = asyncio.Event()
            ticks = 0

            async def pass_loop() -> None:
                # The control loop of a pass: 5 Hz of station time, publishing every tick.
                nonlocal ticks, calls_while_down
                while not stop_loop.is_set():
                    await clock.advance(0.2)
                    pos = mount.true_position()
                    st = await mount.status()
                    service.publish_mount(MountTelemetry(
                        time=clock.now(), actual_az_deg=pos.az_deg, actual_el_deg=pos.el_deg,
                        commanded_az_deg=30.0, commanded_el_deg=60.0, moving=st.moving,
                        parked=st.parked, tracking=True, tracking_error_arcsec=1.0))
                    service.publish_pass_progress(PassProgress(
                        time=clock.now(), pass_id="p1", satellite="MICIUS", phase=Phase.TRACK,
                        elapsed_s=ticks * 0.2, events_recorded=ticks * 1000))
                    if not service.connected:
                        calls_while_down += 1
                    ticks += 1
                    await asyncio.sleep(0.005)  # wall pacing of this test loop only

            loop_task = asyncio.create_task(pass_loop(), name="test-pass-loop")
            await wait_for(lambda: len(on("mount")) >= 3)

            await asyncio.to_thread(broker.stop)
            ticks_at_stop = ticks
            for _ in range(1000):
                if not service.connected and ticks >= ticks_at_stop + 20:
                    break
                await asyncio.sleep(0.01)
            assert not service.connected and ticks >= ticks_at_stop + 20
            # While the broker is away: state changes, an alarm, and the loop goes on.
            service.publish_state(state(clock, Phase.TRACK, "broker was away"))
            service.publish_alarm(AlarmMessage(key="mqtt.test", state="raised", severity="warning",
                                               message="raised while the broker was away",
                                               time=clock.now()))
            down_at = clock.now()
            await asyncio.to_thread(broker.restart)

            await wait_for(lambda: any(json.loads(m.payload).get("message") == "broker was away"
                                       for m in on("state")))
            await wait_for(lambda: on("alarms"))
            await wait_for(lambda: any(
                json.loads(m.payload)["time"] > (down_at + timedelta(seconds=1)).isoformat()[:19]
                for m in on("mount")))
            stop_loop.set()
            await loop_task
            assert [m.payload for m in on("status")][-1] == b"online"
            assert json.loads(on("alarms")[0].payload)["message"] == "raised while the broker was away"
            assert service.stats.disconnects >= 1 and service.stats.connects >= 2
            assert calls_while_down > 0   # the loop kept publishing while nothing could be sent
            # The pass went on: the mount reached its target during and after the outage.
            pos = mount.true_position()
            assert abs(pos.az_deg - 30.0) < 0.01 and abs(pos.el_deg - 60.0) < 0.01
    finally:
        sub.cancel()
        await asyncio.gather(sub, return_exceptions=True)
        broker.stop()
        await mount.close()


async def test_queue_bounds_coalescing_and_drops_are_counted(tmp_path, clock):
    # No broker at all: everything queues, nothing blocks, every loss is counted.
    cfg = make_cfg(tmp_path, "127.0.0.1", free_port(), station_id=ID, queue_max=10,
                   telemetry_tracking_hz=5.0)
    service = MqttService(cfg, clock)
    for i in range(25):
        service.publish_alarm(AlarmMessage(key=f"a{i}", state="raised", severity="info",
                                           message="x", time=clock.now()))
    assert len(service.outbox.alarms) == 10 and service.stats.dropped == 15
    assert service.outbox.alarms[0].payload.startswith(b'{"key":"a15"')  # the newest are kept

    def mount(t):
        return MountTelemetry(time=clock.now(), actual_az_deg=t, actual_el_deg=0, moving=True,
                              parked=False, tracking=True)

    assert service.publish_mount(mount(1.0))
    assert not service.publish_mount(mount(2.0))      # same instant: thinned
    await clock.advance(0.2)
    assert service.publish_mount(mount(3.0))          # 5 Hz: taken, replaces the unsent 1.0
    assert service.stats.telemetry_throttled == 1 and service.stats.telemetry_coalesced == 1
    assert json.loads(service.outbox.latest[f"qkd/{ID}/mount"])["actual_az_deg"] == 3.0


async def test_a_session_ends_even_if_a_subtask_swallows_its_cancellation():
    # Python 3.11's wait_for (inside aiomqtt's publish) can swallow a cancellation that
    # races with the PUBACK. The session must still end, or the service hangs.
    from station.mqtt.connection import _cancel_all

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed += 1  # as a racing wait_for would: the cancel is lost
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn(), name="test-stubborn")
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await _cancel_all([task])
    assert task.cancelled() and swallowed == 1
