"""Logging set-up that reads well in journald and on a terminal.

Under systemd (``JOURNAL_STREAM`` set) or when stderr is not a TTY, lines carry a
syslog priority prefix (``<6>``) so journald files them at the right level, and no colour.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2,
}
_COLOUR = {logging.DEBUG: "2", logging.INFO: "0", logging.WARNING: "33", logging.ERROR: "31",
           logging.CRITICAL: "1;31"}


class _Formatter(logging.Formatter):
    def __init__(self, *, journald: bool, colour: bool):
        super().__init__()
        self.journald = journald
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        component = record.name.removeprefix("station.").removeprefix("drivers.")
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if self.journald:
            prio = _PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{prio}>{record.levelname} {component}: {line}"
                             for line in msg.splitlines() or [""])
        ts = self.formatTime(record, "%H:%M:%S")
        line = f"{ts} {record.levelname:<7} {component}: {msg}"
        if self.colour:
            return f"\x1b[{_COLOUR.get(record.levelno, '0')}m{line}\x1b[0m"
        return line


def setup_logging(level: str = "INFO") -> None:
    """Route all logging to stderr in the journald-friendly format."""
    journald = bool(os.environ.get("JOURNAL_STREAM")) and not sys.stderr.isatty()
    colour = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald=journald, colour=colour))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless we debug.
    for noisy in ("amqtt", "transitions", "indipyclient", "pyvisa", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
