"""Orbital element formats: one satellite's elements read from TLE or CCSDS OMM text.

- TLE, two lines per satellite, or 3LE with a name line (optionally ``0 NAME``);
- CCSDS OMM as CelesTrak serves it: JSON (a list of objects, or one object), XML (NDM/OMM)
  and KVN (``KEY = value`` lines). Catalog numbers above 99999 only exist in OMM.

Every record is validated (TLE line lengths, checksums and field formats; OMM required
fields and ranges; and an SGP4 propagation at the epoch). A bad record is rejected with
``file:line: reason`` and the rest still load. Parsing never raises: a hostile file (JSON
nested 10,000 levels deep, a number with 5,000 digits, a binary blob, /etc/shadow behind a
symlink) is one or a few bounded problems that quote no more than a short snippet of it.

:class:`station.orbit.catalog.Catalog` gathers the element sets of many files.
"""

from __future__ import annotations

import json
import math
import re
import xml.parsers.expat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sgp4 import omm as sgp4_omm
from sgp4.api import SGP4_ERRORS, Satrec
from skyfield.api import EarthSatellite

from station.orbit.geometry import load_timescale

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_PROBLEMS_PER_FILE",
    "ElementError",
    "ElementFormat",
    "ElementSet",
    "parse_elements",
    "parse_file",
    "satellite_from_text",
    "sniff_format",
    "tle_checksum",
]

ElementFormat = Literal["tle", "omm-json", "omm-xml", "omm-kvn"]

_UNIX_EPOCH_JD = 2440587.5
_MAX_SATNUM_SGP4 = 339_999  # the largest Alpha-5 catalog number sgp4 can carry
#: An OMM JSON file is a list of flat objects (depth 2); anything much deeper is not one.
MAX_JSON_DEPTH = 32
#: Longest numeric field text accepted (a double needs ~25 characters).
_MAX_NUMBER_CHARS = 40
#: Longest satellite name (TLE name lines are 24 characters; OMM OBJECT_NAME a bit more).
MAX_NAME_CHARS = 64
#: Problems reported per file; the rest are counted in one last line.
MAX_PROBLEMS_PER_FILE = 50
#: Element epochs outside these years are not real element sets (sgp4 and datetime
#: also misbehave far outside them).
_EPOCH_YEARS = (1957, 2100)


@dataclass(frozen=True, slots=True)
class ElementSet:
    """One satellite's orbital elements, ready to propagate.

    ``text`` is the record exactly as read (the TLE lines, or the OMM record as JSON for
    every OMM flavour) so a pass file can carry the elements it was planned with, and
    :func:`satellite_from_text` rebuilds :attr:`satellite` from it.
    """

    norad_id: int
    name: str
    epoch: datetime
    satellite: EarthSatellite = field(repr=False, compare=False)
    text: str = field(repr=False)
    format: ElementFormat
    source: str  # "file:line"

    @classmethod
    def from_satrec(cls, satrec: Satrec, name: str, *, source: str = "(generated)") -> ElementSet:
        """An element set for elements built in code (``Satrec.sgp4init``); text is its TLE."""
        from sgp4.exporter import export_tle

        problem = _satrec_problem(satrec)
        if problem:
            raise ElementError(f"{source}: SGP4 cannot propagate these elements: {problem}")
        sat = EarthSatellite.from_satrec(satrec, load_timescale())
        sat.name = name
        l1, l2 = export_tle(satrec)
        return cls(
            norad_id=int(satrec.satnum), name=name, epoch=_epoch_of(satrec), satellite=sat,
            text=f"{name}\n{l1}\n{l2}", format="tle", source=source,
        )

    @property
    def epoch_s(self) -> float:
        """Epoch as clock seconds (UTC seconds since the Unix epoch)."""
        return self.epoch.timestamp()

    def age_days(self, now_s: float) -> float:
        """Days from the epoch to ``now_s`` (negative for elements from the future)."""
        return (now_s - self.epoch_s) / 86400.0

    @property
    def period_min(self) -> float:
        """Orbital period from the mean motion, in minutes."""
        return 2 * math.pi / self.satellite.model.no_kozai



