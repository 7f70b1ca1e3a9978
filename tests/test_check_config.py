"""check-config catches what would fail at start (issue 11 §7), through the real CLI.

Each case used to print "OK". Now each is exit 2 with a ``path: value: reason`` line and
no traceback; the same config with the problem fixed is OK again (so each case can fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from station.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent

BASE = """
station_id = "t1"
state_dir = "state"
[site]
name = "Test"
latitude_deg = 40.0
longitude_deg = 117.0
height_m = 100
"""


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QKD_STATION__")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "station", "check-config", str(path)],
                          capture_output=True, text=True, cwd=REPO, env=full_env, timeout=120)


def refused(res: subprocess.CompletedProcess[str], line: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert line in res.stderr, res.stderr


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(BASE + extra)
    return path


def test_a_missing_element_source(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[orbit]\nelement_sources = ["elements", "gp.json"]\n')
    (tmp_path / "elements").mkdir()
    refused(check_config(cfg),
            f"orbit.element_sources[1]: '{tmp_path / 'gp.json'}': element source does not exist")
    (tmp_path / "gp.json").write_text("[]")
    assert check_config(cfg).returncode == 0


def test_a_missing_ca_file_and_password_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[mqtt]\nusername = "station"\npassword_file = "secret"\n'
                          '[mqtt.tls]\nca_file = "ca.crt"\n')
    res = check_config(cfg)
    refused(res, f"mqtt.tls.ca_file: '{tmp_path / 'ca.crt'}': file does not exist")
    refused(res, f"mqtt.password_file: '{tmp_path / 'secret'}': file does not exist")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "secret").write_text("\n")
    refused(check_config(cfg), "mqtt.password_file: ")  # empty: no password in it
    (tmp_path / "secret").write_text("hunter2\n")
    res = check_config(cfg)
    assert res.returncode == 0, res.stderr
    assert "hunter2" not in res.stdout + res.stderr


@pytest.mark.parametrize("endpoint", ["5560", "tcp://127.0.0.1", "tcp://127.0.0.1:99999",
                                      "http://127.0.0.1:5560", "tcp://0.0.0.0:5560 ", "tcp://:5560"])
def test_a_stream_endpoint_that_is_not_an_endpoint(tmp_path: Path, endpoint: str) -> None:
    cfg = write(tmp_path, f'[events]\nstream_endpoint = "{endpoint}"\n')
    res = check_config(cfg)
    refused(res, f"events.stream_endpoint: {endpoint!r}: ")
    assert "not a ZeroMQ endpoint" in res.stderr or "outside 1..65535" in res.stderr


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5560", "tcp://127.0.0.1:*", "tcp://[::1]:5560",
                                      "ipc:///run/qkd-station/stream"])
def test_real_endpoints_are_accepted(tmp_path: Path, endpoint: str) -> None:
    assert load_config(write(tmp_path, f'[events]\nstream_endpoint = "{endpoint}"\n')).events.stream_endpoint == endpoint


def test_a_missing_replay_recording(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[timetagger]\nbackend = "replay"\noptions = { path = "night.arrows" }\n')
    refused(check_config(cfg), f"timetagger.options.path: '{tmp_path / 'night.arrows'}': file does not exist")


def test_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    (tmp_path / "state").write_text("not a folder")
    refused(check_config(cfg), f"state_dir: '{tmp_path / 'state'}': exists and is not a directory")
    (tmp_path / "state").unlink()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "passes").write_text("")
    refused(check_config(cfg), "events.passes_dir: ")
    (tmp_path / "state" / "passes").unlink()
    assert check_config(cfg).returncode == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "broker.station.lan"])
def test_an_anonymous_embedded_broker_off_loopback(tmp_path: Path, host: str) -> None:
    cfg = write(tmp_path, f'[mqtt]\nembedded = true\nhost = "{host}"\n')
    refused(check_config(cfg), "mqtt: ")
    assert "listens on loopback only" in check_config(cfg).stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_an_embedded_broker_on_loopback_is_fine(tmp_path: Path, host: str) -> None:
    assert load_config(write(tmp_path, f'[mqtt]\nembedded = true\nhost = "{host}"\n')).mqtt.host == host


@pytest.mark.parametrize(("name", "value", "line"), [
    ("QKD_STATION__SITE__HORIZON_MASK", "[[0,10]",
     "site.horizon_mask: '[[0,10]': not valid JSON in $QKD_STATION__SITE__HORIZON_MASK: "
     "Expecting ',' delimiter at column 8"),
    ("QKD_STATION__SITE__HORIZON_MASK", "north",
     "site.horizon_mask: 'north': not valid JSON in $QKD_STATION__SITE__HORIZON_MASK"),
    ("QKD_STATION__SITE__HORIZON_MASK", "[" * 100_000,
     "site.horizon_mask: '[[[[[[[[[["),
    ("QKD_STATION__ORBIT__SATELLITES", '[{"norad_id": 1',
     "orbit.satellites: '[{\"norad_id\": 1': not valid JSON"),
])
def test_malformed_env_json_is_path_value_reason(tmp_path: Path, name: str, value: str, line: str) -> None:
    res = check_config(write(tmp_path, ""), env={name: value})
    refused(res, line)
    assert all(len(row) < 300 for row in res.stderr.splitlines())


def test_a_string_setting_may_start_with_a_bracket(tmp_path: Path) -> None:
    res = check_config(write(tmp_path, ""), env={"QKD_STATION__SITE__NAME": "[roof] east"})
    assert res.returncode == 0, res.stderr
    assert "[roof] east" in res.stdout


def test_an_empty_state_dir_from_the_environment_is_an_error(tmp_path: Path) -> None:
    res = check_config(write(tmp_path, ""), env={"QKD_STATION__STATE_DIR": ""})
    refused(res, "state_dir: '': is empty; give a path")
    res = check_config(write(tmp_path, ""), env={"QKD_STATION__STATE_DIR": "   "})
    refused(res, "state_dir: '   ': is empty; give a path")


def test_an_unknown_backend_option_names_its_full_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[mount]\nbackend = "sim"\n[mount.options]\nwarp_drive = 9\n'))
    assert info.value.problems == ["mount.options.warp_drive: 9: Extra inputs are not permitted"]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[timetagger]\nbackend = "sim"\noptions = { flux = 1 }\n'))
    assert info.value.problems == ["timetagger.options.flux: 1: Extra inputs are not permitted"]


def test_the_daemon_reports_broken_env_json_without_a_traceback(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "station", "run", "--config", str(write(tmp_path, ""))],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "QKD_STATION__SITE__HORIZON_MASK": "[[0,10]"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "site.horizon_mask: '[[0,10]': not valid JSON" in res.stderr
