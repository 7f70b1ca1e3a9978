"""Bad element files never stop the daemon (issue 11 §4), seen as systemd would see it.

A real `qkd-station run` subprocess, a real Mosquitto, the real SIGHUP path. The hostile
files (JSON 10,000 levels deep, a 5,000-digit MEAN_MOTION) are generated here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Broker, find_tool
from tests.daemon.conftest import NotifySocket, copy_sim_config

MICIUS = "41731-20161219T164844Z"
ALARMS = "qkd/xinglong-sim/alarms"


def _deep_json() -> bytes:
    return b"[" * 10_000


def _huge_number_json() -> bytes:
    return ('[{"OBJECT_NAME": "X", "NORAD_CAT_ID": 41731, "EPOCH": "2016-12-18T21:38:11",'
            f' "MEAN_MOTION": {"1" * 5000}, "ECCENTRICITY": 0.001, "INCLINATION": 97.4,'
            ' "RA_OF_ASC_NODE": 1, "ARG_OF_PERICENTER": 1, "MEAN_ANOMALY": 1, "BSTAR": 0}]').encode()


class AlarmListener:
    """mosquitto_sub on the station's alarms topic, from before the daemon starts."""

    def __init__(self, port: int, out: Path):
        self.out = out
        self._fh = open(out, "w")
        probe = f"test/probe/{uuid.uuid4().hex}"
        self.proc = subprocess.Popen([find_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port),
                                      "-t", ALARMS, "-t", probe, "-q", "1"], stdout=self._fh, text=True)
        # Subscribed once our own probe comes back (alarms are not retained).
        deadline = time.monotonic() + 30
        while "probe" not in out.read_text():
            assert time.monotonic() < deadline, "mosquitto_sub did not subscribe within 30 s"
            subprocess.run([find_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port),
                            "-t", probe, "-m", "probe"], check=True, timeout=10)
            self._wait_output(0.2)

    def _wait_output(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and "probe" not in self.out.read_text():
            time.sleep(0.02)

    def messages(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines()
                if line.startswith("{")]

    def wait_for(self, predicate, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in self.messages():
                if predicate(msg):
                    return msg
            time.sleep(0.05)
        raise AssertionError(f"no matching alarm within {timeout_s} s: {self.messages()}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._fh.close()


@pytest.fixture
def alarms(mosquitto: Broker, tmp_path: Path):
    listener = AlarmListener(mosquitto.port, tmp_path / "alarms.jsonl")
    yield listener
    listener.close()


@pytest.mark.parametrize("payload", [_deep_json, _huge_number_json], ids=["deep", "huge-number"])
def test_a_bad_element_file_at_start_is_named_and_the_daemon_runs(
        mosquitto: Broker, start_daemon, tmp_path: Path, notify_socket: NotifySocket,
        alarms: AlarmListener, payload) -> None:
    config = copy_sim_config(tmp_path)
    bad = tmp_path / "elements" / "gp.json"
    bad.write_bytes(payload())
    d = start_daemon(mqtt_port=mosquitto.port, config=config,
                     env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1", timeout_s=60)
    assert d.proc.poll() is None
    reason = "not valid JSON: nested deeper" if payload is _deep_json else "MEAN_MOTION '1111"
    d.wait_log(f"elements: {bad}:1: {reason}")
    assert "Traceback" not in d.log()
    alarm = alarms.wait_for(lambda m: m["key"] == "elements.load" and m["state"] == "raised")
    assert str(bad) in alarm["message"] and len(alarm["message"]) <= 400
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.log()[-3000:]


@pytest.mark.slow
def test_sighup_during_a_pass_with_a_bad_file_keeps_the_pass_and_the_catalog(
        mosquitto: Broker, start_daemon, tmp_path: Path, alarms: AlarmListener) -> None:
    config = copy_sim_config(tmp_path)
    d = start_daemon(mqtt_port=mosquitto.port, config=config,
                     clock_start="2016-12-19T16:46:00Z", speed=10)
    d.wait_log(f"pass {MICIUS}: acquisition started", timeout_s=240)
    # Mid-pass: Micius's own file is replaced by a hostile one, a new one appears, SIGHUP.
    (tmp_path / "elements" / "micius-2016-12-18.tle").write_bytes(_deep_json())
    (tmp_path / "elements" / "gp.json").write_bytes(_huge_number_json())
    d.signal(signal.SIGHUP)
    d.wait_log("configuration reloaded", timeout_s=60)
    alarm = alarms.wait_for(lambda m: m["key"] == "elements.load" and m["state"] == "raised")
    assert "micius-2016-12-18.tle" in d.log() and "kept the previous elements of MICIUS" in d.log()
    assert "element files with problems" in alarm["message"]
    d.wait_log(f"pass {MICIUS} completed", timeout_s=240)
    assert d.proc.poll() is None
    log = d.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
    # The files are fixed: the next reload clears the alarm.
    (tmp_path / "elements" / "micius-2016-12-18.tle").write_text(
        (Path(__file__).resolve().parents[2] / "config" / "elements" / "micius-2016-12-18.tle").read_text())
    (tmp_path / "elements" / "gp.json").unlink()
    d.signal(signal.SIGHUP)
    alarms.wait_for(lambda m: m["key"] == "elements.load" and m["state"] == "cleared")
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.log()[-3000:]
