"""The disk monitor: measures free space in the state directory and owns the disk alarm.

Rule: an unknown measurement (the free space cannot be read) never clears the alarm; the
``disk.full`` state, and with it the refusal of new passes, stays as it was until a
measurement says otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from station.daemon.alarms import Severity
from station.daemon.context import StationContext
from station.daemon.readiness import expected_pass_bytes, free_disk_bytes

log = logging.getLogger("station.disk")

DISK_FULL_ALARM = "disk.full"
DISK_WRITE_ALARM = "disk.write"


@dataclass(frozen=True)
class DiskReading:
    """The last measurement: free bytes (None when unknown), the next pass's expected size,
    and whether the station refuses new passes for want of disk."""

    free_bytes: int | None = None
    expected_pass_bytes: int | None = None
    full: bool = False


class DiskMonitor:
    """Measures on :meth:`measure`; :attr:`last` is what the health message reports."""

    def __init__(self, ctx: StationContext):
        self.ctx = ctx
        self.last = DiskReading()

    @property
    def full(self) -> bool:
        """True while new passes are refused for want of disk."""
        return self.last.full

    def measure(self, upcoming_qkd_s: float | None, *, pass_running: bool) -> DiskReading:
        """Measure free space, raise or clear the disk alarms, and remember the reading."""
        ctx = self.ctx
        try:
            free: int | None = free_disk_bytes(ctx)
        except OSError as exc:
            free = None
            log.warning("cannot measure free disk in %s: %s", ctx.cfg.state_dir, exc)
        expected = (expected_pass_bytes(ctx, upcoming_qkd_s) if upcoming_qkd_s is not None
                    else None)
        reserve = int(ctx.cfg.operations.faults.min_free_disk_mb * 1e6)
        full = self.last.full  # unknown: stays as it was
        if free is not None and free < reserve:
            full = True
            ctx.alarms.raise_(DISK_FULL_ALARM, Severity.CRITICAL,
                              f"only {free / 1e6:.0f} MB free in {ctx.cfg.state_dir} "
                              f"(reserve {reserve / 1e6:.0f} MB): no new passes accepted")
        elif free is not None:
            full = False
            ctx.alarms.clear(DISK_FULL_ALARM, "enough free disk again")
            if not pass_running:
                ctx.alarms.clear(DISK_WRITE_ALARM, "enough free disk again")
        self.last = DiskReading(free_bytes=free, expected_pass_bytes=expected, full=full)
        return self.last
