"""``qkd-station monitor`` and ``qkd-station cmd`` against a real Mosquitto."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from station.cli.monitor import StationView, render_text, watch
from station.mqtt.client import load_client_settings
from station.mqtt.service import MqttService
from tests.conftest import subprocess_env
from tests.mqtt.helpers import START, collector, make_cfg, pass_in_progress

TOPIC = {"state": "state", "schedule": "schedule", "mount": "mount", "timetagger": "timetagger",
         "pass": "pass", "health": "health"}


def client_config(tmp_path: Path, broker, station_id: str) -> Path:
    path = tmp_path / "client.toml"
    # Only station_id and [mqtt] matter to the clients; the device sections may be anything.
    path.write_text(f'station_id = "{station_id}"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                    '[timetagger]\nbackend = "not-installed-here"\n')
    return path


async def publish_pass(broker, station_id: str) -> None:
    samples = pass_in_progress(START)
    async with collector(broker.host, broker.port) as pub:
        await pub.client.publish(f"qkd/{station_id}/status", b"online", qos=1, retain=True)
        for name, topic in TOPIC.items():
            await pub.client.publish(f"qkd/{station_id}/{topic}", samples[name].model_dump_json(),
                                     qos=1, retain=True)


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=subprocess_env())
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_monitor_renders_a_pass_in_progress(mosquitto, tmp_path):
    station_id = "monitor-live"
    await publish_pass(mosquitto, station_id)
    settings = load_client_settings(client_config(tmp_path, mosquitto, station_id))
    view = StationView(station_id)
    updated = asyncio.Event()
    task = asyncio.create_task(watch(settings, view, stop_when_state=False, duration_s=None,
                                     on_update=updated.set), name="test-monitor")
    try:
        async with asyncio.timeout(10):
            while not view.has_state or len(view.latest) < len(TOPIC):
                updated.clear()
                await updated.wait()
        alarm = pass_in_progress(START)["alarm"]
        async with collector(mosquitto.host, mosquitto.port) as pub:
            await pub.client.publish(f"qkd/{station_id}/alarms", alarm.model_dump_json(), qos=1)
            await pub.client.publish(f"qkd/{station_id}/mount", b'{"garbage": 1}', qos=1)
        async with asyncio.timeout(10):
            while not view.active_alarms or not view.bad_payloads:
                updated.clear()
                await updated.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    text = render_text(view, width=140)
    for expected in [
        "QKD station monitor-live — Xinglong (NAOC), simulated", "ONLINE",
        "AUTO", "phase TRACK", "uptime 0:20:00",
        "MICIUS (41731-20161219T1655Z)", "max el 61.3°", "elapsed 190 s  remaining 260 s",
        "SIM-MICROSAT", "max el 34.0°  in 1:35:00", "az  213.451°  el  48.207°", "error 7.8 arcsec", "tracking moving",
        "H 5,210  V 4,980  D 5,102  A 5,033  SYNC 100,000  PPS 1", "ACQUIRING", "overflow no",
        "recorded 2,650,000  streamed 2,649,000  lost 0", "range 700 km",
        "mount up, timetagger up", "disk free 120.0 GB (pass needs 180.0 MB)", "time ref locked",
        "WARNING timetagger.rate_low: H rate 20% below expectation",
        "1 unreadable message(s)",
        "16:37:50Z MICIUS         max el 61.3°  planned  highest priority",
        "skipped  max elevation below 40°",
    ]:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert "\x1b[" not in text


async def test_monitor_once_cli(mosquitto, tmp_path):
    station_id = "monitor-once"
    await publish_pass(mosquitto, station_id)
    code, out, err = await run_cli("monitor", "--once", "--config",
                                   str(client_config(tmp_path, mosquitto, station_id)))
    assert code == 0, err
    assert "QKD station monitor-once" in out and "ONLINE" in out and "MICIUS" in out
    code, out, err = await run_cli("monitor", "--once", "--duration", "0.5", "--station", "nobody",
                                   "--config", str(client_config(tmp_path, mosquitto, station_id)))
    assert code == 1 and "no retained state from qkd/nobody" in err


async def test_cmd_cli_round_trip(mosquitto, tmp_path, clock, station):
    station_id = "cmd-cli"
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id=station_id)
    conf = str(client_config(tmp_path, mosquitto, station_id))
    async with MqttService(cfg, clock, station) as svc:
        async with asyncio.timeout(10):
            await svc.wait_connected()
        code, out, err = await run_cli("cmd", "goto", "az_deg=120", "el_deg=45", "--config", conf)
        assert (code, out.strip()) == (0, 'ok: goto {"az_deg": 120.0, "el_deg": 45.0, "accepted": true}'), err
        assert station.mount.commands[-1].kind == "slew"
        code, out, _ = await run_cli("cmd", "goto", "az_deg=120", "el_deg=2", "--config", conf)
        assert code == 1 and out.startswith("error [refused]: goto refused by the safety gate")
        code, out, _ = await run_cli("cmd", "set_mode", "mode=turbo", "--config", conf)
        assert code == 1 and "error [invalid_request]" in out and "'turbo'" in out
        code, out, _ = await run_cli("cmd", "abort_pass", "reason=clouds over the site", "--json",
                                     "--config", conf)
        # No pass is in progress on the station: the JSON reply carries the refusal.
        assert code == 1 and '"code": "refused"' in out and "no pass is in progress" in out
    # The station is gone (offline retained): the CLI says so instead of hanging.
    code, _, err = await run_cli("cmd", "park", "--timeout-s", "1", "--config", conf)
    assert code == 4 and "the station is offline" in err
    code, _, err = await run_cli("cmd", "fly", "--config", conf)
    assert code == 2 and "unknown verb 'fly'" in err
