"""Pass ids are made and read by one module, and every example the project shows is one
that module reads back."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from station.orbit.pass_ids import PASS_ID_EXAMPLE, parse_pass_id, pass_id

REPO = Path(__file__).resolve().parents[2]
#: Anything that looks like a pass id someone might copy: digits, a dash, a date-time, Z.
_LOOKS_LIKE_ID = re.compile(r"\b\d{5}-\d{8}T\d{4,6}Z\b")


def test_round_trip():
    aos_s = datetime(2016, 12, 19, 16, 48, 43, 744_000, tzinfo=UTC).timestamp()
    text = pass_id(41731, aos_s)
    assert text == PASS_ID_EXAMPLE
    assert parse_pass_id(text) == (41731, round(aos_s))


@pytest.mark.parametrize("bad", ["41731-20161219T1655Z", "41731-20161219T164844", "x-20161219T164844Z", ""])
def test_rejects_other_forms(bad):
    with pytest.raises(ValueError, match=r"<norad>-<AOS YYYYmmddTHHMMSSZ>, e.g. 41731-20161219T164844Z"):
        parse_pass_id(bad)


def test_every_example_in_code_and_docs_parses():
    files = [*REPO.joinpath("station").rglob("*.py"), *REPO.joinpath("docs").rglob("*.md"),
             *REPO.joinpath("docs", "schemas").glob("*.json"), REPO / "config" / "station.example.toml"]
    found = {}
    for path in files:
        for match in _LOOKS_LIKE_ID.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(match.group(0), path.relative_to(REPO))
    assert PASS_ID_EXAMPLE in found  # the scan sees the examples at all
    bad = {text: str(where) for text, where in found.items() if not _parses(text)}
    assert not bad, f"pass id examples parse_pass_id rejects: {bad}"


def _parses(text: str) -> bool:
    try:
        parse_pass_id(text)
    except ValueError:
        return False
    return True
