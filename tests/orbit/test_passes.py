"""Pass prediction checked against skyfield's own find_events and the published Micius pass."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sgp4.api import WGS72, Satrec

from station.config.site import SiteConfig
from station.orbit.catalog import Catalog, ElementSet, fixed_clock
from station.orbit.geometry import load_timescale, look_angles, site_position
from station.orbit.passes import describe_pass, find_passes, pass_id

ELEMENTS = Path(__file__).resolve().parents[2] / "config" / "elements"


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def _catalog() -> Catalog:
    return Catalog.load([ELEMENTS], fixed_clock(_utc(2016, 12, 19)))


def _find_events_passes(es, site: SiteConfig, start_s: float, end_s: float, min_el_deg: float):
    """Complete passes (rise, highest culmination, set) from skyfield's find_events."""
    ts = load_timescale()
    topos = site_position(site)
    t0 = ts.from_datetime(datetime.fromtimestamp(start_s, tz=UTC))
    t1 = ts.from_datetime(datetime.fromtimestamp(end_s, tz=UTC))
    t, events = es.satellite.find_events(topos, t0, t1, altitude_degrees=min_el_deg)
    alt = (es.satellite - topos).at(t).altaz()[0].degrees
    secs = [x.timestamp() for x in t.utc_datetime()]
    out, rise, culm = [], None, []
    for k, ev in enumerate(events):
        if ev == 0:
            rise, culm = secs[k], []
        elif ev == 1:
            culm.append((secs[k], alt[k]))
        elif rise is not None and culm:
            tca, el = max(culm, key=lambda c: c[1])
            out.append((rise, tca, secs[k], el))
            rise = None
    return out


@pytest.mark.parametrize(
    ("norad", "site_fixture", "start"),
    [(41731, "xinglong", (2016, 12, 18, 22)), (99001, "stellenbosch", (2024, 10, 15))],
)
def test_matches_skyfield_find_events(request, norad, site_fixture, start):
    site = request.getfixturevalue(site_fixture)
    es = _catalog()[norad]
    start_s = _utc(*start)
    end_s = start_s + 5 * 86400
    ours = [p for p in find_passes([es], site, start_s, end_s).passes if p.aos_s > start_s and p.los_s < end_s]
    ref = _find_events_passes(es, site, start_s, end_s, 10.0)
    assert len(ref) >= 10
    assert len(ours) == len(ref)
    for p, (rise, tca, set_, el) in zip(ours, ref, strict=True):
        assert abs(p.aos_s - rise) < 1.0
        assert abs(p.tca_s - tca) < 1.0
        assert abs(p.los_s - set_) < 1.0
        assert abs(p.max_el_deg - el) < 0.01


def test_the_published_micius_pass_and_its_qkd_window(xinglong):
    es = _catalog()[41731]
    search = find_passes([es], xinglong, _utc(2016, 12, 19, 16, 40), _utc(2016, 12, 19, 17, 40))
    [ev] = search.passes
    assert ev.pass_id == "41731-20161219T164844Z"
    info, track = describe_pass(es, xinglong, ev, qkd_min_el_deg=15.0, qkd_max_range_km=1200.0)
    # Reference: 16:49:58 -> 16:54:30 UTC (273 s), min range 645 km, peak ~47.8°, ~19.6° at start.
    assert abs(info.qkd_start.timestamp() - _utc(2016, 12, 19, 16, 49, 58)) <= 2.0
    assert abs(info.qkd_end.timestamp() - _utc(2016, 12, 19, 16, 54, 30)) <= 2.0
    assert abs(info.qkd_duration_s - 273) <= 2.0
    assert abs(info.min_range_km - 645) < 3
    assert abs(info.max_el_deg - 47.8) < 0.1
    start_el = look_angles(es.satellite, xinglong, np.array([info.qkd_start.timestamp()])).el_deg[0]
    assert abs(start_el - 19.6) < 0.2
    # Night: the Sun far down; the satellite in Earth's shadow.
    assert info.sun_el_deg < -60 and not info.sunlit and not info.qkd_sunlit
    assert info.aos_az_deg == pytest.approx(0.26, abs=0.1)  # rises in the north
    assert len(track.time_s) == pytest.approx(info.duration_s, abs=2)
    assert info.earth_satellite().model.satnum == 41731


def test_a_pass_in_progress_at_the_window_start_keeps_its_true_aos(xinglong):
    es = _catalog()[41731]
    whole = find_passes([es], xinglong, _utc(2016, 12, 19, 16, 40), _utc(2016, 12, 19, 17)).passes[0]
    # Start the search mid-pass: same AOS, hence the same stable pass id.
    late = find_passes([es], xinglong, whole.tca_s, whole.tca_s + 3600).passes[0]
    assert late.pass_id == whole.pass_id
    assert abs(late.aos_s - whole.aos_s) < 0.05 and abs(late.los_s - whole.los_s) < 0.05


def test_pass_ids_do_not_depend_on_where_the_search_starts(xinglong):
    es = _catalog()[41731]
    ids = [
        {p.pass_id for p in find_passes([es], xinglong, _utc(2016, 12, 20) + off, _utc(2016, 12, 22)).passes
         if p.aos_s > _utc(2016, 12, 20, 6)}
        for off in (0.0, 137.0, 3599.0)
    ]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) >= 4


def test_horizon_mask_with_an_obstacle_delays_aos(xinglong):
    es = _catalog()[41731]
    window = (_utc(2016, 12, 19, 16, 40), _utc(2016, 12, 19, 17, 40))
    flat = find_passes([es], xinglong, *window).passes[0]
    # Micius rises in the north: put a 25° ridge there, 10° elsewhere.
    ridge = xinglong.model_copy(update={"horizon_mask": [(0.0, 25.0), (60.0, 10.0), (300.0, 10.0)]})
    ridge = SiteConfig.model_validate(ridge.model_dump())
    masked = find_passes([es], ridge, *window).passes[0]
    assert masked.aos_s > flat.aos_s + 30
    assert masked.los_s == pytest.approx(flat.los_s, abs=0.05)  # sets in the SW, behind no ridge
    la = look_angles(es.satellite, ridge, np.array([masked.aos_s]))
    assert la.el_deg[0] == pytest.approx(float(ridge.horizon_min_el_deg(la.az_deg[0])), abs=0.01)


def test_failed_propagation_is_reported_not_raised(xinglong):
    # A 200 km orbit with a huge drag term: SGP4 gives up on it within a day.
    epoch_days = (datetime(2016, 12, 19, tzinfo=UTC) - datetime(1949, 12, 31, tzinfo=UTC)).days
    satrec = Satrec()
    satrec.sgp4init(WGS72, "i", 99990, float(epoch_days), 0.05, 0.0, 0.0, 0.001, 0.0,
                    math.radians(51.6), 0.0, math.sqrt(398600.8 / 6578.135**3) * 60.0, 0.0)
    doomed = ElementSet.from_satrec(satrec, "DOOMED")
    good = _catalog()[41731]
    result = find_passes([doomed, good], xinglong, _utc(2016, 12, 19), _utc(2016, 12, 21))
    assert {p.norad_id for p in result.passes} == {41731}  # the other satellite is unaffected
    [problem] = result.problems
    assert problem.startswith("DOOMED (99990): SGP4 fails from 2016-12-19T") and "eccentricity" in problem


def test_pass_id_format():
    assert pass_id(41731, _utc(2016, 12, 19, 16, 48, 43) + 0.744) == "41731-20161219T164844Z"
