"""``[keys] embedded = true``: the daemon runs the key half beside itself, as children.

Two processes, never a part of the daemon's own state: the simulated satellite
(``qkd-station keys satellite``, with its own config and secret; it also provisions the
pre-shared authentication pool on first start) and a follow-mode distiller
(``qkd-station keys distill --connect <stream>``), which consumes the documented event
stream like any other consumer and publishes each pass's key report on MQTT. Both are
stopped (SIGTERM, then SIGKILL after a grace period) when the daemon exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from types import TracebackType

from station.config import StationConfig

log = logging.getLogger(__name__)

START_DEADLINE_S = 30.0
STOP_GRACE_S = 10.0


def _die_with_parent() -> None:
    """In the child: SIGTERM when the daemon dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class KeyChildren:
    """Async context manager: start the satellite and the distiller, stop them on exit."""

    def __init__(self, cfg: StationConfig, config_path: Path) -> None:
        self.cfg = cfg
        self.config_path = Path(config_path)
        self.procs: list[asyncio.subprocess.Process] = []
        self._starting: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KeyChildren:
        k = self.cfg.keys
        if not k.embedded:
            return self
        if k.satellite_config is None or not await asyncio.to_thread(os.path.isfile, k.satellite_config):
            log.error("[keys] embedded = true needs satellite_config, a file (%s); no key will be "
                      "distilled", k.satellite_config)
            return self
        # In the background: the daemon's start never waits for the key half.
        self._starting = asyncio.create_task(self._start(), name="keys-children")
        return self

    async def _start(self) -> None:
        k = self.cfg.keys
        ground_pool = Path(self.cfg.state_dir) / k.dir / k.auth_pool
        sat = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "keys", "satellite", "-s", str(k.satellite_config),
            "--endpoint", k.satellite_endpoint, "--provision", f"{self.cfg.station_id}={ground_pool}",
            stdout=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        self.procs.append(sat)
        try:
            async with asyncio.timeout(START_DEADLINE_S):
                assert sat.stdout is not None
                line = (await sat.stdout.readline()).decode().strip()
        except TimeoutError:
            line = ""
        if not line.startswith("satellite "):
            log.error("the simulated satellite did not start (%s); no key will be distilled",
                      line or f"no word within {START_DEADLINE_S:g} s")
            return
        log.info("keys: %s", line)
        dist = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "keys", "distill", "--connect",
            self.cfg.events.stream_endpoint, "--config", str(self.config_path),
            preexec_fn=_die_with_parent)
        self.procs.append(dist)
        log.info("keys: distiller (pid %d) follows %s", dist.pid, self.cfg.events.stream_endpoint)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        await self._stop()

    async def _stop(self) -> None:
        for proc in reversed(self.procs):  # the distiller first, then the satellite
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    async with asyncio.timeout(STOP_GRACE_S):
                        await proc.wait()
                except TimeoutError:
                    log.warning("keys child %d did not stop within %g s: killed", proc.pid, STOP_GRACE_S)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        self.procs = []
