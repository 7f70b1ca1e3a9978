"""The systemd watchdog is fed only while the supervisor's heartbeat is fresh."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from station.daemon.watchdog import Heartbeat, beat_period_s, feed_watchdog
from station.systemd import SystemdNotifier


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_a_silent_supervisor_starves_the_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval_s == 0.05
    assert beat_period_s(notifier) == 0.025  # the supervisor beats twice per feeding
    heartbeat = Heartbeat()
    feeder = asyncio.create_task(feed_watchdog(notifier, heartbeat))
    try:
        # Alive: the supervisor beats, the watchdog is fed.
        for _ in range(12):
            heartbeat.beat()
            await asyncio.sleep(0.025)
        alive = received(sock)
        assert alive.count("WATCHDOG=1") >= 3
        # Hung: no beats; after the grace of one interval, no more feeding.
        await asyncio.sleep(0.1)
        received(sock)
        await asyncio.sleep(0.3)
        assert received(sock) == []
        # Alive again: feeding resumes.
        for _ in range(8):
            heartbeat.beat()
            await asyncio.sleep(0.025)
        assert "WATCHDOG=1" in received(sock)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        notifier.close()
        sock.close()


def test_no_notify_socket_means_no_watchdog() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("ignored")  # a no-op, never an error
