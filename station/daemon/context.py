"""Everything a running station holds: config, clock, catalog, devices, pipeline.

Built once from config by :meth:`StationContext.build`. Backends are created only
through the registry (mount: through the safety gate's factory), so nothing here names a
concrete backend.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from drivers import registry
from drivers.errors import DriverError
from drivers.instruments.beacon_laser import BeaconLaser
from drivers.instruments.time_reference import TimeReference
from drivers.timetagger.base import TimeTagger
from station.clock import Clock, RealClock, SimClock
from station.config import StationConfig
from station.config.clock import ClockConfig
from station.config.root import restart_sections
from station.daemon.alarms import AlarmBook, Severity
from station.daemon.tagger_hooks import TaggerHooks
from station.events import EventPipeline
from station.orbit.catalog import Catalog, LoadReport
from station.tracking import GatedMount, Tracker, build_mount

log = logging.getLogger(__name__)

#: Alarm key of element files that failed to load (the catalog keeps what it had).
ELEMENTS_ALARM = "elements.load"


def note_element_load(alarms: AlarmBook, report: LoadReport) -> None:
    """Log every rejected element record and raise (or clear) the elements alarm."""
    for problem in report.problems:
        log.warning("elements: %s", problem)
    for kept in report.kept:
        log.warning("elements: %s", kept)
    text = report.alarm_text()
    if text is None:
        alarms.clear(ELEMENTS_ALARM, f"element files load cleanly: {report.summary()}")
    else:
        alarms.raise_(ELEMENTS_ALARM, Severity.WARNING, text)


def take_live_config(ctx: StationContext, cfg: StationConfig) -> list[str]:
    """Put into ``ctx`` what can change live from a new config (the element sources, the
    log level, every live section); return the sections that need a restart, which keep
    their running values."""
    old = ctx.cfg
    restart = restart_sections(old, cfg)
    live = cfg.model_copy(update={name: getattr(old, name) for name in restart})
    ctx.cfg = live
    ctx.catalog.sources = list(live.orbit.element_sources)
    ctx.catalog.max_age_days = live.orbit.max_element_age_days
    logging.getLogger().setLevel(live.log_level)
    return restart


def clock_from_config(cfg: ClockConfig) -> Clock:
    """The one Clock the station runs on."""
    if cfg.mode == "real":
        return RealClock()
    assert cfg.start is not None  # the config model requires it when simulated
    return SimClock(cfg.start, speed=cfg.speed_factor)


@dataclass
class DriverLink:
    """Connection state of one device, for health and readiness."""

    name: str
    connected: bool = False
    detail: str = "not connected yet"


@dataclass
class StationContext:
    cfg: StationConfig
    clock: Clock
    alarms: AlarmBook
    catalog: Catalog
    mount: GatedMount
    tracker: Tracker
    tagger: TimeTagger
    pipeline: EventPipeline
    laser: BeaconLaser | None = None
    timeref: TimeReference | None = None
    links: dict[str, DriverLink] = field(default_factory=dict)
    #: The tagger's optional simulator hooks, probed once here (see tagger_hooks).
    tagger_hooks: TaggerHooks | None = None

    def __post_init__(self) -> None:
        if self.tagger_hooks is None:
            self.tagger_hooks = TaggerHooks.of(self.tagger)

    @property
    def hooks(self) -> TaggerHooks:
        """The tagger's simulator hooks (typed; no-ops for a tagger without them)."""
        assert self.tagger_hooks is not None  # set in __post_init__
        return self.tagger_hooks

    @classmethod
    def build(cls, cfg: StationConfig, clock: Clock, alarms: AlarmBook) -> StationContext:
        """Create every component (nothing connects yet). Raises on impossible config."""
        catalog = Catalog.from_config(cfg.orbit, clock)
        note_element_load(alarms, catalog.last_report)
        mount = build_mount(cfg, clock)
        tracker = Tracker(mount, clock, cfg.tracking)
        tagger = registry.create("timetagger", cfg.timetagger.backend,
                                 dict(cfg.timetagger.options), clock=clock, name="timetagger")
        inst = cfg.instruments
        laser = (registry.create("beacon_laser", inst.beacon_laser.backend,
                                 dict(inst.beacon_laser.options), clock=clock, name="beacon_laser")
                 if inst.beacon_laser.enabled else None)
        timeref = (registry.create("time_reference", inst.time_reference.backend,
                                   dict(inst.time_reference.options), clock=clock,
                                   name="time_reference")
                   if inst.time_reference.enabled else None)
        # Checked once here, so the core calls typed methods (no probing later).
        _expect("beacon_laser", laser, BeaconLaser)
        _expect("time_reference", timeref, TimeReference)
        pipeline = EventPipeline(cfg)
        ctx = cls(cfg=cfg, clock=clock, alarms=alarms, catalog=catalog, mount=mount,
                  tracker=tracker, tagger=tagger, pipeline=pipeline, laser=laser, timeref=timeref)
        for name in ctx.devices():
            ctx.links[name] = DriverLink(name)
        return ctx

    def devices(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mount": self.mount, "timetagger": self.tagger}
        if self.laser is not None:
            out["beacon_laser"] = self.laser
        if self.timeref is not None:
            out["time_reference"] = self.timeref
        return out

    async def connect(self, name: str) -> bool:
        """Connect one device; a failure becomes an alarm, never an exception."""
        device = self.devices()[name]
        link = self.links[name]
        try:
            await device.connect()
        except (DriverError, OSError, TimeoutError) as exc:
            link.connected, link.detail = False, str(exc)
            self.alarms.raise_(f"{name}.link", Severity.CRITICAL,
                               f"{name} is not reachable: {exc}")
            return False
        link.connected, link.detail = True, "connected"
        self.alarms.clear(f"{name}.link", f"{name} connected")
        return True

    async def connect_all(self) -> None:
        await asyncio.gather(*(self.connect(name) for name in self.devices()))

    async def reconnect_missing(self) -> None:
        """Try again the devices that are down (called between passes)."""
        for name, link in self.links.items():
            if not link.connected:
                await self.connect(name)

    def mark_lost(self, name: str, exc: BaseException) -> None:
        link = self.links[name]
        link.connected, link.detail = False, str(exc)
        self.alarms.raise_(f"{name}.link", Severity.CRITICAL, f"{name} link lost: {exc}")

    async def close(self) -> None:
        """Close every device (the mount is parked by the caller first)."""
        for name, device in self.devices().items():
            try:
                async with asyncio.timeout(5):
                    await device.close()
            except Exception as exc:  # closing is best effort; say what failed
                log.warning("closing %s: %s", name, exc)
            self.links[name].connected = False
            self.links[name].detail = "closed"

    def clock_s_for_wall(self, wall_s: float) -> float:
        """Clock seconds that pass in ``wall_s`` wall seconds (∞ for an autojump clock)."""
        return math.inf if math.isinf(self.clock.speed) else wall_s * self.clock.speed


def _expect(kind: str, device: object | None, cls: type) -> None:
    if device is not None and not isinstance(device, cls):
        raise ValueError(f"[instruments.{kind}]: the backend made a {type(device).__name__}, "
                         f"not a {cls.__name__}")


async def with_grace(attempt: Callable[[], Awaitable[bool]], clock: Clock, grace_s: float,
                     retry_s: float = 1.0) -> bool:
    """Call ``attempt`` until it returns True or ``grace_s`` clock seconds have passed."""
    end_s = clock.now_s() + grace_s
    while True:
        if await attempt():
            return True
        if clock.now_s() >= end_s:
            return False
        await clock.sleep(min(retry_s, end_s - clock.now_s()))
