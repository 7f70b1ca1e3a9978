"""The scheduler: constraints with reasons, conflicts, operator overrides, determinism."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.orbit.catalog import Catalog, fixed_clock, tle_checksum
from station.schedule import plan
from station.schedule.planner import _best_subset, parse_pass_id

from .conftest import make_config

ELEMENTS = Path(__file__).resolve().parents[2] / "config" / "elements"
NIGHT_S = datetime(2016, 12, 19, 16, 40, tzinfo=UTC).timestamp()
MICIUS_PASS = "41731-20161219T164844Z"
MICIUS = {"norad_id": 41731, "name": "MICIUS", "priority": 2.0, "qkd_max_range_km": 1200.0}


def _catalog(path: Path = ELEMENTS) -> Catalog:
    return Catalog.load([path], fixed_clock(NIGHT_S))


def _clone_dir(tmp_path: Path, mean_anomaly_shift_deg: float) -> Path:
    """Micius plus a twin 99123 on the same orbit, ahead by a few degrees of mean anomaly."""
    name, l1, l2 = (ELEMENTS / "micius-2016-12-18.tle").read_text().splitlines()[:3]
    ma = (float(l2[43:51]) + mean_anomaly_shift_deg) % 360
    twin1 = l1[:2] + "99123" + l1[7:]
    twin2 = f"{l2[:2]}99123{l2[7:43]}{ma:8.4f}{l2[51:]}"
    twin1, twin2 = (ln[:68] + str(tle_checksum(ln)) for ln in (twin1, twin2))
    (tmp_path / "micius.tle").write_text(f"{name}\n{l1}\n{l2}\n")
    (tmp_path / "twin.tle").write_text(f"TWIN\n{twin1}\n{twin2}\n")
    return tmp_path


def test_the_sim_night_schedules_the_published_micius_pass(xinglong):
    cfg = make_config(xinglong, [MICIUS, {"norad_id": 99001, "name": "SIM-MICROSAT (synthetic)"}])
    schedule = plan(cfg, _catalog(), NIGHT_S, 24)
    first = schedule.passes[0]
    assert first.pass_id == MICIUS_PASS and first.status == "scheduled"
    assert first.reason == "QKD window 273 s x priority 2"
    assert first.weight == pytest.approx(2 * first.qkd_duration_s)
    assert first.busy_start_s == pytest.approx(first.aos_s - 120, abs=0.01)
    day = schedule.get("41731-20161220T032501Z")
    assert day.status == "rejected" and day.reason == "daylight: sun at +25.7° (limit -12.0°)"
    assert all(p.status in ("scheduled", "rejected") and p.reason for p in schedule.passes)
    # The synthetic satellite's 2024 elements are "from the future" on this 2016 clock.
    assert any("in the future" in w for w in schedule.warnings)


def test_same_input_same_schedule(xinglong):
    cfg = make_config(xinglong, [MICIUS, {"norad_id": 99001}])
    a = plan(cfg, _catalog(), NIGHT_S, 36).model_dump()
    b = plan(cfg, _catalog(), NIGHT_S, 36).model_dump()
    assert a == b


def test_conflict_goes_to_the_higher_priority_with_a_reason(tmp_path, xinglong):
    catalog = _catalog(_clone_dir(tmp_path, 8.0))
    cfg = make_config(xinglong, [MICIUS, {"norad_id": 99123, "name": "TWIN", "priority": 5.0}])
    schedule = plan(cfg, catalog, NIGHT_S, 1.5)
    micius = schedule.get(MICIUS_PASS)
    [twin] = [p for p in schedule.passes if p.norad_id == 99123]
    assert twin.status == "scheduled"
    assert micius.status == "rejected"
    assert micius.reason == f"conflict with TWIN {twin.aos:%Y-%m-%dT%H:%M:%SZ} (higher priority)"


def test_equal_priority_takes_more_qkd_time(tmp_path, xinglong):
    catalog = _catalog(_clone_dir(tmp_path, 8.0))
    cfg = make_config(xinglong, [{**MICIUS, "priority": 1.0}, {"norad_id": 99123, "name": "TWIN"}])
    schedule = plan(cfg, catalog, NIGHT_S, 1.5)
    micius = schedule.get(MICIUS_PASS)
    [twin] = [p for p in schedule.passes if p.norad_id == 99123]
    # Micius's window is capped at 1200 km; the twin uses its whole pass above 15°.
    assert twin.qkd_duration_s > micius.qkd_duration_s
    assert (twin.status, micius.status) == ("scheduled", "rejected")
    assert micius.reason.endswith("(more priority-weighted QKD time)")


def test_operator_force_include_and_exclude(tmp_path, xinglong):
    catalog = _catalog(_clone_dir(tmp_path, 8.0))
    cfg = make_config(xinglong, [MICIUS, {"norad_id": 99123, "name": "TWIN", "priority": 5.0}])
    # A pass id whose AOS is a second off still matches (elements refined slightly).
    nudged = "41731-20161219T164845Z"
    schedule = plan(cfg, catalog, NIGHT_S, 1.5, include={nudged})
    micius = schedule.get(MICIUS_PASS)
    [twin] = [p for p in schedule.passes if p.norad_id == 99123]
    assert (micius.status, micius.forced, micius.reason) == ("scheduled", "include", "forced by operator")
    assert twin.status == "rejected" and twin.reason.endswith("(forced by operator)")

    schedule = plan(cfg, catalog, NIGHT_S, 1.5, exclude={twin.pass_id})
    assert schedule.get(twin.pass_id).reason == "excluded by operator"
    assert schedule.get(MICIUS_PASS).status == "scheduled"


def test_forcing_a_daylight_pass_says_what_it_overrides(xinglong):
    cfg = make_config(xinglong, [MICIUS])
    schedule = plan(cfg, _catalog(), NIGHT_S, 24, include=["41731-20161220T032501Z"])
    day = schedule.get("41731-20161220T032501Z")
    assert day.status == "scheduled"
    assert day.reason.startswith("forced by operator (overrides daylight: sun at +25.7° (limit -12.0°); ")
    assert "sun: line of sight 19.5° from the Sun (exclusion 30°)" in day.violations


@pytest.mark.parametrize(
    ("overrides", "reason_start"),
    [
        ({"min_peak_el_deg": 50}, "low: peak elevation 47.8° below the minimum 50°"),
        ({"moon_exclusion_deg": 120}, "moon: line of sight "),
        ({"qkd_min_el_deg": 60}, "no QKD window: never above 60° within 1200 km"),
        ({"min_qkd_s": 300}, "short: QKD window 273 s, minimum 300 s"),
    ],
)
def test_each_constraint_names_itself(xinglong, overrides, reason_start):
    cfg = make_config(xinglong, [{**MICIUS, **overrides}])
    p = plan(cfg, _catalog(), NIGHT_S, 1).get(MICIUS_PASS)
    assert p.status == "rejected" and p.reason.startswith(reason_start), p.reason


def test_station_defaults_apply_unless_a_satellite_overrides_them(xinglong):
    cfg = make_config(xinglong, [MICIUS], min_peak_el_deg=50)
    assert plan(cfg, _catalog(), NIGHT_S, 1).get(MICIUS_PASS).status == "rejected"
    cfg = make_config(xinglong, [{**MICIUS, "min_peak_el_deg": 40}], min_peak_el_deg=50)
    assert plan(cfg, _catalog(), NIGHT_S, 1).get(MICIUS_PASS).status == "scheduled"


def test_the_safety_gates_sun_exclusion_counts_even_with_the_sun_down(xinglong):
    # The gate refuses any pointing within safety.sun_exclusion_deg of the Sun, up or not.
    cfg = make_config(xinglong, [MICIUS], safety={"sun_exclusion_deg": 90})
    p = plan(cfg, _catalog(), NIGHT_S, 1).get(MICIUS_PASS)
    assert p.sun_el_deg < -60
    assert p.reason == "sun: line of sight 83.4° from the Sun (safety gate 90°)"
    assert plan(make_config(xinglong, [MICIUS]), _catalog(), NIGHT_S, 1).get(MICIUS_PASS).status == "scheduled"


def test_shadow_requirement_rejects_sunlit_passes(xinglong):
    cfg = make_config(xinglong, [{**MICIUS, "max_sun_el_deg": 90, "require_satellite_in_shadow": True}])
    schedule = plan(cfg, _catalog(), NIGHT_S, 24)
    day = schedule.get("41731-20161220T032501Z")
    assert day.sunlit and day.status == "rejected"
    assert "sunlit: the satellite is in sunlight during the QKD window" in day.violations
    assert schedule.get(MICIUS_PASS).status == "scheduled"  # in Earth's shadow at 00:50 local


def test_problems_become_warnings(xinglong):
    cfg = make_config(xinglong, [MICIUS, {"norad_id": 12345, "name": "GHOST"}])
    schedule = plan(cfg, _catalog(), NIGHT_S, 1, include=["41731-20200101T000000Z", "bogus"])
    text = "\n".join(schedule.warnings)
    assert "GHOST (12345) is configured but no element source has elements for it" in text
    assert "force_include 41731-20200101T000000Z: no pass with that id in this window" in text
    assert "pass id 'bogus' is not of the form" in text


def test_parse_pass_id():
    norad, aos_s = parse_pass_id(MICIUS_PASS)
    assert norad == 41731 and aos_s == datetime(2016, 12, 19, 16, 48, 44, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="e.g. 41731-20161219T164844Z"):
        parse_pass_id("MICIUS-tonight")


@dataclass
class _Slot:
    pass_id: str
    busy_start_s: float
    busy_end_s: float
    weight: float


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 15), st.integers(1, 9)), max_size=9))
def test_best_subset_is_optimal(slots):
    cands = [_Slot(f"p{i}", float(s), float(s + d), float(w)) for i, (s, d, w) in enumerate(slots)]

    def feasible(sub):
        return all(a.busy_end_s <= b.busy_start_s or b.busy_end_s <= a.busy_start_s
                   for a, b in itertools.combinations(sub, 2))

    best = max(
        (sum(c.weight for c in sub) for r in range(len(cands) + 1)
         for sub in itertools.combinations(cands, r) if feasible(sub)),
        default=0.0,
    )
    chosen = [c for c in cands if c.pass_id in _best_subset(cands)]
    assert feasible(chosen)
    assert sum(c.weight for c in chosen) == best
