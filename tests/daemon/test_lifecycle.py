"""The daemon as systemd and operators see it: a real subprocess, real broker, real socket."""

from __future__ import annotations

import re
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Broker, free_port, start_mosquitto
from tests.daemon.conftest import NotifySocket, copy_sim_config, sub_once

STATUS = "qkd/xinglong-sim/status"


def wait_status(port: int, want: str, timeout_s: float = 20.0) -> str:
    """The retained status once it reads ``want`` (or the last one seen at the deadline)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        got = sub_once(port, STATUS)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_presence_notify_and_sigterm(mosquitto: Broker, start_daemon, notify_socket: NotifySocket) -> None:
    d = start_daemon(mqtt_port=mosquitto.port, env={
        "NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"})
    notify_socket.wait_for("READY=1")
    # READY can come before the broker has the new retained status: an earlier test's
    # daemon (same station id, same broker) may have left "offline" there.
    assert wait_status(mosquitto.port, "online") == "online"
    state = sub_once(mosquitto.port, "qkd/xinglong-sim/state")
    assert '"mode":"auto"' in state and '"station_id":"xinglong-sim"' in state
    # The watchdog is fed at half of WATCHDOG_USEC (0.2 s) while the supervisor lives.
    notify_socket.drain(2.0)
    beats = [t for t, m in notify_socket.messages if "WATCHDOG=1" in m]
    assert len(beats) >= 5, notify_socket.messages
    period = statistics.median(b - a for a, b in zip(beats, beats[1:], strict=False))
    assert 0.1 <= period <= 0.4, f"watchdog period {period:.3f} s, expected about 0.2 s"
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0, d.log()[-3000:]
    notify_socket.wait_for("STOPPING=1", timeout_s=1)
    assert sub_once(mosquitto.port, STATUS) == "offline"
    assert "SIGTERM received: stopping" in d.log()


def test_sigkill_leaves_offline_through_the_will(fresh_mosquitto: Broker, start_daemon) -> None:
    d = start_daemon(mqtt_port=fresh_mosquitto.port)
    assert sub_once(fresh_mosquitto.port, STATUS) == "online"
    d.signal(signal.SIGKILL)
    d.wait(10)
    # Mosquitto publishes the will once it notices the dead connection (socket closed).
    assert sub_once(fresh_mosquitto.port, STATUS) == "offline"


def test_make_run_config_starts_its_embedded_broker(start_daemon) -> None:
    port = free_port()
    d = start_daemon(mqtt_port=port, embedded=True)
    d.wait_log("embedded MQTT broker (amqtt, MQTT 3.1.1) listening")
    assert sub_once(port, "qkd/+/status") == "online"
    d.signal(signal.SIGINT)
    assert d.wait(15) == 0, d.log()[-3000:]


def test_embedded_broker_port_taken_is_a_clear_error(mosquitto: Broker, start_daemon) -> None:
    d = start_daemon(mqtt_port=mosquitto.port, embedded=True)
    assert d.wait(30) == 3
    log = d.log()
    assert f"port {mosquitto.port}" in log and "QKD_STATION__MQTT__PORT" in log


def test_broker_down_at_start_does_not_stop_the_daemon(start_daemon, tmp_path: Path) -> None:
    port = free_port()
    d = start_daemon(mqtt_port=port)
    # The daemon comes up with nobody to talk to, then finds the broker when it appears.
    d.wait_log("daemon: ready")
    assert d.proc.poll() is None, d.log()
    broker = start_mosquitto(tmp_path, port=port)
    try:
        assert sub_once(port, STATUS, timeout_s=40) == "online"
    finally:
        d.signal(signal.SIGTERM)
        d.wait(15)
        broker.stop()


def test_sighup_reload_keeps_running_and_ignores_a_broken_config(
        mosquitto: Broker, start_daemon, tmp_path: Path, notify_socket: NotifySocket) -> None:
    config = copy_sim_config(tmp_path)
    d = start_daemon(mqtt_port=mosquitto.port, config=config,
                     env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1")
    config.write_text(config.read_text().replace('log_level = "INFO"', 'log_level = "LOUD"'))
    d.signal(signal.SIGHUP)
    d.wait_log("new configuration ignored")
    config.write_text(config.read_text().replace('log_level = "LOUD"', 'log_level = "INFO"'))
    d.signal(signal.SIGHUP)
    d.wait_log("configuration reloaded")
    assert d.proc.poll() is None
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    log = d.log()
    assert "new configuration ignored" in log and "log_level: 'LOUD'" in log
    assert "configuration reloaded" in log


def test_bad_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('station_id = "Bad Id!"\nstate_dir = "s"\n')
    res = subprocess.run([sys.executable, "-m", "station", "run", "--config", str(bad)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 2
    assert re.search(r"station_id: 'Bad Id!': String should match pattern", res.stderr)
    assert "site: (missing): Field required" in res.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (the unit is checked where it is)")
    unit = (REPO / "systemd" / "qkd-station.service").read_text()
    # Point ExecStart at this checkout's venv so verify can check the binary exists.
    exe = Path(sys.executable).parent / "qkd-station"
    unit = unit.replace("/opt/qkd-station/.venv/bin/qkd-station", str(exe))
    path = tmp_path / "qkd-station.service"
    path.write_text(unit)
    res = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict",
                      "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                      "DeviceAllow=char-ttyUSB rw", "SupplementaryGroups=dialout", "StateDirectory="):
        assert directive in unit