class ElementError(ValueError):
    """One record could not be used; the message is ``file:line: reason``."""


def _shown(value: object, limit: int = 32) -> str:
    """``repr`` of a value from a file, cut short: an error never echoes a large input."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a satellite name (it goes to logs, MQTT and terminals)."""
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name)} characters long (at most {MAX_NAME_CHARS})"
    if any(not ch.isprintable() for ch in name):
        return "contains control characters"
    return None


# --------------------------------------------------------------------------- TLE


def tle_checksum(line: str) -> int:
    """The modulo-10 checksum of a TLE line's first 68 columns (minus signs count 1)."""
    return sum(int(c) if c.isdigit() else (1 if c == "-" else 0) for c in line[:68]) % 10


_ALPHA5 = re.compile(r"^[0-9A-HJ-NP-Z][0-9]{4}$")
_L1_FIELDS: list[tuple[int, int, str, re.Pattern[str]]] = [
    (2, 7, "catalog number", _ALPHA5),
    (7, 8, "classification", re.compile(r"^[UCS ]$")),
    (18, 20, "epoch year", re.compile(r"^\d\d$")),
    (20, 32, "epoch day", re.compile(r"^[ \d]{3}\.\d{8}$")),
    (33, 43, "first derivative of mean motion", re.compile(r"^[ +-]\.\d{8}$")),
    (44, 52, "second derivative of mean motion", re.compile(r"^[ +-]\d{5}[+-]\d$")),
    (53, 61, "BSTAR", re.compile(r"^[ +-]\d{5}[+-]\d$")),
    (62, 63, "ephemeris type", re.compile(r"^[\d ]$")),
]
_L2_FIELDS: list[tuple[int, int, str, re.Pattern[str]]] = [
    (2, 7, "catalog number", _ALPHA5),
    (8, 16, "inclination", re.compile(r"^[ \d]{3}\.[\d ]{4}$")),
    (17, 25, "right ascension of the node", re.compile(r"^[ \d]{3}\.[\d ]{4}$")),
    (26, 33, "eccentricity", re.compile(r"^\d{7}$")),
    (34, 42, "argument of perigee", re.compile(r"^[ \d]{3}\.[\d ]{4}$")),
    (43, 51, "mean anomaly", re.compile(r"^[ \d]{3}\.[\d ]{4}$")),
    (52, 63, "mean motion", re.compile(r"^[ \d]{2}\.[\d ]{8}$")),
]


class _TleLineError(ValueError):
    """A problem in one line of a TLE (1 or 2), so the report can point at that line."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number


def _check_tle_line(line: str, number: int) -> None:
    try:
        _check_tle_fields(line, number)
    except ValueError as exc:
        raise _TleLineError(number, str(exc)) from None


def _check_tle_fields(line: str, number: int) -> None:
    if len(line) != 69:
        raise ValueError(f"TLE line {number} has {len(line)} characters, expected 69")
    if line[0] != str(number) or line[1] != " ":
        raise ValueError(f"TLE line {number} must start with '{number} '")
    if not line[68].isdigit():
        raise ValueError(f"TLE line {number} ends with {line[68]!r} where the checksum digit belongs")
    expected = tle_checksum(line)
    if int(line[68]) != expected:
        raise ValueError(f"TLE line {number} checksum is {line[68]}, the line sums to {expected}")
    for start, end, what, pattern in _L1_FIELDS if number == 1 else _L2_FIELDS:
        if not pattern.match(line[start:end]):
            raise ValueError(
                f"TLE line {number} columns {start + 1}-{end} ({what}) {line[start:end]!r} are malformed"
            )


def _alpha5_to_int(text: str) -> int:
    if text[0].isdigit():
        return int(text)
    letter = text[0]
    value = ord(letter) - ord("A") + 10
    value -= (letter > "I") + (letter > "O")  # Alpha-5 skips I and O
    return value * 10000 + int(text[1:])


def _satrec_problem(satrec: Satrec) -> str | None:
    """Propagate at the epoch; SGP4's own message when the elements are unusable."""
    error, _, _ = satrec.sgp4(satrec.jdsatepoch, satrec.jdsatepochF)
    return SGP4_ERRORS[error] if error else None


