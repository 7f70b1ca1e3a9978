"""UTC instants as the station writes them: one spelling on the wire, one in logs.

- :func:`iso_z` is the wire form of every time in MQTT messages, schedules and pass
  descriptions: ISO 8601, UTC, milliseconds, a trailing ``Z``
  (``2016-12-19T16:48:43.744Z``). :data:`UtcTime` is a pydantic type that serializes
  with it.
- :func:`log_time` is the shorter form log lines use (whole seconds, ``—`` for none).
- :func:`at_ms` turns clock seconds into the datetime a description publishes (rounded
  to the millisecond it will be written with).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, Field, PlainSerializer

__all__ = ["UtcTime", "at_ms", "iso_z", "iso_z_or_none", "log_time"]


def iso_z(when: datetime) -> str:
    """``when`` as ISO 8601 in UTC with milliseconds and a trailing ``Z``."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_z_or_none(when: datetime | None) -> str | None:
    """:func:`iso_z`, passing ``None`` through (optional fields)."""
    return None if when is None else iso_z(when)


def log_time(when: datetime | None) -> str:
    """``when`` to the second for a log line (``2016-12-19T16:48:43Z``), ``—`` for none."""
    return "—" if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def at_ms(epoch_s: float) -> datetime:
    """Aware UTC datetime for clock seconds, rounded to the millisecond."""
    return datetime.fromtimestamp(round(epoch_s, 3), tz=UTC)


#: A UTC instant, written as :func:`iso_z` in JSON.
UtcTime = Annotated[
    AwareDatetime,
    PlainSerializer(iso_z, return_type=str, when_used="json"),
    Field(json_schema_extra={"format": "date-time"}),
]
