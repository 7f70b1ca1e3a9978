"""Hostile element files (issue 11 §4): each is `file:line: reason`, bounded, never raised.

The payloads are generated here (never committed as files): JSON nested 10,000 levels
deep, numbers with 5,000 digits, non-finite numbers, control characters in names, and a
text file that is no element file at all (what a symlink to /etc/shadow would give).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sgp4.api import Satrec
from sgp4.exporter import export_omm

from station.cli import main
from station.orbit.catalog import MAX_PROBLEMS_PER_FILE, Catalog, fixed_clock, parse_elements
from station.orbit.update import install_elements

REPO = Path(__file__).resolve().parents[2]
ELEMENTS = REPO / "config" / "elements"
MICIUS_TLE = (ELEMENTS / "micius-2016-12-18.tle").read_text()
NAME, L1, L2 = MICIUS_TLE.splitlines()[:3]
NIGHT_S = datetime(2016, 12, 19, 16, 40, tzinfo=UTC).timestamp()
#: No problem line may be longer than this, whatever the input's size.
MAX_PROBLEM_CHARS = 300


def _omm(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = dict(export_omm(Satrec.twoline2rv(L1, L2), "MICIUS"))
    fields.update(changes)
    return fields


def _raw_number_omm(key: str, number_text: str) -> bytes:
    """An OMM JSON list whose ``key`` is the bare JSON number ``number_text``."""
    text = json.dumps([_omm(**{key: 0})], indent=1)
    return re.sub(rf'"{key}": 0\b', f'"{key}": {number_text}', text).encode()


HOSTILE: dict[str, tuple[bytes, int, str]] = {
    # name: (bytes, line of the problem, reason fragment)
    "10,000 nested lists": (b"[" * 10_000, 1, "nested deeper than 32 levels"),
    "10,000 nested objects": (b'{"a":' * 10_000, 1, "nested deeper than 32 levels"),
    "5,000-digit integer MEAN_MOTION": (_raw_number_omm("MEAN_MOTION", "1" * 5000), 2,
                                        "MEAN_MOTION '11111111111"),
    "5,000-digit decimal MEAN_MOTION": (_raw_number_omm("MEAN_MOTION", "1" * 5000 + ".5"), 2,
                                        "(5002 characters) is not a number"),
    "5,000-digit string MEAN_MOTION": (json.dumps([_omm(MEAN_MOTION="9" * 5000)]).encode(), 1,
                                       "(5000 characters) is not a number"),
    "overflowing MEAN_MOTION": (_raw_number_omm("MEAN_MOTION", "1e999"), 2, "is not a finite number"),
    "NaN eccentricity": (_raw_number_omm("ECCENTRICITY", "NaN"), 2, "is not a finite number"),
    "5,000-digit NORAD_CAT_ID": (_raw_number_omm("NORAD_CAT_ID", "7" * 5000), 2,
                                 "(5000 characters) is not an integer"),
    "epoch in year 9999": (json.dumps([_omm(EPOCH="9999-12-31T23:59:59")]).encode(), 1,
                           "outside the years 1957..2100"),
    "nested value": (json.dumps([_omm(BSTAR=[[[1]]])]).encode(), 1, "holds a list, not a value"),
    "name with an escape sequence": (
        json.dumps([_omm(OBJECT_NAME="MICIUS\x1b[2J\nroot")]).encode(), 1,
        "OBJECT_NAME contains control characters"),
    "megabyte name": (json.dumps([_omm(OBJECT_NAME="X" * 1_000_000)]).encode(), 1,
                      "OBJECT_NAME is 1000000 characters long"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_omm_is_one_bounded_file_line_reason(case: str) -> None:
    data, line, reason = HOSTILE[case]
    sets, problems = parse_elements(data, "gp.json")
    assert sets == []
    assert problems, case
    assert any(p.startswith(f"gp.json:{line}: ") and reason in p for p in problems), problems
    for problem in problems:
        assert len(problem) <= MAX_PROBLEM_CHARS, problem[:400]
        assert "\n" not in problem and "\x1b" not in problem


def test_a_good_record_before_a_deep_one_still_loads() -> None:
    data = json.dumps([_omm(), _omm(NORAD_CAT_ID=41799)], indent=1)
    data = data[:-2] + ",\n" + "[" * 10_000
    sets, problems = parse_elements(data.encode(), "gp.json")
    assert sorted(es.norad_id for es in sets) == [41731, 41799]
    deep_line = data.count("\n") + 1
    assert problems == [f"gp.json:{deep_line}: not valid JSON: nested deeper than 32 levels (an OMM "
                        "file is a list of flat objects) (the rest of the file is skipped)"]


def test_a_text_file_that_is_no_element_file_is_not_echoed() -> None:
    secret = "\n".join(f"user{i}:$6$s3cr3tHash{i}:19000:0:99999:7:::" for i in range(40))
    for name in ("shadow.tle", "shadow.kvn", "shadow"):
        sets, problems = parse_elements(secret.encode(), name)
        assert sets == [] and len(problems) == 1, problems
        assert "s3cr3t" not in problems[0] and "user" not in problems[0]
        assert "is this an element file?" in problems[0]


def test_xml_entity_expansion_and_a_list_of_numbers_are_refused() -> None:
    laughs = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    data = f'<?xml version="1.0"?><!DOCTYPE l [{laughs}]><omm><MEAN_MOTION>&i;</MEAN_MOTION></omm>'
    sets, problems = parse_elements(data.encode(), "gp.xml")
    assert sets == [] and len(problems) == 1 and problems[0].startswith("gp.xml:1: not valid XML")
    sets, problems = parse_elements(b"[1, 2.5, 1e999]", "gp.json")
    assert problems == ["gp.json:1: expected an OMM object, got number"] * 3


def test_a_pass_file_header_with_hostile_elements_is_an_element_error() -> None:
    from station.orbit.catalog import ElementError, satellite_from_text

    for text in ("[" * 10_000, json.dumps({"MEAN_MOTION": "1" * 5000}), "[1]"):
        with pytest.raises(ElementError) as info:
            satellite_from_text(text, "omm-json")
        assert len(str(info.value)) < MAX_PROBLEM_CHARS


def test_an_oversized_file_is_refused_unread(tmp_path: Path, monkeypatch) -> None:
    from station.orbit import elements

    monkeypatch.setattr(elements, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "big.tle"
    path.write_text(MICIUS_TLE * 10)
    assert elements.parse_file(path) == ([], [f"{path}:0: larger than 0 MiB; not an element file?"])


def test_kvn_lines_built_to_make_a_regex_backtrack_parse_in_linear_time() -> None:
    """Each of these took hours with the old patterns (quadratic in the line length)."""
    spaces = " " * 200_000
    for line in (f"MEAN_MOTION = x{spaces}y", f"MEAN_MOTION = {'[' * 200_000}", f"OBJECT_NAME = a{spaces}"):
        sets, problems = parse_elements(f"CCSDS_OMM_VERS = 2.0\n{line}\n".encode(), "x.kvn")
        assert sets == [] and problems and all(len(p) <= MAX_PROBLEM_CHARS for p in problems)


def test_many_bad_records_are_capped() -> None:
    data = json.dumps([{"x": i} for i in range(5000)]).encode()
    sets, problems = parse_elements(data, "many.json")
    assert sets == [] and len(problems) == MAX_PROBLEMS_PER_FILE + 1
    assert problems[-1] == f"many.json:0: ... and {5000 - MAX_PROBLEMS_PER_FILE} more problem(s)"


def test_reload_with_a_hostile_file_keeps_the_last_good_elements(tmp_path: Path) -> None:
    path = tmp_path / "gp.json"
    path.write_text(json.dumps([_omm()]))
    catalog = Catalog.load([tmp_path], fixed_clock(NIGHT_S))
    good = catalog[41731]
    assert catalog.last_report.alarm_text() is None
    path.write_bytes(b"[" * 10_000)
    report = catalog.reload()
    assert catalog[41731] is good
    assert report.problems == [
        f"{path}:1: not valid JSON: nested deeper than 32 levels (an OMM file is a list of flat "
        "objects) (the rest of the file is skipped)"]
    assert report.kept and report.kept[0].startswith(f"{path}:1: kept the previous elements")
    alarm = report.alarm_text()
    assert alarm is not None and f"{path}:1: not valid JSON" in alarm


def test_an_unreadable_source_directory_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    looped = tmp_path / "loop"
    looped.symlink_to(looped)  # is_dir() is False and reading fails: ELOOP
    catalog = Catalog.load([looped], fixed_clock(NIGHT_S))
    assert len(catalog) == 0 and catalog.last_report.problems


def test_tle_check_reports_hostile_files_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_bytes(b"[" * 10_000)
    (tmp_path / "huge.json").write_bytes(_raw_number_omm("MEAN_MOTION", "1" * 5000))
    res = subprocess.run([sys.executable, "-m", "station", "tle", "check",
                          str(tmp_path / "deep.json"), str(tmp_path / "huge.json")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert f"{tmp_path / 'deep.json'}:1: not valid JSON: nested deeper than 32 levels" in res.stdout
    assert f"{tmp_path / 'huge.json'}:2: MEAN_MOTION '1111" in res.stdout


def test_tle_check_of_the_configured_sources_reports_a_missing_one(tmp_path: Path, capsys) -> None:
    config = tmp_path / "station.toml"
    config.write_text((REPO / "config" / "sim.toml").read_text().replace(
        'element_sources = ["elements"]', f'element_sources = ["{ELEMENTS}", "{tmp_path / "gone"}"]'))
    assert main(["tle", "check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'gone'}:0: element source does not exist" in out
    assert "micius-2016-12-18.tle: 1 valid, 0 rejected" in out


def test_tle_update_refuses_hostile_files_and_changes_nothing(tmp_path: Path, capsys) -> None:
    dest = tmp_path / "elements"
    dest.mkdir()
    for name, (data, _line, reason) in HOSTILE.items():
        src = tmp_path / "gp.json"
        src.write_bytes(data)
        assert main(["tle", "update", str(src), "--dest", str(dest)]) == 1, name
        err = capsys.readouterr().err
        assert "not installed, the catalog is unchanged" in err and reason in err, (name, err[:500])
    assert list(dest.iterdir()) == []


# -- tle update: names, disks, symlinks -----------------------------------------------------

@pytest.mark.parametrize(("name", "reason"), [
    ("../x.tle", "must be a plain file name"),
    ("sub/x.tle", "must be a plain file name"),
    ("..", "must be a plain file name"),
    (".hidden.tle", "is hidden"),
    ("new\nline.tle", "contains control characters"),
    ("x.tle\n", "contains control characters"),
    ("x.exe", "so the catalog would skip it"),
    ("y" * 300 + ".tle", "is longer than 255 bytes"),
])
def test_tle_update_refuses_names_the_catalog_would_not_load(tmp_path: Path, capsys, name, reason) -> None:
    dest = tmp_path / "dest" / "elements"
    dest.mkdir(parents=True)
    src = tmp_path / "micius.tle"
    src.write_text(MICIUS_TLE)
    assert main(["tle", "update", str(src), "--dest", str(dest), "--name", name]) == 1
    err = capsys.readouterr().err
    assert reason in err, err
    assert "\n" not in err.split("--name ", 1)[1].split(": the name")[0]  # the name is quoted
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["elements"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "micius.tle"]


def test_a_source_named_badly_gets_a_safe_name(tmp_path: Path) -> None:
    from station.orbit.update import name_problem, target_name

    for source in ("/x/.hidden.tle", "/x/evil\n.tle", "https://h/a%0A/..%2F..%2Fx.tle?q=1"):
        name = target_name(source, MICIUS_TLE.encode())
        assert name_problem(name) is None, name


def test_install_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.tle"
    outside.write_text("precious\n")
    dest_dir = tmp_path / "elements"
    dest_dir.mkdir()
    (dest_dir / "micius.tle").symlink_to(outside)
    result = install_elements(MICIUS_TLE.encode(), dest_dir / "micius.tle")
    assert result.replaced and not (dest_dir / "micius.tle").is_symlink()
    assert outside.read_text() == "precious\n"


def test_a_rejected_symlink_source_is_not_echoed(tmp_path: Path, capsys) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("\n".join(f"op{i}:$6$TopSecretHash{i}:19000::::::" for i in range(30)) + "\n")
    link = tmp_path / "looks-like.tle"
    link.symlink_to(secret)
    dest = tmp_path / "elements"
    dest.mkdir()
    assert main(["tle", "update", str(link), "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "TopSecret" not in err and "op1" not in err
    assert len(err.splitlines()) == 2, err  # the verdict and one reason


def _unshare() -> str:
    tool = shutil.which("unshare")
    if tool is None:
        pytest.skip("unshare (util-linux) is not installed: no private mount namespace for a small disk")
    probe = subprocess.run([tool, "-rm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a private mount namespace here: {probe.stderr.strip()}")
    return tool


@pytest.mark.parametrize(("mount_opts", "fill", "reason"), [
    ("size=8k", True, "the disk is full"),
    ("size=1m,ro", False, "the file system is read-only"),
])
def test_tle_update_on_a_full_or_read_only_disk_is_a_clear_error(tmp_path: Path, mount_opts, fill, reason) -> None:
    """A real tmpfs, full or read-only, mounted in a private mount namespace (gone with it)."""
    unshare = _unshare()
    dest = tmp_path / "elements"
    dest.mkdir()
    src = tmp_path / "micius.tle"
    src.write_text(MICIUS_TLE * 40)  # larger than what is left on the full disk
    fill_cmd = f"dd if=/dev/zero of={dest}/filler bs=1k count=64 2>/dev/null; " if fill else ""
    script = (f"mount -t tmpfs -o {mount_opts} tmpfs {dest} && {fill_cmd}"
              f"exec {sys.executable} -m station tle update {src} --dest {dest} --name micius.tle")
    res = subprocess.run([unshare, "-rm", "sh", "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert f"{dest}/micius.tle:0: cannot write: {reason}" in res.stderr, res.stderr
    assert "the catalog is unchanged" in res.stderr
