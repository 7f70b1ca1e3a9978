"""Unattended operation: readiness checks before a pass, fault limits, recovery."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from station.config.base import Strict

CheckPolicy = Literal["blocking", "warning", "off"]


class ReadinessConfig(Strict):
    """What is checked before each pass, and whether a failure skips the pass.

    ``blocking``: a failure skips the pass with an alarm and a reason; ``warning``: the
    pass goes ahead with an alarm; ``off``: not checked.
    """

    drivers_connected: CheckPolicy = Field("blocking", description="Mount and tagger links up.")
    time_reference_locked: CheckPolicy = Field("blocking", description="GPSDO locked (or in short holdover).")
    beacon_laser_ready: CheckPolicy = Field("blocking", description="Beacon laser reachable, interlock closed.")
    element_age: CheckPolicy = Field("blocking", description="Element set younger than orbit.max_element_age_days.")
    free_disk: CheckPolicy = Field("blocking", description="Free disk for the expected pass file.")
    stream_consumer: CheckPolicy = Field("warning", description="A post-processing consumer is connected.")
    max_holdover_s: float = Field(3600.0, ge=0, description="Holdover accepted as 'locked' for this long.")


class FaultConfig(Strict):
    """Limits that turn trouble into alarms, aborts and the safe mode."""

    mount_reconnect_grace_s: float = Field(
        15.0, ge=0, description="Mount link lost mid-pass: try to reconnect this long, then abort and go safe."
    )
    tracking_error_limit_arcsec: float = Field(
        600.0, gt=0, description="Tracking error above this (after acquisition) is a fault ..."
    )
    tracking_error_duration_s: float = Field(
        5.0, ge=0, description="... when it lasts longer than this."
    )
    abort_on_tracking_error: bool = Field(False, description="Abort the pass on that fault (else alarm only).")
    min_free_disk_mb: float = Field(
        500.0, ge=0, description="Below this, no new pass is accepted (disk nearly full alarm)."
    )
    park_timeout_s: float = Field(
        240.0, gt=0, description="Longest a park may take (clock seconds) before it is a fault."
    )
    expected_event_rate_hz: float = Field(
        50_000.0, gt=0, description="Detections/s assumed when estimating a pass file's size."
    )


class OperationsConfig(Strict):
    """How the supervisor runs passes by itself."""

    start_mode: Literal["auto", "manual", "maintenance", "safe"] = Field(
        "auto", description="Mode at start-up when no state file says otherwise."
    )
    plan_hours: float = Field(24.0, gt=0, le=168, description="How far ahead the schedule is planned.")
    replan_interval_s: float = Field(3600.0, gt=0, description="Re-plan this often (clock seconds).")
    resume_after_crash: bool = Field(
        True, description="After a crash mid-pass, resume in a new segment if the QKD window is open."
    )
    readiness: ReadinessConfig = Field(default_factory=ReadinessConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)
