"""Alarms: raised and cleared by name, each with a severity, logged and published.

An alarm is identified by a key such as ``mount.link`` so that raising it twice does not
publish twice, and clearing it publishes exactly one ``cleared`` message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel

log = logging.getLogger("station.alarms")


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlarmEvent(BaseModel):
    """One raise or clear."""

    key: str
    state: str  # "raised" | "cleared"
    severity: Severity
    message: str
    time: AwareDatetime
    pass_id: str | None = None


_LEVEL = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING,
          Severity.CRITICAL: logging.ERROR}


class AlarmBook:
    """The set of active alarms; every change goes to ``sink`` (e.g. MQTT)."""

    def __init__(self, now: Callable[[], datetime], sink: Callable[[AlarmEvent], None] | None = None):
        self._now = now
        self._sink = sink
        self.active: dict[str, AlarmEvent] = {}
        #: Every event since start, for pass reports and tests.
        self.history: list[AlarmEvent] = []

    def set_sink(self, sink: Callable[[AlarmEvent], None] | None) -> None:
        self._sink = sink

    def raise_(self, key: str, severity: Severity, message: str, *, pass_id: str | None = None) -> None:
        current = self.active.get(key)
        if current is not None and current.message == message and current.severity == severity:
            return
        event = AlarmEvent(key=key, state="raised", severity=severity, message=message,
                           time=self._now(), pass_id=pass_id)
        self.active[key] = event
        self._emit(event)

    def clear(self, key: str, message: str = "cleared") -> None:
        current = self.active.pop(key, None)
        if current is None:
            return
        self._emit(AlarmEvent(key=key, state="cleared", severity=current.severity,
                              message=message, time=self._now(), pass_id=current.pass_id))

    def is_active(self, key: str) -> bool:
        return key in self.active

    def _emit(self, event: AlarmEvent) -> None:
        self.history.append(event)
        log.log(_LEVEL[event.severity] if event.state == "raised" else logging.INFO,
                "alarm %s %s [%s]: %s", event.key, event.state, event.severity, event.message)
        if self._sink is not None:
            try:
                self._sink(event)
            except Exception:  # a publishing problem must never hide the alarm itself
                log.exception("could not publish alarm %s", event.key)
