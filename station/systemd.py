"""systemd's notify protocol, spoken directly on ``$NOTIFY_SOCKET``.

Small enough to own: a datagram per message to a unix socket (abstract when the path
starts with ``@``). Without ``NOTIFY_SOCKET`` every call is a no-op, so the daemon runs
the same under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd when it is listening."""

    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        self._address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        # systemd sets WATCHDOG_PID so a child that inherited the env does not feed it.
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_usec = int(usec) if usec and usec.isdigit() and mine else None
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the configured watchdog timeout."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            self._sock.sendto(message.encode(), address)
        except OSError as exc:  # systemd gone or socket full: never fatal for the daemon
            log.warning("sd_notify %r failed: %s", message.split("=")[0], exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
