"""Pass ids: ``<norad>-<AOS as YYYYmmddTHHMMSSZ>``, made and read in one place.

A pass id names one pass of one satellite by its AOS rounded to the second, e.g.
:data:`PASS_ID_EXAMPLE` for Micius on 2016-12-19. It is stable for the same elements;
the scheduler matches an id to a pass whose AOS is within a couple of seconds of it, so
small element refinements do not orphan an operator's choice.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["PASS_ID_EXAMPLE", "PASS_ID_FORM", "parse_pass_id", "pass_id"]

#: The form of a pass id, as error messages and docs spell it.
PASS_ID_FORM = "<norad>-<AOS YYYYmmddTHHMMSSZ>"
#: A real pass id (Micius, 2016-12-19, AOS 16:48:43.7 UTC), for docs and examples.
PASS_ID_EXAMPLE = "41731-20161219T164844Z"

_AOS_FORMAT = "%Y%m%dT%H%M%SZ"
_ID_RE = re.compile(r"^(\d{1,9})-(\d{8}T\d{6}Z)$")


def pass_id(norad_id: int, aos: datetime | float) -> str:
    """Stable pass id ``<norad>-<AOS as YYYYmmddTHHMMSSZ>`` (AOS rounded to the second)."""
    aos_s = aos.timestamp() if isinstance(aos, datetime) else aos
    when = datetime.fromtimestamp(round(aos_s), tz=UTC)
    return f"{norad_id}-{when:{_AOS_FORMAT}}"


def parse_pass_id(text: str) -> tuple[int, float]:
    """``(norad_id, AOS clock seconds)`` of a pass id; ValueError naming the expected form."""
    match = _ID_RE.match(text.strip())
    if not match:
        raise ValueError(
            f"pass id {text!r} is not of the form {PASS_ID_FORM}, e.g. {PASS_ID_EXAMPLE}"
        )
    aos = datetime.strptime(match.group(2), _AOS_FORMAT).replace(tzinfo=UTC)
    return int(match.group(1)), aos.timestamp()
