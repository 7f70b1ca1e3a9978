"""``qkd-station mount ...`` through the safety gate: the sim backend, and real rotctld."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from station.cli import main


def position(out: str) -> tuple[float, float]:
    m = re.search(r"position   az (-?[\d.]+)°, el (-?[\d.]+)°", out)
    assert m, out
    return float(m.group(1)), float(m.group(2))

CONFIG = """
station_id = "cli-test"
state_dir = "state"

[site]
name = "Xinglong (NAOC)"
latitude_deg = 40.39587
longitude_deg = 117.57746
height_m = 890
horizon_mask = [[0, 10], [180, 10]]

[clock]
mode = "{clock_mode}"
{clock_extra}

[mount]
backend = "{backend}"
park_az_deg = 0
park_el_deg = {park_el}

[mount.options]
{options}
"""


def write_config(tmp_path: Path, *, backend: str = "sim", options: str = "", park_el: float = 90,
                 clock_mode: str = "simulated",
                 clock_extra: str = 'start = "2016-12-19T16:40:00Z"\nspeed = "max"') -> str:
    path = tmp_path / "station.toml"
    path.write_text(CONFIG.format(backend=backend, options=options, park_el=park_el,
                                  clock_mode=clock_mode, clock_extra=clock_extra))
    return str(path)


def test_sim_status_goto_refused_goto_park(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert main(["mount", "status", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "position   az 0.0" in out and "(here)" in out and "exclusion 30°" in out

    # Under the 10° horizon: refused with the gate's reason, nothing moves.
    assert main(["mount", "goto", "120", "5", "--config", cfg]) == 3
    err = capsys.readouterr().err
    assert "refused by the safety gate [horizon]" in err and "horizon mask" in err

    assert main(["mount", "goto", "120", "45", "--config", cfg]) == 0
    out = capsys.readouterr().out
    az, el = position(out)
    assert "goto: accepted" in out and abs(az - 120) < 0.01 and abs(el - 45) < 0.01

    assert main(["mount", "park", "--config", cfg]) == 0
    assert "(parked)" in capsys.readouterr().out
    assert main(["mount", "stop", "--config", cfg]) == 0
    assert "stopped" in capsys.readouterr().out


def test_bad_park_position_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, park_el=5)          # under the 10° mask
    assert main(["mount", "status", "--config", cfg]) == 2
    assert "park" in capsys.readouterr().err


def test_rotctld_commissioning_session(tmp_path: Path, rotctld_port: int,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """As an operator would, against the real rotctld and the real clock."""
    cfg = write_config(tmp_path, backend="rotctld", options=f"port = {rotctld_port}",
                       park_el=20, clock_mode="real", clock_extra="")

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["mount", *args, "--config", cfg])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = cli("status")
    assert code == 0, err
    assert "rotctld (connected)" in out and "travel     az -180…450°" in out
    # The dummy starts at (0°, 0°), under the mask: only a straight raise is allowed.
    code, out, err = cli("goto", "90", "30")
    assert code == 3 and "raise it first" in err
    code, out, err = cli("goto", "0", "12", "--timeout-s", "20")
    assert code == 0, err
    az, el = position(out)
    assert abs(az) <= 0.05 and abs(el - 12) <= 0.05
    code, out, err = cli("park", "--timeout-s", "20")
    assert code == 0 and "(parked)" in out, err
    code, out, err = cli("stop")
    assert code == 0 and "stopped" in out
