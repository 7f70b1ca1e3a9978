"""What the station says about itself between and during passes: state, schedule and
health messages sent through the publisher, and the measurements they carry (free disk,
the time reference's lock, the idle mount's position). The messages themselves are built
by the pure functions of :mod:`station.daemon.status`."""

from __future__ import annotations

import logging

from drivers.errors import DriverError
from station.clock import from_epoch_s
from station.daemon.alarms import Severity
from station.daemon.context import StationContext
from station.daemon.disk import DiskMonitor
from station.daemon.passbook import PassBook
from station.daemon.publisher import Publisher
from station.daemon.status import StationView, health_message, schedule_message, state_message
from station.mqtt.messages import HealthMessage, MountTelemetry, StateMessage

log = logging.getLogger("station.supervisor")


class Reporter:
    """Measures, builds and publishes the station's own messages."""

    def __init__(self, ctx: StationContext, book: PassBook, publisher: Publisher):
        self.ctx = ctx
        self.book = book
        self.publisher = publisher
        self.disk = DiskMonitor(ctx)
        #: The time reference's lock at the last look (None: unknown or no reference).
        self.timeref_locked: bool | None = None

    def state(self, view: StationView) -> StateMessage:
        return state_message(self.ctx, view)

    def health(self) -> HealthMessage:
        """The health message from the last measurements (no side effects)."""
        return health_message(self.ctx, self.disk.last, self.timeref_locked)

    def check_health(self, *, pass_running: bool) -> HealthMessage:
        """Measure the disk (raising or clearing its alarm), then the health message."""
        upcoming = self.book.upcoming()
        self.disk.measure(upcoming.qkd_duration_s if upcoming else None, pass_running=pass_running)
        return self.health()

    def publish_state(self, view: StationView) -> None:
        self.publisher.publish_state(self.state(view))

    def publish_schedule(self) -> None:
        b = self.book
        self.publisher.publish_schedule(schedule_message(self.ctx, b.schedule, b.done, b.exclude))

    async def refresh_time_reference(self) -> None:
        """Ask the time reference for its lock state (between passes; during a pass the
        readiness check's answer stands)."""
        ctx = self.ctx
        if ctx.timeref is None or not ctx.links["time_reference"].connected:
            self.timeref_locked = None
            return
        st = await ctx.timeref.status()
        self.timeref_locked = bool(st.locked)
        if st.locked:
            ctx.alarms.clear("time_reference.lock", "time reference locked")
        else:
            ctx.alarms.raise_("time_reference.lock", Severity.WARNING,
                              f"time reference not locked: {st.state.value if st.state else '?'}"
                              f"{f' ({st.error})' if st.error else ''}")

    async def publish_idle_mount(self) -> None:
        """Where the mount is, between passes."""
        ctx = self.ctx
        if not ctx.links["mount"].connected:
            return
        try:
            pos = await ctx.mount.position()
            st = await ctx.mount.status()
        except (DriverError, OSError, TimeoutError) as exc:
            # A failed read is the link lost; any other exception is a bug for the loop.
            ctx.mark_lost("mount", exc)
            return
        self.publisher.publish_mount(MountTelemetry(
            time=from_epoch_s(pos.time_s), actual_az_deg=pos.az_deg, actual_el_deg=pos.el_deg,
            moving=st.moving, parked=st.parked, tracking=False, connected=st.connected))
