"""``qkd-station tagger rates`` end to end: config file -> clock -> backend -> printed rates."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers import registry
from station.cli import main
from station.cli.tagger import format_rates, make_clock, watch_rates
from station.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _load_helper():
    name = "qkd_tests_ptu_t2"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("ptu_t2.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


t2 = _load_helper()
PS = 10**12


def _config(tmp_path: Path, timetagger_toml: str, speed: str = '"max"') -> Path:
    """config/sim.toml with its [timetagger] section and clock speed replaced."""
    text = (REPO / "config" / "sim.toml").read_text()
    text = re.sub(r"\nspeed = .*\n", f"\nspeed = {speed}\n", text, count=1)
    head, sep, _ = text.partition("[timetagger]")
    assert sep, "config/sim.toml has no [timetagger] section"
    # Keep anything after our section (sections other engineers added later).
    rest = text[len(head) + len(sep):]
    after = re.search(r"\n\[(?!timetagger)", rest)
    tail = rest[after.start():] if after else ""
    text = head + "[timetagger]\n" + timetagger_toml + "\n" + tail
    text = text.replace('state_dir = "../var/sim"', f'state_dir = "{tmp_path / "var"}"')
    text = text.replace('element_sources = ["elements"]',
                        f'element_sources = ["{REPO / "config" / "elements"}"]')
    path = tmp_path / "station.toml"
    path.write_text(text)
    return path


def _ptu(tmp_path: Path, seconds: int = 3) -> Path:
    sync = np.arange(0, seconds * PS, 100_000_000)  # 10 kHz
    pps = np.arange(0, seconds * PS, PS)
    rng = np.random.default_rng(7)
    h = np.sort(rng.integers(0, seconds * PS, 500 * seconds))
    time = np.concatenate([sync, pps, h]).astype(np.int64)
    kind = np.concatenate([np.full(len(sync), t2.SYNC), np.full(len(pps), t2.MARKER),
                           np.full(len(h), t2.PHOTON)])
    channel = np.concatenate([np.zeros(len(sync)), np.ones(len(pps)), np.zeros(len(h))])
    events = t2.T2Events(time=time, kind=kind, channel=channel.astype(np.int64))
    path = tmp_path / "lab.ptu"
    t2.write_t2_ptu(path, events)
    t2.check_with_ptufile(path, events)
    return path


def test_tagger_rates_on_a_replayed_ptu_file(tmp_path, capsys):
    ptu_path = _ptu(tmp_path)
    cfg = _config(tmp_path, f'backend = "replay"\noptions = {{ path = "{ptu_path}" }}')
    code = main(["tagger", "rates", "--config", str(cfg), "--seconds", "60"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("replay time tagger (xinglong-sim)")
    last = out[-1]
    # The recording ended after 3 s: the last line has its final-window rates.
    assert re.search(r"SYNC\s+(9\.99\d|10\.00\d) kHz", last), last
    assert re.search(r"PPS\s+1\.0 Hz", last), last
    assert re.search(r"H\s+(4[5-9]\d|5[0-4]\d)\.\d Hz", last), last  # ~500 Hz on input 0
    assert "lossy batches 0, missed 0" in last


def test_tagger_rates_reports_a_bad_recording(tmp_path, capsys):
    cfg = _config(tmp_path, f'backend = "replay"\noptions = {{ path = "{tmp_path / "nope.ptu"}" }}')
    assert main(["tagger", "rates", "--config", str(cfg), "--seconds", "1"]) == 1
    assert "does not exist" in capsys.readouterr().err


async def test_watch_rates_prints_one_line_per_interval_on_a_manual_pace(tmp_path):
    """Bounded by --seconds: a line per interval of clock time, the last at the bound."""
    ptu_path = _ptu(tmp_path, seconds=5)
    cfg = load_config(_config(tmp_path, f'backend = "replay"\noptions = {{ path = "{ptu_path}", '
                                        'pacing = "unpaced" }'))
    clock = make_clock(cfg)
    tagger = registry.create("timetagger", "replay", cfg.timetagger.options, clock=clock)
    out = io.StringIO()
    from drivers.timetagger.base import ChannelConfig
    lines = await watch_rates(tagger, clock, seconds=2.0, interval_s=0.5,
                              channels=[ChannelConfig(channel=c) for c in range(1, 7)], out=out)
    assert 1 <= lines <= 4
    assert out.getvalue().count("\n") == lines


def test_format_rates_names_channels_and_units():
    line = format_rates(1482166198.0, {1: 25.0, 5: 10_000.0, 6: 1.0, 9: 2.5e6},
                        lossy_batches=1, missed_events=40)
    assert line.startswith("2016-12-19T16:49:58.0Z")
    assert "H     25.0 Hz" in line and "SYNC   10.000 kHz" in line
    assert "PPS      1.0 Hz" in line and "ch9    2.500 MHz" in line
    assert line.endswith("| lossy batches 1, missed 40")


@pytest.mark.skipif(importlib.util.find_spec("drivers.timetagger.sim") is None,
                    reason="sim backend not in this checkout yet")
def test_tagger_rates_with_the_sim_backend_shows_the_dark_sky(tmp_path, capsys):
    cfg = _config(tmp_path, 'backend = "sim"')
    code = main(["tagger", "rates", "--config", str(cfg), "--seconds", "3"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) >= 2
    last = out[-1]
    # No pass: dark counts/background on H, V, D, A, and the PPS. The sync column is
    # there; whether it counts without a satellite is the sim model's business.
    assert re.search(r"SYNC\s+\d+\.\d+ k?Hz", last), last
    assert re.search(r"PPS\s+1\.0 Hz", last), last
    for name in ("H", "V", "D", "A"):
        assert re.search(rf"\b{name}\s+\d+\.\d Hz", last), last
