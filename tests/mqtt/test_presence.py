"""Presence against a real Mosquitto: retained online, offline on clean stop, the last
will on a crash, a broker that is down at start-up, and the embedded amqtt broker."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiomqtt
import pytest

from station.clock import SimClock
from station.mqtt.broker import BrokerStartError, EmbeddedBroker
from station.mqtt.service import ConnState, MqttService, backoff_delays
from tests.conftest import free_port, start_mosquitto, subprocess_env
from tests.mqtt.helpers import START, collector, make_cfg


async def retained(host: str, port: int, topic: str) -> bytes | None:
    """The retained message on ``topic`` as a newly connecting subscriber sees it."""
    async with collector(host, port, topic) as col:
        try:
            await col.wait_for(lambda: col.messages, timeout_s=1.0)
        except TimeoutError:
            return None  # nothing retained there: the broker sends nothing
        assert col.messages[0].retain
        return col.messages[0].payload  # type: ignore[return-value]


async def test_online_while_connected_offline_after_clean_stop(mosquitto, tmp_path):
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id="presence-clean")
    async with MqttService(cfg, SimClock(START, manual=True)) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        assert service.state is ConnState.CONNECTED
        assert await retained(mosquitto.host, mosquitto.port, "qkd/presence-clean/status") == b"online"
    assert service.state is ConnState.STOPPED
    assert await retained(mosquitto.host, mosquitto.port, "qkd/presence-clean/status") == b"offline"


async def test_last_will_gives_offline_when_the_process_dies(mosquitto, tmp_path):
    station_id = "presence-killed"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("_station_proc.py")), mosquitto.host,
        str(mosquitto.port), station_id, str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=subprocess_env(),
    )
    try:
        async with collector(mosquitto.host, mosquitto.port, f"qkd/{station_id}/status") as col:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"connected", (await proc.stderr.read()).decode()
            await col.wait_for(lambda: b"online" in col.payloads(f"qkd/{station_id}/status"))
            proc.kill()  # no DISCONNECT packet: only the will can say offline
            await proc.wait()
            await col.wait_for(lambda: col.payloads(f"qkd/{station_id}/status")[-1:] == [b"offline"])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await retained(mosquitto.host, mosquitto.port, f"qkd/{station_id}/status") == b"offline"


async def test_broker_down_at_start_up_does_not_stop_the_service(tmp_path):
    port = free_port()
    cfg = make_cfg(tmp_path, "127.0.0.1", port, station_id="presence-late")
    async with MqttService(cfg, SimClock(START, manual=True)) as service:
        # Publishing while no broker exists is accepted and queued, never raising.
        service.set_retained("state", {"mode": "auto"})
        for _ in range(200):
            if service.stats.connect_failures >= 2:
                break
            await asyncio.sleep(0.05)
        assert service.stats.connect_failures >= 2
        assert not service.connected
        broker = start_mosquitto(tmp_path, port=port)
        try:
            async with asyncio.timeout(10):
                await service.wait_connected()
            async with collector(broker.host, port, "qkd/presence-late/#") as col:
                await col.wait_for(lambda: col.payloads("qkd/presence-late/state"))
                assert col.json("qkd/presence-late/state") == [{"mode": "auto"}]
                assert col.payloads("qkd/presence-late/status") == [b"online"]
        finally:
            await service.stop()
            broker.stop()


def test_backoff_is_exponential_capped_and_jittered():
    delays = backoff_delays(0.5, 4.0)
    got = [next(delays) for _ in range(40)]
    assert all(0.25 <= d <= 4.0 for d in got)
    assert got[0] <= 0.5 and max(got[5:]) > 2.0     # it grows ...
    assert max(got) <= 4.0                          # ... up to the cap
    assert len({round(d, 6) for d in got[10:]}) > 1  # and is not lock-step


async def test_embedded_broker_serves_status_to_a_plain_client(tmp_path):
    port = free_port()
    cfg = make_cfg(tmp_path, "127.0.0.1", port, station_id="embedded", embedded=True)
    async with MqttService(cfg, SimClock(START, manual=True)) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        async with collector("127.0.0.1", port, "qkd/+/status") as col:
            await col.wait_for(lambda: col.messages)
            assert col.payloads("qkd/embedded/status") == [b"online"]
    with pytest.raises(aiomqtt.MqttError):  # the broker went away with the service
        async with aiomqtt.Client("127.0.0.1", port, timeout=2):
            pass


async def test_embedded_broker_port_taken_names_the_port_and_the_fix(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerStartError) as err:
            await EmbeddedBroker("127.0.0.1", port).start()
    text = str(err.value)
    assert f"port {port}" in text and "mqtt.port" in text and "QKD_STATION__MQTT__PORT" in text


@pytest.mark.parametrize("content", [None, ""])
async def test_a_bad_password_file_is_reported_and_retried_not_fatal(mosquitto, tmp_path, content):
    pw = tmp_path / "pw"
    if content is not None:
        pw.write_text(content)
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id="badpw",
                   username="station", password_file=pw)
    async with MqttService(cfg, SimClock(START, manual=True)) as service:
        for _ in range(200):
            if service.stats.connect_failures >= 2:
                break
            await asyncio.sleep(0.02)
        assert service.stats.connect_failures >= 2 and service.state is not ConnState.STOPPED
        assert "mqtt.password_file" in service.stats.last_error
        pw.write_text("anything\n")  # the anonymous test broker accepts any password
        async with asyncio.timeout(10):
            await service.wait_connected()