def _tle_record(name: str | None, l1: str, l2: str, where: str) -> ElementSet:
    _check_tle_line(l1, 1)
    _check_tle_line(l2, 2)
    if l1[2:7] != l2[2:7]:
        raise ValueError(f"the two lines name different satellites ({l1[2:7]!r} and {l2[2:7]!r})")
    ecc = float("0." + l2[26:33])
    if not 0 <= float(l2[8:16]) <= 180:
        raise ValueError(f"inclination {l2[8:16].strip()}° is outside 0..180°")
    if float(l2[52:63]) <= 0:
        raise ValueError("mean motion must be positive")
    if ecc >= 1:
        raise ValueError("eccentricity must be below 1")
    satrec = Satrec.twoline2rv(l1, l2)
    problem = _satrec_problem(satrec)
    if problem:
        raise ValueError(f"SGP4 cannot propagate these elements: {problem}")
    norad = _alpha5_to_int(l1[2:7])
    name = (name or "").strip() or str(norad)
    if (why := _name_problem(name)) is not None:
        raise ValueError(f"the name line {why}")
    sat = EarthSatellite.from_satrec(satrec, load_timescale())
    sat.name = name
    text = "\n".join(([name] if name else []) + [l1, l2])
    return ElementSet(
        norad_id=norad, name=name, epoch=_epoch_of(satrec), satellite=sat, text=text,
        format="tle", source=where,
    )


def _orphan_name(path: str, index: int, name: str) -> str:
    if _name_problem(name.strip()) is None:
        return f"{path}:{index + 1}: name line {name.strip()!r} is not followed by a TLE"
    return f"{path}:{index + 1}: a line that is neither a TLE line nor a satellite name"


def _parse_tle_text(text: str, path: str) -> tuple[list[ElementSet], list[str]]:
    lines = [ln.rstrip() for ln in text.splitlines()]
    if not any(ln.startswith(("1 ", "2 ")) for ln in lines):
        # Not a TLE file at all (a config, /etc/passwd behind a symlink, an HTML page):
        # one problem, quoting none of its lines.
        content = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
        if not content:
            return [], []
        return [], [f"{path}:{content[0] + 1}: no TLE lines (lines starting '1 ' and '2 ') in "
                    f"{len(content)} line(s) of text; is this an element file?"]
    sets: list[ElementSet] = []
    problems: list[str] = []
    name: tuple[int, str] | None = None  # (line index, text) of a name line awaiting its TLE
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        if line.startswith("1 "):
            start = name[0] if name else i
            where = f"{path}:{start + 1}"
            if i + 1 >= len(lines) or not lines[i + 1].startswith("2 "):
                problems.append(f"{path}:{i + 1}: TLE line 1 is not followed by a line 2")
                name = None
                i += 1
                continue
            try:
                sets.append(_tle_record(name[1] if name else None, line, lines[i + 1], where))
            except _TleLineError as exc:
                problems.append(f"{path}:{i + exc.number}: {exc}")
            except Exception as exc:  # one record never spoils the file
                problems.append(f"{where}: {_record_error(exc)}")
            name = None
            i += 2
            continue
        if line.startswith("2 "):
            problems.append(f"{path}:{i + 1}: TLE line 2 without a line 1 before it")
        else:
            if name is not None:
                problems.append(_orphan_name(path, *name))
            name = (i, line[2:] if line.startswith("0 ") else line)
        i += 1
    if name is not None:
        problems.append(_orphan_name(path, *name))
    return sets, problems


