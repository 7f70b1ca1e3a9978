"""The daemon starts the web view as its child and it never outlives the daemon."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest

from tests.web.conftest import http, wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its dead parent's reaper) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _child_pid(log: str) -> int:
    match = re.search(r"web view starting on \S+ \(pid (\d+)\)", log)
    assert match, log[-2000:]
    return int(match.group(1))


@pytest.mark.slow
def test_clean_stop_stops_the_web_view(web_station: Any) -> None:
    ws = web_station()
    pid = _child_pid(ws.daemon.log())
    status, body, _ = http("GET", f"{ws.url}api/session")
    assert status == 200 and body["station_id"] == ws.station_id
    ws.stop()
    assert ws.daemon.proc.returncode == 0
    assert "web view stopped" in ws.daemon.log()
    wait_until(lambda: not _alive(pid), 20, "the web view to exit")


@pytest.mark.slow
def test_a_killed_daemon_takes_the_web_view_with_it(web_station: Any) -> None:
    ws = web_station()
    pid = _child_pid(ws.daemon.log())
    assert _alive(pid)
    ws.daemon.proc.send_signal(signal.SIGKILL)
    ws.daemon.proc.wait(10)
    wait_until(lambda: not _alive(pid), 30, "the orphaned web view to notice and exit")
