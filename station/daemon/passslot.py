"""The pass slot: at most one pass in progress, its runner and task, and the reports of
the passes that ended (run, aborted or skipped before anything moved)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from station.daemon.alarms import Severity
from station.daemon.context import StationContext
from station.daemon.modes import Outcome
from station.daemon.pass_runner import OnPhase, PassReport, PassRunner
from station.daemon.passbook import PassBook
from station.daemon.publisher import Publisher
from station.daemon.record import SegmentState
from station.mqtt.messages import PassSummary
from station.schedule import PlannedPass

log = logging.getLogger("station.supervisor")


class PassSlot:
    """Starts a pass, asks it to end, files its report (see the module docstring)."""

    def __init__(self, ctx: StationContext, book: PassBook):
        self.ctx = ctx
        self.book = book
        self.runner: PassRunner | None = None
        self.task: asyncio.Task[PassReport] | None = None
        self.reports: list[PassReport] = []
        #: Set each time a pass ends (tests and rehearsals wait on it).
        self.finished = asyncio.Event()

    @property
    def running(self) -> bool:
        """A pass is in progress (its task not yet taken)."""
        return self.task is not None

    @property
    def current_pass_id(self) -> str | None:
        return self.runner.entry.pass_id if self.runner is not None else None

    def start(self, entry: PlannedPass, publisher: Publisher, *,
              on_phase: OnPhase,
              on_file_opened: Callable[[str], None], segment: int = 1,
              earlier: list[SegmentState] | None = None) -> None:
        """Run ``entry`` (segment ``segment``) in its own task."""
        self.runner = PassRunner(self.ctx, entry, segment=segment, on_phase=on_phase,
                                 publisher=publisher, on_file_opened=on_file_opened,
                                 earlier_segments=earlier)
        self.task = asyncio.create_task(self.runner.run(), name=f"pass-{entry.pass_id}")

    def take(self, task: asyncio.Task[PassReport]) -> PassReport:
        """Empty the slot and file the ended task's report. Raises what the task raised
        (a cancellation, or a crash: a bug, since the runner reports pass faults)."""
        self.task, self.runner = None, None
        report = task.result()
        self.reports.append(report)
        self.book.done[report.pass_id] = report.outcome
        self.finished.set()
        return report

    def skip(self, p: PlannedPass, reason: str, publisher: Publisher) -> None:
        """Skip a pass before anything moves: alarm, summary, report."""
        log.error("pass %s skipped: %s", p.pass_id, reason)
        self.ctx.alarms.raise_("pass.skipped", Severity.WARNING, f"{p.pass_id}: {reason}",
                               pass_id=p.pass_id)
        publisher.publish_summary(PassSummary(
            pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id,
            outcome=Outcome.SKIPPED, reason=reason, planned_aos=p.aos, planned_los=p.los,
            max_el_deg=p.max_el_deg))
        self.reports.append(PassReport(
            pass_id=p.pass_id, satellite=p.satellite, norad_id=p.norad_id,
            outcome=Outcome.SKIPPED, reason=reason, planned_aos=p.aos, planned_los=p.los,
            qkd_start=p.qkd_start, qkd_end=p.qkd_end))
        self.book.done[p.pass_id] = Outcome.SKIPPED
        self.finished.set()

    def request_abort(self, reason: str, *, go_safe: bool = False) -> bool:
        """Ask the pass in progress to end (without waiting); False when there is none."""
        if self.runner is None:
            return False
        self.runner.request_abort(reason, go_safe=go_safe)
        return True