# --------------------------------------------------------------------------- OMM

_OMM_REQUIRED = (
    "EPOCH", "MEAN_MOTION", "ECCENTRICITY", "INCLINATION", "RA_OF_ASC_NODE",
    "ARG_OF_PERICENTER", "MEAN_ANOMALY", "NORAD_CAT_ID", "BSTAR",
)
_OMM_DEFAULTS = {
    "CLASSIFICATION_TYPE": "U", "EPHEMERIS_TYPE": "0", "ELEMENT_SET_NO": "999",
    "REV_AT_EPOCH": "0", "MEAN_MOTION_DOT": "0", "MEAN_MOTION_DDOT": "0", "OBJECT_ID": "UNKNOWN",
}


def _omm_record(fields: dict[str, object], where: str, fmt: ElementFormat) -> ElementSet:
    clean = _omm_fields(fields)
    norad = _omm_norad(clean)
    _check_omm_numbers(clean)
    epoch = _omm_epoch(clean)
    for key in ("MEAN_MOTION_DOT", "MEAN_MOTION_DDOT", "REV_AT_EPOCH", "ELEMENT_SET_NO"):
        if len(clean.get(key, "")) > _MAX_NUMBER_CHARS:
            raise ValueError(f"{key} {_shown(clean[key])} is not a number")
    init = {**_OMM_DEFAULTS, **clean, "EPOCH": epoch.strftime("%Y-%m-%dT%H:%M:%S.%f")}
    # sgp4 carries catalog numbers in Alpha-5 (<= 339999); larger OMM-only numbers are
    # propagated under a placeholder and kept here in norad_id.
    if norad > _MAX_SATNUM_SGP4:
        init["NORAD_CAT_ID"] = "0"
    if len(init["OBJECT_ID"]) < 3:
        init["OBJECT_ID"] = "UNKNOWN"
    satrec = Satrec()
    try:
        sgp4_omm.initialize(satrec, init)
    except (KeyError, ValueError, ArithmeticError) as exc:
        raise ValueError(f"OMM record cannot be used: {_shown(exc, 80)}") from None
    problem = _satrec_problem(satrec)
    if problem:
        raise ValueError(f"SGP4 cannot propagate these elements: {problem}")
    name = clean.get("OBJECT_NAME") or str(norad)
    if (why := _name_problem(name)) is not None:
        raise ValueError(f"OBJECT_NAME {why}")
    sat = EarthSatellite.from_satrec(satrec, load_timescale())
    sat.name = name
    return ElementSet(
        norad_id=norad, name=name, epoch=_epoch_of(satrec), satellite=sat,
        text=json.dumps(clean, sort_keys=True), format=fmt, source=where,
    )


def _omm_fields(fields: dict[str, object]) -> dict[str, str]:
    """The record's fields as stripped text under upper-case keys, the required ones present."""
    clean: dict[str, str] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, dict | list):
            raise ValueError(f"{_shown(key)} holds a {type(value).__name__}, not a value")
        clean[str(key).strip().upper()] = str(value).strip()
    missing = [k for k in _OMM_REQUIRED if not clean.get(k)]
    if missing:
        raise ValueError(f"OMM record lacks {', '.join(missing)}")
    return clean


def _omm_norad(clean: dict[str, str]) -> int:
    raw_norad = clean["NORAD_CAT_ID"]
    if len(raw_norad) > 12 or not raw_norad.isdigit():
        raise ValueError(f"NORAD_CAT_ID {_shown(raw_norad)} is not an integer")
    norad = int(raw_norad)
    if not 1 <= norad <= 999_999_999:
        raise ValueError(f"NORAD_CAT_ID {norad} is outside 1..999999999")
    return norad


