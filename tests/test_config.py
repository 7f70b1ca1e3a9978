"""Configuration: shipped files load, bad values name their path and reason, env overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from station.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
SIM = REPO / "config" / "sim.toml"
EXAMPLE = REPO / "config" / "station.example.toml"

MINIMAL = """
station_id = "t1"
state_dir = "state"
[site]
name = "Test"
latitude_deg = 40.0
longitude_deg = 117.0
height_m = 100
"""

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(text)
    return path

def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems

@pytest.mark.parametrize("path", [SIM, EXAMPLE], ids=["sim", "example"])
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.station_id
    assert cfg.site.name

def test_sim_config_is_the_published_night() -> None:
    cfg = load_config(SIM)
    assert cfg.clock.mode == "simulated"
    assert cfg.clock.start is not None and cfg.clock.start.isoformat() == "2016-12-19T16:40:00+00:00"
    assert cfg.mqtt.embedded
    assert (cfg.site.latitude_deg, cfg.site.longitude_deg) == (40.39587, 117.57746)
    assert cfg.mount.backend == "sim" and cfg.timetagger.backend == "sim"

def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.state_dir == tmp_path / "state"

def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.mqtt.port == 1883
    assert cfg.schedule.lead_time_s == 120
    assert cfg.clock.mode == "real"
    assert cfg.topic_prefix == "qkd/t1"

def test_each_bad_value_names_path_value_and_reason(tmp_path: Path) -> None:
    text = MINIMAL.replace("latitude_deg = 40.0", "latitude_deg = 123.0") + """
[mqtt]
port = 70000
colour = "blue"
[clock]
mode = "simulated"
"""
    found = problems(tmp_path, text)
    joined = "\n".join(found)
    assert "site.latitude_deg: 123.0: Input should be less than or equal to 90" in joined
    assert "mqtt.port: 70000: Input should be less than or equal to 65535" in joined
    assert "mqtt.colour: 'blue': Extra inputs are not permitted" in joined
    assert any(p.startswith("clock: ") and "needs 'start'" in p for p in found)
    assert len(found) == 4

def test_missing_required_fields_are_named(tmp_path: Path) -> None:
    found = problems(tmp_path, 'station_id = "x"\n')
    assert "state_dir: (missing): Field required" in found
    assert "site: (missing): Field required" in found

def test_unknown_backend_lists_the_known_ones(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + '[mount]\nbackend = "warp-drive"\n')
    assert len(found) == 1
    assert found[0].startswith("mount: ")
    assert "unknown mount backend 'warp-drive'" in found[0]
    assert "rotctld" in found[0] and "sim" in found[0]

def test_bad_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    found = problems(tmp_path, "station_id = \n")
    assert found[0].startswith("(file): ") and "not valid TOML" in found[0]

def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")

def test_environment_overrides_nested_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QKD_STATION__MQTT__PORT", "1884")
    monkeypatch.setenv("QKD_STATION__SITE__HEIGHT_M", "42.5")
    monkeypatch.setenv("QKD_STATION__LOG_LEVEL", "DEBUG")
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.mqtt.port == 1884
    assert cfg.site.height_m == 42.5
    assert cfg.log_level == "DEBUG"
    assert cfg.site.name == "Test"  # the rest of the section still comes from the file

def test_environment_override_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QKD_STATION__MQTT__PORT", "not-a-port")
    found = problems(tmp_path, MINIMAL)
    assert any(p.startswith("mqtt.port: 'not-a-port'") for p in found)

def test_horizon_mask_interpolates_around_north(tmp_path: Path) -> None:
    text = MINIMAL.replace("height_m = 100", "height_m = 100\nhorizon_mask = [[10, 20], [350, 10]]")
    site = load_config(write(tmp_path, text)).site
    assert float(site.horizon_min_el_deg(0.0)) == pytest.approx(15.0)
    assert float(site.horizon_min_el_deg(180.0)) == pytest.approx(15.0)
    assert float(site.horizon_min_el_deg(10.0)) == pytest.approx(20.0)

def test_check_config_cli_ok_and_failures(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "station", "check-config", str(SIM)],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "xinglong-sim" in ok.stdout and "simulated from 2016-12-19T16:40:00Z" in ok.stdout
    bad = write(tmp_path, MINIMAL.replace("height_m = 100", "height_m = -9999")
                + "[mqtt]\nport = 0\n")
    res = subprocess.run([sys.executable, "-m", "station", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode != 0
    assert "site.height_m: -9999: Input should be greater than or equal to -500" in res.stderr
    assert "mqtt.port: 0: Input should be greater than or equal to 1" in res.stderr


def test_example_config_is_generated_from_the_current_models() -> None:
    from station.config.example import render_example

    assert EXAMPLE.read_text() == render_example(), (
        "config/station.example.toml is stale: run "
        "`python -m station.config.example > config/station.example.toml`")


def test_relative_file_options_resolve_against_the_config_file(tmp_path: Path) -> None:
    text = MINIMAL + '[timetagger]\nbackend = "replay"\noptions = { path = "recordings/p1.arrows" }\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.timetagger.options["path"] == str(tmp_path / "recordings" / "p1.arrows")


def test_indi_mount_takes_the_site_from_the_config(tmp_path: Path) -> None:
    from station.clock import SimClock
    from station.tracking import build_mount

    cfg = load_config(write(tmp_path, MINIMAL + '[mount]\nbackend = "indi"\n'))
    gated = build_mount(cfg, SimClock(0.0, manual=True))
    options = gated._GatedMount__backend.options  # the backend, reached only in this test
    assert (options.latitude_deg, options.longitude_deg, options.height_m) == (40.0, 117.0, 100.0)
