"""``[keys] embedded = true``: the daemon runs the key half beside itself, as children.

Processes, never a part of the daemon's own state: the simulated satellite
(``qkd-station keys satellite``, with its own config and secret; it also provisions the
pre-shared authentication pool on first start), a follow-mode distiller
(``qkd-station keys distill --connect <stream>``), which consumes the documented event
stream like any other consumer and publishes each pass's key report on MQTT, and, with
``[keys] kme_port``, the station's ETSI 014 KME (``qkd-station kme``) serving the key
store on 127.0.0.1:<kme_port> and publishing its levels on the station's broker (demo TLS
material made in ``<state_dir>/<keys.dir>/kme/`` at first start,
:mod:`postprocessing.kme.embedded`). All are stopped (SIGTERM, then SIGKILL after a grace
period) when the daemon exits, and get SIGTERM should it die.
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
    """Async context manager: start the satellite, the distiller and (with ``kme_port``) the
    KME, stop them on exit."""

    def __init__(self, cfg: StationConfig, config_path: Path) -> None:
        self.cfg = cfg
        self.config_path = Path(config_path)
        self.procs: list[asyncio.subprocess.Process] = []
        self._starting: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KeyChildren:
        if self.cfg.keys.embedded:
            # In the background: the daemon's start never waits for the key half.
            self._starting = asyncio.create_task(self._start(), name="keys-children")
        return self

    async def _start(self) -> None:
        k = self.cfg.keys
        if k.kme_port is not None:
            try:
                await self._start_kme(k.kme_port)
            except Exception:  # never the daemon's end: the rest of the key half still runs
                log.exception("the KME could not be started; no key delivery, no key levels")
        if k.satellite_config is None or not await asyncio.to_thread(os.path.isfile, k.satellite_config):
            log.error("[keys] embedded = true needs satellite_config, a file (%s); no key will be "
                      "distilled", k.satellite_config)
            return
        await self._start_satellite_and_distiller()

    async def _first_line(self, proc: asyncio.subprocess.Process) -> str:
        try:
            async with asyncio.timeout(START_DEADLINE_S):
                assert proc.stdout is not None
                return (await proc.stdout.readline()).decode().strip()
        except TimeoutError:
            return ""

    async def _start_satellite_and_distiller(self) -> None:
        k = self.cfg.keys
        ground_pool = Path(self.cfg.state_dir) / k.dir / k.auth_pool
        sat = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "keys", "satellite", "-s", str(k.satellite_config),
            "--endpoint", k.satellite_endpoint, "--provision", f"{self.cfg.station_id}={ground_pool}",
            stdout=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        self.procs.append(sat)
        line = await self._first_line(sat)
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

    async def _start_kme(self, port: int) -> None:
        from postprocessing.kme.embedded import write_embedded_kme_config

        k = self.cfg.keys
        base = Path(self.cfg.state_dir) / k.dir
        kme_dir = base / "kme"
        config = await asyncio.to_thread(
            write_embedded_kme_config, kme_dir, station_id=self.cfg.station_id, port=port,
            # The distiller's store (station.cli.keys.ground_settings: <dir>/store).
            store_dir=base / "store", satellite=k.satellite, mqtt=await self._levels_mqtt())
        kme = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station", "kme", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        self.procs.append(kme)
        line = await self._first_line(kme)
        if "listening" not in line:
            if not line and kme.returncode is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):  # EOF: it is exiting (its reason on stderr)
                        await kme.wait()
            why = line or (f"exited with code {kme.returncode}, see its error above"
                           if kme.returncode is not None else
                           f"no word within {START_DEADLINE_S:g} s")
            log.error("the KME on port %d did not start (%s); no key delivery, no key levels",
                      port, why)
            return
        log.info("keys: %s (demo SAE certificate and CA in %s)", line, kme_dir / "tls")

    async def _levels_mqtt(self):  # type: ignore[no-untyped-def]
        """The KME's levels publisher on the daemon's broker, or None where it cannot go."""
        from postprocessing.kme.levels import LevelsMqttConfig

        m = self.cfg.mqtt
        if m.tls is not None or m.username is not None:
            # Not with the station's own account: a broker that names clients by account
            # (config/mosquitto) lets a second connection take over the first, and the KME
            # and the daemon would knock each other off. A real station gives its KME an
            # account and a KME config of its own (docs/key-delivery.md).
            log.warning("the embedded KME publishes no key levels: it does so only to an "
                        "anonymous plain-TCP broker (the simulation's), not with the station's "
                        "account or over [mqtt.tls]")
            return None
        return LevelsMqttConfig(host=m.host, port=m.port, topic_root=m.topic_root,
                                station_id=self.cfg.station_id, peers=[self.cfg.keys.satellite])

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