def _check_omm_numbers(clean: dict[str, str]) -> None:
    """The mean elements are finite numbers, and in range where SGP4 needs it."""
    numbers: dict[str, float] = {}
    for key in ("MEAN_MOTION", "ECCENTRICITY", "INCLINATION", "RA_OF_ASC_NODE",
                "ARG_OF_PERICENTER", "MEAN_ANOMALY", "BSTAR"):
        text = clean[key]
        try:
            if len(text) > _MAX_NUMBER_CHARS:
                raise ValueError
            numbers[key] = float(text)
        except ValueError:
            raise ValueError(f"{key} {_shown(text)} is not a number") from None
        if not math.isfinite(numbers[key]):
            raise ValueError(f"{key} {_shown(text)} is not a finite number")
    if numbers["MEAN_MOTION"] <= 0:
        raise ValueError(f"MEAN_MOTION {numbers['MEAN_MOTION']} rev/day must be positive")
    if not 0 <= numbers["ECCENTRICITY"] < 1:
        raise ValueError(f"ECCENTRICITY {numbers['ECCENTRICITY']} is outside [0, 1)")
    if not 0 <= numbers["INCLINATION"] <= 180:
        raise ValueError(f"INCLINATION {numbers['INCLINATION']}° is outside 0..180°")


def _omm_epoch(clean: dict[str, str]) -> datetime:
    try:
        if len(clean["EPOCH"]) > _MAX_NUMBER_CHARS:
            raise ValueError
        epoch = datetime.fromisoformat(clean["EPOCH"].removesuffix("Z"))
    except ValueError:
        raise ValueError(f"EPOCH {_shown(clean['EPOCH'])} is not an ISO 8601 date and time") from None
    if not _EPOCH_YEARS[0] <= epoch.year <= _EPOCH_YEARS[1]:
        raise ValueError(f"EPOCH {_shown(clean['EPOCH'])} is outside the years "
                         f"{_EPOCH_YEARS[0]}..{_EPOCH_YEARS[1]}")
    return epoch


def _record_error(exc: Exception) -> str:
    """The reason of a rejected record: our own message, or a bounded one for the rest."""
    if type(exc) in (ValueError, json.JSONDecodeError):
        return str(exc)
    return f"cannot be used ({type(exc).__name__}: {_shown(exc, 80)})"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


#: Numbers stay text: the record check bounds and converts them (``int()`` of 5,000 digits
#: raises a ValueError that ``raw_decode`` would not place in the file).
class _Number(str):
    """A JSON number kept as its text."""


_DECODER = json.JSONDecoder(parse_int=_Number, parse_float=_Number, parse_constant=_Number)
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep_line(text: str, start: int = 0) -> int | None:
    """Line where JSON from ``start`` nests deeper than :data:`MAX_JSON_DEPTH`, if it does.

    Iterative (the regex skips strings), so it works where the recursive decoder gives up.
    """
    depth = 0
    for match in _JSON_TOKENS.finditer(text, start):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return _line_of(text, match.start())
        elif token in "]}":
            depth -= 1
            if depth <= 0:
                return None
    return None


def _decode_one(text: str, pos: int) -> tuple[object, int]:
    """One JSON value at ``pos``; deep nesting is a JSONDecodeError with its line, like any
    other syntax problem, never a RecursionError."""
    try:
        return _DECODER.raw_decode(text, pos)
    except RecursionError:
        pass  # leave the except block: its traceback holds ~1000 frames
    exc = json.JSONDecodeError(
        f"nested deeper than {MAX_JSON_DEPTH} levels (an OMM file is a list of flat objects)",
        text, pos)
    exc.lineno = _too_deep_line(text, pos) or _line_of(text, pos)
    raise exc


