"""The systemd watchdog is fed only while the supervisor's heartbeat is fresh."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from station.daemon.watchdog import Heartbeat, beat_period_s, feed_watchdog
from station.systemd import SystemdNotifier


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_a_silent_supervisor_starves_the_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval_s == 0.05
    assert beat_period_s(notifier) == 0.025  # the supervisor beats twice per feeding
    heartbeat = Heartbeat()
    feeder = asyncio.create_task(feed_watchdog(notifier, heartbeat))
    try:
        # Alive: the supervisor beats, the watchdog is fed.
        for _ in range(12):
            heartbeat.beat()
            await asyncio.sleep(0.025)
        alive = received(sock)
        assert alive.count("WATCHDOG=1") >= 3
        # Hung: no beats; after the grace of one interval, no more feeding.
        await asyncio.sleep(0.1)
        received(sock)
        await asyncio.sleep(0.3)
        assert received(sock) == []
        # Alive again: feeding resumes.
        for _ in range(8):
            heartbeat.beat()
            await asyncio.sleep(0.025)
        assert "WATCHDOG=1" in received(sock)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        notifier.close()
        sock.close()


def test_no_notify_socket_means_no_watchdog() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("ignored")  # a no-op, never an error


async def test_a_dead_mqtt_service_starves_the_watchdog_raises_an_alarm_and_says_offline(
        mosquitto, tmp_path: Path, caplog) -> None:
    """The daemon, in-process, on a real Mosquitto: its MQTT service task is killed from
    outside. The daemon notices: no more WATCHDOG=1, the mqtt.service alarm, and the
    retained status reads offline rather than a frozen online."""
    import logging
    import signal

    from station.daemon.app import Daemon
    from tests.daemon.station import SIM, sim_config
    from tests.mqtt.helpers import collector

    caplog.set_level(logging.INFO)
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
    cfg = sim_config(tmp_path, mosquitto.port,
                     clock={"mode": "simulated", "start": "2016-12-19T08:00:00Z", "speed": 1.0})
    daemon = Daemon(cfg, SIM, notifier=notifier)
    status = f"{cfg.topic_prefix}/status"
    run = asyncio.create_task(daemon.run(), name="test-daemon")
    try:
        async with collector(mosquitto.host, mosquitto.port, status) as col:
            await col.wait_for(lambda: col.payloads(status)[-1:] == [b"online"], timeout_s=60)
            async with asyncio.timeout(30):
                while "WATCHDOG=1" not in received(sock):
                    await asyncio.sleep(0.05)
            (service_task,) = [t for t in asyncio.all_tasks() if t.get_name() == "mqtt-service"]
            service_task.cancel()
            await col.wait_for(lambda: col.payloads(status)[-1:] == [b"offline"], timeout_s=30)
            # One feeding may have been under way; after that, none.
            await asyncio.sleep(0.3)
            received(sock)
            await asyncio.sleep(0.5)  # five watchdog intervals
            assert "WATCHDOG=1" not in received(sock)
        assert not run.done()  # the daemon itself lives on; systemd will restart it
        alarms = [r.getMessage() for r in caplog.records if r.name == "station.alarms"]
        assert any("alarm mqtt.service raised [critical]" in m and "cancelled" in m for m in alarms), alarms
    finally:
        daemon._request_stop(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await run == 0
        sock.close()
