"""``qkd-station monitor`` shows the key-store levels the KME publishes, and the low alarm,
read from a real Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import numpy as np

from postprocessing.keystore import KeyStore
from postprocessing.kme.levels import LevelsMqttConfig, LevelsPublisher
from station.cli.monitor import StationView, render_text, watch
from station.mqtt.client import load_client_settings


def client_config(tmp_path: Path, broker, station_id: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(f'station_id = "{station_id}"\n[mqtt]\nhost = "{broker.host}"\n'
                    f'port = {broker.port}\n[timetagger]\nbackend = "not-installed-here"\n')
    return path


async def test_monitor_shows_levels_per_peer_and_the_low_alarm(mosquitto, tmp_path):
    station_id = "monitor-keys"
    with KeyStore(tmp_path / "keys") as store:
        rng = np.random.default_rng(5)
        store.deposit("jinan1-sim", "pass-1", rng.integers(0, 2, 40 * 256, dtype=np.uint8))
        store.deposit("stellenbosch-sim", "relay-1", rng.integers(0, 2, 3 * 256, dtype=np.uint8))
        store.reserve("jinan1-sim", 2, holder="a>b")
        store.take("jinan1-sim", 1, purpose="test")
        cfg = LevelsMqttConfig(host=mosquitto.host, port=mosquitto.port, station_id=station_id,
                               low_store_bits=4096, peers=["jinan1-sim", "stellenbosch-sim"])
        publisher = LevelsPublisher(store, cfg)

        settings = load_client_settings(client_config(tmp_path, mosquitto, station_id))
        view = StationView(station_id)
        updated = asyncio.Event()
        task = asyncio.create_task(watch(settings, view, stop_when_state=False, duration_s=None,
                                         on_update=updated.set), name="test-monitor-keys")
        try:
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                await asyncio.sleep(0)  # (the subscription is checked by waiting below)
                async with asyncio.timeout(30):
                    while "keys/levels" not in view.latest or not view.active_alarms:
                        await publisher.publish_once(client)
                        updated.clear()
                        try:
                            async with asyncio.timeout(2):
                                await updated.wait()
                        except TimeoutError:
                            pass
                        publisher._low.clear()  # the alarm again, should the monitor have missed it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    text = render_text(view, width=160)
    assert "Key store" in text
    assert "jinan1-sim" in text and "9,472 bits" in text and "37 blocks" in text, text
    assert "reserved 2  consumed 1" in text, text
    stellenbosch = next(line for line in text.splitlines() if "stellenbosch-sim" in line
                        and "bits" in line and "Alarm" not in line)
    assert "768 bits" in stellenbosch and "LOW (< 4,096 bits)" in stellenbosch, text
    assert "LOW" not in next(line for line in text.splitlines() if "jinan1-sim" in line)
    assert "WARNING keys.low.stellenbosch-sim: key store for stellenbosch-sim: 768 bits" in text


def test_monitor_without_levels_shows_no_key_rows():
    assert "Key store" not in render_text(StationView("nothing-yet"))