def _parse_omm_json(text: str, path: str) -> tuple[list[ElementSet], list[str]]:
    sets: list[ElementSet] = []
    problems: list[str] = []
    pos = len(text) - len(text.lstrip())
    # Walk the top-level array object by object, so each record keeps its line number
    # and one broken object does not hide the others.
    records: list[tuple[int, object]] = []
    try:
        if text[pos:pos + 1] == "[":
            pos += 1
            while True:
                while pos < len(text) and text[pos] in " \t\r\n,":
                    pos += 1
                if pos >= len(text) or text[pos] == "]":
                    break
                obj, end = _decode_one(text, pos)
                records.append((_line_of(text, pos), obj))
                pos = end
        else:
            obj, _ = _decode_one(text, pos)
            records.append((_line_of(text, pos), obj))
    except json.JSONDecodeError as exc:
        problems.append(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (the rest of the file is skipped)")
    for line, obj in records:
        where = f"{path}:{line}"
        if not isinstance(obj, dict):
            what = "number" if isinstance(obj, _Number) else type(obj).__name__
            problems.append(f"{where}: expected an OMM object, got {what}")
            continue
        try:
            sets.append(_omm_record(obj, where, "omm-json"))
        except Exception as exc:  # one record never spoils the file
            problems.append(f"{where}: {_record_error(exc)}")
    return sets, problems


def _parse_omm_xml(data: bytes, path: str) -> tuple[list[ElementSet], list[str]]:
    sets: list[ElementSet] = []
    problems: list[str] = []
    parser = xml.parsers.expat.ParserCreate()
    records: list[tuple[int, dict[str, object]]] = []
    current: dict[str, object] | None = None
    text_parts: list[str] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal current
        local = tag.rsplit(":", 1)[-1]
        if local == "omm":
            current = {}
            records.append((parser.CurrentLineNumber, current))
        text_parts.clear()

    def end(tag: str) -> None:
        local = tag.rsplit(":", 1)[-1]
        value = "".join(text_parts).strip()
        if current is not None and value and local.isupper():
            current[local] = value
        text_parts.clear()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text_parts.append
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        problems.append(f"{path}:{exc.lineno}: not valid XML: {xml.parsers.expat.ErrorString(exc.code)}")
        if records:
            records.pop()  # the record the error interrupted is incomplete
    if not records and not problems:
        problems.append(f"{path}:1: no <omm> record found in this XML file")
    for line, fields in records:
        where = f"{path}:{line}"
        try:
            sets.append(_omm_record(fields, where, "omm-xml"))
        except Exception as exc:  # one record never spoils the file
            problems.append(f"{where}: {_record_error(exc)}")
    return sets, problems


# Linear-time patterns only: a lazy `(.*?)\s*$` or a units pattern anchored at `$` after
# `\s*` backtracks quadratically, and one 1 MB line would hold a reload for hours.
_KVN_LINE = re.compile(r"^\s*([A-Z_0-9]+)\s*=(.*)$")


def _kvn_value(raw: str) -> str:
    """The value of a KVN line without its trailing ``[units]``."""
    value = raw.strip()
    if value.endswith("]"):
        start = value.rfind("[")
        if start >= 0:
            value = value[:start].rstrip()
    return value


def _parse_omm_kvn(text: str, path: str) -> tuple[list[ElementSet], list[str]]:
    sets: list[ElementSet] = []
    problems: list[str] = []
    records: list[tuple[int, dict[str, object]]] = []
    lines = text.splitlines()
    if not any(_KVN_LINE.match(line) for line in lines):
        return [], [f"{path}:1: no KVN 'KEY = value' lines in it; is this an element file?"]
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("COMMENT"):
            continue
        match = _KVN_LINE.match(line)
        if not match:
            problems.append(f"{path}:{number}: not a KVN 'KEY = value' line: {_shown(line, 24)}")
            continue
        key, value = match.group(1), _kvn_value(match.group(2))
        if key == "CCSDS_OMM_VERS" or not records:
            records.append((number, {}))
        records[-1][1][key] = value
    for line, fields in records:
        where = f"{path}:{line}"
        try:
            sets.append(_omm_record(fields, where, "omm-kvn"))
        except Exception as exc:  # one record never spoils the file
            problems.append(f"{where}: {_record_error(exc)}")
    return sets, problems


# --------------------------------------------------------------------------- files


def _epoch_of(satrec: Satrec) -> datetime:
    seconds = ((satrec.jdsatepoch - _UNIX_EPOCH_JD) + satrec.jdsatepochF) * 86400.0
    # Round to the microsecond so the same elements always give the same epoch.
    return datetime.fromtimestamp(round(seconds, 6), tz=UTC)


def sniff_format(data: bytes, suffix: str = "") -> ElementFormat:
    """Guess a file's element format from its first characters (and its name ending)."""
    head = data.lstrip()[:200]
    if head.startswith((b"[", b"{")):
        return "omm-json"
    if head.startswith(b"<"):
        return "omm-xml"
    if b"CCSDS_OMM_VERS" in data[:2000] or suffix in (".kvn", ".omm"):
        return "omm-kvn"
    return "tle"


def parse_elements(data: bytes, path: str) -> tuple[list[ElementSet], list[str]]:
    """Parse one file's bytes: ``(element sets, problems as 'file:line: reason')``.

    Never raises: whatever the bytes, a problem the parsers did not foresee is reported as
    one more ``file:line: reason`` (the daemon keeps running on its last good catalog), and
    at most :data:`MAX_PROBLEMS_PER_FILE` problems are listed.
    """
    try:
        sets, problems = _parse_elements(data, path)
    except Exception as exc:  # a file must never take the daemon down
        sets, problems = [], [f"{path}:1: cannot parse ({type(exc).__name__}: {_shown(exc, 80)})"]
    if len(problems) > MAX_PROBLEMS_PER_FILE:
        more = len(problems) - MAX_PROBLEMS_PER_FILE
        problems = problems[:MAX_PROBLEMS_PER_FILE] + [f"{path}:0: ... and {more} more problem(s)"]
    return sets, problems


def _parse_elements(data: bytes, path: str) -> tuple[list[ElementSet], list[str]]:
    fmt = sniff_format(data, Path(path).suffix.lower())
    if fmt == "omm-xml":
        return _parse_omm_xml(data, path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return [], [f"{path}:{line}: not UTF-8 text (byte {exc.start}); is this an element file?"]
    if fmt == "omm-json":
        return _parse_omm_json(text, path)
    if fmt == "omm-kvn":
        return _parse_omm_kvn(text, path)
    sets, problems = _parse_tle_text(text, path)
    if not sets and not problems:
        problems.append(f"{path}:1: the file holds no element sets")
    return sets, problems


#: Larger files are refused unread (a whole-catalog CelesTrak OMM JSON is ~15 MB).
MAX_FILE_BYTES = 64 * 1024 * 1024


def parse_file(path: Path) -> tuple[list[ElementSet], list[str]]:
    """Parse one element file; an unreadable file is one problem, not an exception."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return [], [f"{path}:0: cannot read: {exc.strerror or exc}"]
    if len(data) > MAX_FILE_BYTES:
        return [], [f"{path}:0: larger than {MAX_FILE_BYTES // 2**20} MiB; not an element file?"]
    return parse_elements(data, str(path))


def satellite_from_text(text: str, fmt: ElementFormat = "tle") -> EarthSatellite:
    """Rebuild the skyfield satellite from :attr:`ElementSet.text` (e.g. a pass-file header)."""
    if fmt == "tle":
        sets, problems = _parse_tle_text(text, "(elements)")
    else:
        try:
            fields, _ = _decode_one(text, 0)
            if not isinstance(fields, dict):
                raise ValueError(f"expected an OMM object, got {type(fields).__name__}")
            sets, problems = [_omm_record(fields, "(elements)", fmt)], []
        except Exception as exc:  # a pass file's header is input too
            sets, problems = [], [f"(elements): {_record_error(exc)}"]
    if problems or len(sets) != 1:
        raise ElementError("; ".join(problems) or "the text holds no single element set")
    return sets[0].satellite
