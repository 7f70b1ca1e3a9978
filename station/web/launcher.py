"""The daemon's side of the web view: start ``qkd-station web`` as a child, stop it on exit.

A separate process, so browsers (20 of them, or a flood) can never add lateness to the
control loop; niced, so it yields the CPU to the daemon; tied to the daemon by a pipe on
its stdin, so it also exits when the daemon is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from station.config.root import StationConfig

log = logging.getLogger("station.web")

#: CPU priority the web view runs at below the daemon.
WEB_NICE = 10
STOP_WAIT_S = 5.0


@contextlib.asynccontextmanager
async def web_child(cfg: StationConfig, config_path: Path) -> AsyncIterator[asyncio.subprocess.Process | None]:
    """Run the web view for the body's duration when ``[web] enabled``; else do nothing."""
    if not cfg.web.enabled:
        yield None
        return
    from station.web.server import url_of

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station", "web", "--config", str(config_path),
        "--parent-pipe", "--nice", str(WEB_NICE), stdin=asyncio.subprocess.PIPE)
    log.info("web view starting on %s (pid %d)", url_of(cfg), proc.pid)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log.info("web view stopped")
