"""What one pass segment amounted to (the rehearsal report and the summary's source), and
the exception that ends a pass early."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, Field

from station.daemon.lateness import LatenessStats
from station.daemon.modes import Outcome
from station.daemon.readiness import CheckResult
from station.daemon.record import SegmentState
from station.tracking import TrackingStats

__all__ = ["PassAborted", "PassReport"]


class PassAborted(Exception):
    """The pass must end now; ``go_safe`` asks the supervisor for the safe mode.
    ``tracking`` carries the tracking statistics so far when the track was under way."""

    def __init__(self, reason: str, *, go_safe: bool = False,
                 tracking: TrackingStats | None = None):
        super().__init__(reason)
        self.reason = reason
        self.go_safe = go_safe
        self.tracking = tracking


class PassReport(BaseModel):
    """What happened in one pass segment: the rehearsal report and the summary's source."""

    pass_id: str
    satellite: str
    norad_id: int
    segment: int = 1
    outcome: Outcome = Outcome.COMPLETED
    reason: str = ""
    go_safe: bool = False
    planned_aos: AwareDatetime
    planned_los: AwareDatetime
    qkd_start: AwareDatetime | None = None
    qkd_end: AwareDatetime | None = None
    phase_times: dict[str, AwareDatetime] = Field(default_factory=dict)
    readiness: list[CheckResult] = Field(default_factory=list)
    tracking: TrackingStats | None = None
    counts_by_channel: dict[str, int] = Field(default_factory=dict)
    events_recorded: int = 0
    events_streamed: int = 0
    events_lost: int = 0
    overflow_batches: int = 0
    pass_file: str | None = None
    mount_parked: bool = False
    qber_measured: float | None = Field(
        None, description="Simulator only: QBER of signal states, sifted against what was sent.")
    qber_all_classes: float | None = Field(
        None, description="Simulator only: QBER over signal, decoy and vacuum states.")
    sifted_bits: int | None = Field(None, description="Simulator only: sifted key length.")
    alarms_raised: int = 0
    window_s: float = Field(0.0, description="This segment's part of the QKD window (s).")
    window_lost_s: float = Field(0.0, description="Of it, seconds with no usable recording.")
    window_lost_fraction: float = 0.0
    join_delay_s: float | None = Field(
        None, description="A segment joining a track under way: seconds from the start of "
        "the segment until the mount was on the track.")
    events_after_window: int = Field(
        0, description="Events the tagger delivered after the end of the QKD window: not "
        "recorded (the window is over), counted here.")
    segment_state: SegmentState | None = None
    clock_lateness: LatenessStats | None = Field(
        None, description="Rehearsals on a scaled clock: how late the event loop ran.")
