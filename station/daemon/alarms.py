"""Alarms: raised and cleared by key, each with a severity, logged and published.

An alarm is identified by a key such as ``mount.link`` so that raising it twice does not
publish twice, and clearing it publishes exactly one ``cleared`` message. The events are
the MQTT ``alarms`` payload model itself, so what is logged is what is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from station.mqtt.messages import AlarmMessage, AlarmSeverity, AlarmState

log = logging.getLogger("station.alarms")

Severity = AlarmSeverity

_LEVEL = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING,
          Severity.CRITICAL: logging.ERROR}


class AlarmBook:
    """The set of active alarms; every change goes to ``sink`` (e.g. MQTT)."""

    def __init__(self, now: Callable[[], datetime],
                 sink: Callable[[AlarmMessage], None] | None = None):
        self._now = now
        self._sink = sink
        self.active: dict[str, AlarmMessage] = {}
        #: Every event since start, for pass reports and tests.
        self.history: list[AlarmMessage] = []

    def set_sink(self, sink: Callable[[AlarmMessage], None] | None) -> None:
        """Send future alarm events to ``sink``, and the ones active now (raised while the
        station was being built, e.g. a bad element file at start) at once."""
        self._sink = sink
        for event in list(self.active.values()):
            self._send(event)

    def raise_(self, key: str, severity: Severity, message: str, *,
               pass_id: str | None = None) -> None:
        current = self.active.get(key)
        if current is not None and current.message == message and current.severity == severity:
            return
        event = AlarmMessage(key=key, state=AlarmState.RAISED, severity=severity,
                             message=message, time=self._now(), pass_id=pass_id)
        self.active[key] = event
        self._emit(event)

    def clear(self, key: str, message: str = "cleared") -> None:
        current = self.active.pop(key, None)
        if current is None:
            return
        self._emit(AlarmMessage(key=key, state=AlarmState.CLEARED, severity=current.severity,
                                message=message, time=self._now(), pass_id=current.pass_id))

    def is_active(self, key: str) -> bool:
        return key in self.active

    def raised_since(self, index: int) -> int:
        """How many alarms were raised after ``history[index]`` (for pass summaries)."""
        return sum(1 for e in self.history[index:] if e.state == AlarmState.RAISED)

    def _emit(self, event: AlarmMessage) -> None:
        self.history.append(event)
        level = _LEVEL[event.severity] if event.state == AlarmState.RAISED else logging.INFO
        log.log(level, "alarm %s %s [%s]: %s", event.key, event.state.value,
                event.severity.value, event.message)
        self._send(event)

    def _send(self, event: AlarmMessage) -> None:
        if self._sink is not None:
            try:
                self._sink(event)
            except Exception:  # a publishing problem must never hide the alarm itself
                log.exception("could not publish alarm %s", event.key)
