"""Exception hierarchy shared by every driver kind."""

from __future__ import annotations


class DriverError(Exception):
    """A device or its link failed. ``device`` names the driver instance."""

    def __init__(self, message: str, *, device: str = "", device_message: str | None = None):
        self.device = device
        #: The device's own words, verbatim, when it gave any.
        self.device_message = device_message
        prefix = f"{device}: " if device else ""
        super().__init__(prefix + message)


class ConnectionLost(DriverError):
    """The link to the device is down (refused, reset, timed out, unplugged)."""


class CommandRejected(DriverError):
    """The device understood the command and refused it."""


class LimitError(CommandRejected):
    """A target outside the device's own limits."""


class NotConnected(DriverError):
    """A command was issued before ``connect()`` or after ``close()``."""
