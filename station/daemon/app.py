"""The daemon's lifecycle: start, signals, systemd notify, reload, graceful stop.

``SIGTERM``/``SIGINT`` stop within 10 s: the pass in progress is finalized (file closed,
stream ended), the mount parked, ``offline`` published, exit 0. ``SIGHUP`` re-reads the
config file (an invalid one is logged and ignored) and the element files.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from station import __version__
from station.clock import Clock
from station.config import ConfigError, StationConfig, load_config
from station.daemon.alarms import AlarmBook, Severity
from station.daemon.context import StationContext, clock_from_config
from station.daemon.keys_children import KeyChildren
from station.daemon.supervisor import Supervisor
from station.daemon.watchdog import Heartbeat, beat_period_s, feed_watchdog
from station.mqtt.broker import BrokerStartError
from station.mqtt.service import MqttService
from station.systemd import SystemdNotifier
from station.web.launcher import web_child

log = logging.getLogger("station.daemon")

#: Exit codes: 0 clean stop; 2 bad config; 3 a port or device the daemon needs is taken.
EXIT_OK, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 2, 3
#: The pass wind-down gets this long on stop; systemd's TimeoutStopSec is larger.
STOP_BUDGET_S = 8.0
#: How long a worker thread (pipeline encoders, tagger generation) may hold the GIL before
#: handing it back. Python's default 5 ms is a whole 20 Hz-loop budget of lateness; 1 ms
#: keeps the control loop's p99 lateness under 5 ms while the pipeline runs flat out
#: (bench/pipeline.py, bench/tracking.py measure both).
GIL_SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Interpreter settings the control loop relies on (daemon and rehearsals)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


class Daemon:
    def __init__(self, cfg: StationConfig, config_path: Path, *,
                 notifier: SystemdNotifier | None = None):
        self.cfg = cfg
        self.config_path = Path(config_path)
        self.notifier = notifier or SystemdNotifier()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.notifier.close()

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        self._stop.set()

    async def _run(self) -> int:
        cfg = self.cfg
        clock = clock_from_config(cfg.clock)
        log.info("qkd-station %s starting: station %s (%s), %s clock%s", __version__,
                 cfg.station_id, cfg.site.name, clock.source,
                 f" from {cfg.clock.start:%Y-%m-%dT%H:%M:%SZ} ×{cfg.clock.speed}"
                 if cfg.clock.mode == "simulated" else "")
        try:
            ctx, supervisor, mqtt = assemble(cfg, clock, beat_period_s=beat_period_s(self.notifier))
        except (ValueError, OSError) as exc:
            log.error("cannot build the station from %s: %s", self.config_path, exc)
            return EXIT_CONFIG
        heartbeat = supervisor.heartbeat
        assert heartbeat is not None
        supervisor.status_hook = self.notifier.status
        try:
            await ctx.pipeline.start()
        except Exception as exc:
            log.error("cannot start the event stream on %s: %s", cfg.events.stream_endpoint, exc)
            return EXIT_UNAVAILABLE
        try:
            async with mqtt, KeyChildren(cfg, self.config_path), web_child(cfg, self.config_path):
                mqtt.publish_state(supervisor.state_message())
                return await self._serve(ctx, supervisor, heartbeat, mqtt)
        except BrokerStartError as exc:
            log.error("%s", exc)
            return EXIT_UNAVAILABLE
        finally:
            await ctx.pipeline.stop()
            await ctx.close()
            log.info("stopped")

    async def _serve(self, ctx: StationContext, supervisor: Supervisor, heartbeat: Heartbeat,
                     mqtt: MqttService) -> int:
        async with asyncio.TaskGroup() as tg:
            sup_task = tg.create_task(supervisor.run(), name="supervisor")
            # A daemon whose MQTT service ended can take no command, not even stop: let
            # systemd restart it (the service raises mqtt.service, see assemble()).
            wd_task = tg.create_task(feed_watchdog(self.notifier, heartbeat, lambda: mqtt.alive),
                                     name="watchdog")
            reload_task = tg.create_task(self._reload_loop(supervisor), name="config-reload")
            self.notifier.ready(f"{supervisor.mode.value}: idle")
            log.info("ready")
            stop_wait = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({stop_wait, sup_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            self.notifier.stopping()
            reload_task.cancel()
            if not sup_task.done():
                sup_task.cancel()
                await asyncio.gather(sup_task, return_exceptions=True)
                try:
                    async with asyncio.timeout(STOP_BUDGET_S):
                        await supervisor.shutdown()
                except TimeoutError:
                    log.error("the pass did not wind down within %.0f s; stopping anyway",
                              STOP_BUDGET_S)
            wd_task.cancel()
        return EXIT_OK

    async def _reload_loop(self, supervisor: Supervisor) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            log.info("SIGHUP: reloading %s", self.config_path)
            try:
                new_cfg = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                log.error("new configuration ignored, keeping the running one:\n%s", exc)
                continue
            restart = supervisor.apply_config(new_cfg)
            await supervisor.reload_catalog()
            if restart:
                log.warning("changes to [%s] take effect after a restart", ", ".join(restart))
            log.info("configuration reloaded")


def assemble(cfg: StationConfig, clock: Clock, *, beat_period_s: float = 1.0,
             ) -> tuple[StationContext, Supervisor, MqttService]:
    """Build the station's parts and wire them: devices and pipeline, the supervisor (which
    is also the command handler), the MQTT service it publishes through, and the alarms."""
    alarms = AlarmBook(clock.now)
    ctx = StationContext.build(cfg, clock, alarms)
    supervisor = Supervisor(ctx, heartbeat=Heartbeat(), beat_period_s=beat_period_s)
    mqtt = MqttService(cfg, clock, supervisor.control)
    supervisor.publisher = mqtt
    alarms.set_sink(mqtt.publish_alarm)
    mqtt.on_ended = lambda reason: alarms.raise_(
        "mqtt.service", Severity.CRITICAL, f"{reason}: the station takes no commands; "
        "the systemd watchdog is no longer fed")
    return ctx, supervisor, mqtt


def run_daemon(config_path: str | Path) -> int:
    """Load the config, set up logging and run the daemon until it is stopped."""
    from station.log import setup_logging

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        setup_logging("INFO")
        log.error("%s", exc)
        return EXIT_CONFIG
    setup_logging(cfg.log_level)
    tune_interpreter()
    return asyncio.run(Daemon(cfg, Path(config_path)).run())
