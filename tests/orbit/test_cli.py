"""`qkd-station passes` and `qkd-station tle` end to end (in process, real files, loopback HTTP)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from station.cli import main

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "config" / "sim.toml"
ELEMENTS = REPO / "config" / "elements"
MICIUS_TLE = (ELEMENTS / "micius-2016-12-18.tle").read_text()


def test_passes_json_on_the_sim_config_shows_the_published_micius_pass(capsys):
    assert main(["passes", "--config", str(SIM), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    first = out[0]
    assert first["pass_id"] == "41731-20161219T164844Z"
    assert first["satellite"] == "MICIUS" and first["norad_id"] == 41731
    assert first["status"] == "scheduled"
    assert first["aos"].startswith("2016-12-19T16:48:43") and first["aos"].endswith("Z")
    assert first["qkd_start"].startswith("2016-12-19T16:49:5") and first["qkd_end"].startswith("2016-12-19T16:54:3")
    for key in ("tca", "los", "max_el_deg", "aos_az_deg", "los_az_deg", "duration_s", "min_range_km",
                "sun_el_deg", "reason", "moon_el_deg", "moon_min_sep_deg"):
        assert key in first
    # Derived fields are computed from the times, and published as they always were.
    assert first["busy_start"].endswith("Z") and first["busy_end"].endswith("Z")
    aos, los = (datetime.fromisoformat(first[k]) for k in ("aos", "los"))
    assert first["duration_s"] == pytest.approx((los - aos).total_seconds(), abs=1e-3)
    qkd_s = (datetime.fromisoformat(first["qkd_end"]) - datetime.fromisoformat(first["qkd_start"]))
    assert first["qkd_duration_s"] == pytest.approx(qkd_s.total_seconds(), abs=1e-3)
    busy = datetime.fromisoformat(first["busy_start"])
    assert (aos - busy).total_seconds() == pytest.approx(first["lead_time_s"], abs=1e-3)
    assert all(p["status"] in ("scheduled", "rejected") and p["reason"] for p in out)
    assert any(p["reason"].startswith("daylight: sun at +") for p in out)


def test_passes_table_from_and_hours(capsys):
    assert main(["passes", "--config", str(SIM), "--from", "2016-12-20T10:00:00Z", "--hours", "12"]) == 0
    out = capsys.readouterr().out
    assert "41731-20161220T162710Z" in out and "scheduled" in out
    assert "41731-20161219T164844Z" not in out


def test_passes_bad_from_is_a_clear_error(capsys):
    assert main(["passes", "--config", str(SIM), "--from", "tonight"]) == 2
    assert "--from 'tonight' is not an ISO 8601 time" in capsys.readouterr().err


def test_passes_plot_writes_a_png(tmp_path, capsys):
    png = tmp_path / "sky.png"
    assert main(["passes", "--config", str(SIM), "--hours", "2", "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"sky plot written to {png}" in capsys.readouterr().err


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static HTTP server on loopback serving a temporary directory."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_tle_update_from_a_url_and_a_bad_download_changes_nothing(tmp_path, http_dir, capsys):
    base, served = http_dir
    catalog_dir = tmp_path / "elements"
    catalog_dir.mkdir()
    (served / "micius.tle").write_text(MICIUS_TLE)
    assert main(["tle", "update", f"{base}/micius.tle", "--dest", str(catalog_dir)]) == 0
    installed = catalog_dir / "micius.tle"
    assert installed.read_text() == MICIUS_TLE
    assert "installed, 1 element set(s)" in capsys.readouterr().out

    # The next "download" is truncated mid-line: refused, the good file stays.
    (served / "micius.tle").write_text(MICIUS_TLE[:120])
    assert main(["tle", "update", f"{base}/micius.tle", "--dest", str(catalog_dir)]) == 1
    err = capsys.readouterr().err
    assert "not installed, the catalog is unchanged" in err and "micius.tle:3: TLE line 2 has 35 characters, expected 69" in err
    assert installed.read_text() == MICIUS_TLE
    assert sorted(p.name for p in catalog_dir.iterdir()) == ["micius.tle"]  # no temp file left

    # A server error is a clear failure too.
    assert main(["tle", "update", f"{base}/missing.tle", "--dest", str(catalog_dir)]) == 1
    assert "download failed" in capsys.readouterr().err


def test_tle_update_query_urls_get_a_name_from_the_format(tmp_path, http_dir, capsys):
    base, served = http_dir
    (served / "gp.php").write_text(MICIUS_TLE)
    assert main(["tle", "update", f"{base}/gp.php?CATNR=41731", "--dest", str(tmp_path)]) == 0
    [path] = [p for p in tmp_path.iterdir() if p.suffix == ".tle"]
    assert path.name.startswith("gp-")


def test_tle_update_replaces_an_existing_file_atomically(tmp_path, capsys):
    dest = tmp_path / "sats.tle"
    dest.write_text((ELEMENTS / "sim-microsat-2024-10-15.tle").read_text())
    src = tmp_path / "new.tle"
    src.write_text(MICIUS_TLE)
    assert main(["tle", "update", str(src), "--dest", str(tmp_path), "--name", "sats.tle"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert dest.read_text() == MICIUS_TLE
    assert main(["tle", "update", str(src), "--dest", str(tmp_path), "--name", "sats.tle"]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_tle_check_and_list(tmp_path, capsys):
    bad = tmp_path / "bad.tle"
    bad.write_text(MICIUS_TLE.replace("9993", "9994"))
    assert main(["tle", "check", str(bad)]) == 1
    assert f"{bad}:2: TLE line 1 checksum is 4, the line sums to 3" in capsys.readouterr().out
    assert main(["tle", "list", "--config", str(SIM)]) == 0
    captured = capsys.readouterr()
    assert "41731" in captured.out and "age    0.79 d" in captured.out
    assert "in the future" in captured.err
