"""Element catalog: formats, validation with file:line reasons, duplicates, ages, reload."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sgp4.api import Satrec
from sgp4.exporter import export_omm

from station.orbit.catalog import (
    Catalog,
    ElementSet,
    fixed_clock,
    parse_elements,
    satellite_from_text,
    tle_checksum,
)

ELEMENTS = Path(__file__).resolve().parents[2] / "config" / "elements"

MICIUS = (ELEMENTS / "micius-2016-12-18.tle").read_text().splitlines()
NAME, L1, L2 = MICIUS[0], MICIUS[1], MICIUS[2]
NIGHT_S = datetime(2016, 12, 19, 16, 40, tzinfo=UTC).timestamp()


def _with_checksum(line: str) -> str:
    return line[:68] + str(tle_checksum(line))


def _epoch_shift(l1: str, days: float) -> str:
    epoch = float(l1[20:32]) + days
    return _with_checksum(f"{l1[:20]}{epoch:012.8f}{l1[32:]}")


def test_reference_files_load_cleanly():
    catalog = Catalog.load([ELEMENTS], fixed_clock(NIGHT_S))
    report = catalog.last_report
    assert report.ok and report.files == 2 and report.loaded == 2
    micius = catalog[41731]
    assert micius.name == "MICIUS (QUESS)"
    assert micius.epoch == datetime(2016, 12, 18, 21, 38, 11, 330592, tzinfo=UTC)
    assert micius.text.splitlines() == [NAME, L1, L2]
    assert abs(micius.period_min - 94.49) < 0.01


@pytest.mark.parametrize(
    ("mutate", "line", "reason"),
    [
        (lambda l1, l2: (l1[:68] + str((int(l1[68]) + 1) % 10), l2), 7, "TLE line 1 checksum is 4, the line sums to 3"),
        (lambda l1, l2: (l1[:60], l2), 7, "TLE line 1 has 60 characters, expected 69"),
        (lambda l1, l2: (_with_checksum(l1[:18] + "1X" + l1[20:]), l2), 7,
         "TLE line 1 columns 19-20 (epoch year) '1X' are malformed"),
        (lambda l1, l2: (l1, l2[:40]), 8, "TLE line 2 has 40 characters, expected 69"),
        (lambda l1, l2: (l1, _with_checksum(l2[:2] + "41732" + l2[7:])), 6, "name different satellites"),
        (lambda l1, l2: (l1, _with_checksum(l2[:52] + " 0.00000000" + l2[63:])), 6, "mean motion must be positive"),
        (lambda l1, l2: (l1, _with_checksum(l2[:8] + "197.3699" + l2[16:])), 6, "inclination 197.3699"),
    ],
)
def test_a_bad_record_is_rejected_with_file_line_and_reason_and_the_rest_loads(tmp_path, mutate, line, reason):
    bad1, bad2 = mutate(L1, L2)
    good = (ELEMENTS / "sim-microsat-2024-10-15.tle").read_text()
    path = tmp_path / "mixed.tle"
    path.write_text(f"# comment\n{good}\nBROKEN\n{bad1}\n{bad2}\n")
    catalog = Catalog.load([tmp_path], fixed_clock(NIGHT_S))
    assert [es.norad_id for es in catalog] == [99001]
    [problem] = catalog.last_report.problems
    # Line problems point at the line; record problems at the record's first (name) line.
    assert problem.startswith(f"{path}:{line}: "), problem
    assert reason in problem


def test_structure_errors_name_their_lines(tmp_path):
    text = f"{L2}\nORPHAN NAME\n\n{NAME}\n{L1}\n"
    sets, problems = parse_elements(text.encode(), "x.tle")
    assert sets == []
    assert problems == [
        "x.tle:1: TLE line 2 without a line 1 before it",
        "x.tle:2: name line 'ORPHAN NAME' is not followed by a TLE",
        "x.tle:5: TLE line 1 is not followed by a line 2",
    ]


def test_two_line_files_and_0_prefixed_names(tmp_path):
    sets, problems = parse_elements(f"{L1}\n{L2}\n".encode(), "two.tle")
    assert not problems and sets[0].name == "41731"
    sets, problems = parse_elements(f"0 MICIUS\r\n{L1}\r\n{L2}\r\n".encode(), "three.tle")
    assert not problems and sets[0].name == "MICIUS"


def test_newest_epoch_wins_whatever_the_file_order(tmp_path):
    newer = _epoch_shift(L1, 1.0)
    (tmp_path / "a-new.tle").write_text(f"MICIUS NEW\n{newer}\n{L2}\n")
    (tmp_path / "b-old.tle").write_text(f"MICIUS OLD\n{L1}\n{L2}\n")
    catalog = Catalog.load([tmp_path], fixed_clock(NIGHT_S))
    assert catalog[41731].name == "MICIUS NEW"
    [dup] = catalog.last_report.duplicates
    assert "b-old.tle:1" in dup and "superseded by" in dup


def test_ages_on_the_configured_clock_warn_past_the_limit():
    catalog = Catalog.load([ELEMENTS / "micius-2016-12-18.tle"], fixed_clock(NIGHT_S), max_age_days=3)
    [age] = catalog.ages()
    assert abs(age.age_days - 0.79) < 0.01 and not age.stale and age.warning is None
    [age] = catalog.ages(NIGHT_S + 4 * 86400)
    assert age.stale and "4.8 days old" in age.warning and "limit 3 days" in age.warning
    assert catalog.warnings(NIGHT_S + 4 * 86400) == [age.warning]


def test_reload_picks_up_changes_and_reports_them(tmp_path):
    path = tmp_path / "sats.tle"
    path.write_text(f"{NAME}\n{L1}\n{L2}\n")
    catalog = Catalog.load([tmp_path], fixed_clock(NIGHT_S))
    assert catalog[41731].epoch.day == 18
    path.write_text(f"{NAME}\n{_epoch_shift(L1, 1.0)}\n{L2}\n")
    report = catalog.reload()
    assert report.ok and catalog[41731].epoch.day == 19
    path.unlink()
    catalog.reload()
    assert 41731 not in catalog and len(catalog) == 0
    with pytest.raises(KeyError, match="no element set for NORAD 41731"):
        catalog[41731]


def test_a_file_broken_between_reloads_keeps_its_previous_elements(tmp_path):
    path = tmp_path / "sats.tle"
    path.write_text(f"{NAME}\n{L1}\n{L2}\n")
    catalog = Catalog.load([tmp_path], fixed_clock(NIGHT_S))
    path.write_text(f"{NAME}\n{L1}\n{L2[:50]}\n")  # someone saved a half-edited file
    report = catalog.reload()
    assert catalog[41731].epoch.day == 18
    assert report.problems and report.kept[0].startswith(f"{path}:1: kept the previous elements of MICIUS")
    assert "1 previous element set(s) kept" in report.summary()


def test_missing_source_and_foreign_files_are_reported(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / ".sats.tle.123.tmp").write_text("half-written")
    catalog = Catalog.load([tmp_path, tmp_path / "nope"], fixed_clock(NIGHT_S))
    assert catalog.last_report.problems == [f"{tmp_path / 'nope'}:0: element source does not exist"]
    assert len(catalog.last_report.skipped_files) == 1  # the hidden temp file is not even counted


def _omm(norad: int | None = None) -> dict:
    fields = export_omm(Satrec.twoline2rv(L1, L2), "MICIUS (QUESS)")
    if norad is not None:
        fields["NORAD_CAT_ID"] = norad
    return fields


def _propagates_like_the_tle(es) -> None:
    tle = Satrec.twoline2rv(L1, L2)
    jd, fr = np.full(3, 2457742.5), np.array([0.1, 0.2, 0.7])
    _, r_tle, _ = tle.sgp4_array(jd, fr)
    _, r_omm, _ = es.satellite.model.sgp4_array(jd, fr)
    np.testing.assert_allclose(r_omm, r_tle, atol=1e-3)  # 1 m


def test_omm_json_xml_and_kvn_load_with_line_numbers(tmp_path):
    good = _omm()
    big = _omm(norad=500123)  # catalog numbers above 99999 only exist in OMM
    broken = {k: v for k, v in _omm().items() if k != "MEAN_MOTION"}
    (tmp_path / "gp.json").write_text(json.dumps([good, big, broken], indent=1))
    kvn_fields = {**_omm(norad=41732)}
    kvn = "CCSDS_OMM_VERS = 2.0\nCOMMENT generated\n" + "\n".join(
        f"{k} = {v}{' [rev/day]' if k == 'MEAN_MOTION' else ''}" for k, v in kvn_fields.items()
    )
    (tmp_path / "one.kvn").write_text(kvn + "\n")
    xml_fields = _omm(norad=41733)
    meta = "".join(f"<{k}>{xml_fields[k]}</{k}>" for k in ("OBJECT_NAME", "OBJECT_ID"))
    data = "".join(f"<{k}>{v}</{k}>" for k, v in xml_fields.items() if k not in ("OBJECT_NAME", "OBJECT_ID"))
    (tmp_path / "gp.xml").write_text(
        '<?xml version="1.0"?>\n<ndm>\n<omm id="CCSDS_OMM_VERS" version="2.0">\n<body><segment>'
        f"<metadata>{meta}</metadata><data><meanElements>{data}</meanElements></data>"
        "</segment></body></omm>\n</ndm>\n"
    )
    catalog = Catalog.load([tmp_path], fixed_clock(NIGHT_S))
    assert sorted(es.norad_id for es in catalog) == [41731, 41732, 41733, 500123]
    [problem] = catalog.last_report.problems
    assert problem.startswith(f"{tmp_path / 'gp.json'}:") and "lacks MEAN_MOTION" in problem
    line = int(problem.split(":")[1])
    assert (tmp_path / "gp.json").read_text().splitlines()[line - 1].strip() == "{"
    assert catalog[41733].source == f"{tmp_path / 'gp.xml'}:3"
    assert catalog[41732].format == "omm-kvn"
    for norad in (41731, 41732, 41733, 500123):
        _propagates_like_the_tle(catalog[norad])
    # The element text carried in pass files rebuilds the same satellite.
    again = satellite_from_text(catalog[500123].text, catalog[500123].format)
    assert again.model.no_kozai == catalog[500123].satellite.model.no_kozai


def test_truncated_json_keeps_the_records_before_the_break(tmp_path):
    text = json.dumps([_omm(), _omm(norad=41740)], indent=1)
    cut = text[: text.rindex('"MEAN_MOTION"')]
    sets, problems = parse_elements(cut.encode(), "cut.json")
    assert [es.norad_id for es in sets] == [41731]
    assert len(problems) == 1 and "not valid JSON" in problems[0]


def test_binary_garbage_is_one_clear_problem():
    sets, problems = parse_elements(b"\x89PNG\r\n\x1a\n\xff\xfe", "img.tle")
    assert sets == [] and "not UTF-8 text" in problems[0]


def test_html_error_page_is_not_elements():
    sets, problems = parse_elements(b"<html><body>502 Bad Gateway</body></html>", "gp.php")
    assert sets == [] and "no <omm> record" in problems[0]


def test_sources_given_as_plain_paths(tmp_path):
    assert len(Catalog.load([Path(ELEMENTS) / "micius-2016-12-18.tle"], fixed_clock(NIGHT_S))) == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 * 70), st.characters(codec="ascii"))
def test_any_single_character_corruption_is_caught_or_harmless(pos, char):
    """Never an exception: a corrupted record is either still valid or reported."""
    text = f"{NAME}\n{L1}\n{L2}\n"
    offset = len(NAME) + 1 + pos
    corrupted = text[:offset] + char + text[offset + 1:]
    sets, problems = parse_elements(corrupted.encode(), "c.tle")
    assert len(sets) + len(problems) >= 1
    for problem in problems:
        assert problem.startswith("c.tle:")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["x.tle", "x.json", "x.xml", "x.kvn"]))
def test_garbage_never_raises(data, name):
    sets, problems = parse_elements(data, name)
    # Whatever came out is typed, and every problem names the file it is about.
    assert all(isinstance(s, ElementSet) for s in sets)
    assert all(isinstance(p, str) and p.startswith(f"{name}:") for p in problems), problems
