"""Every payload the station sends or takes over MQTT, as pydantic models.

These models are the single source of truth: the code builds and validates payloads with
them, ``docs/schemas/*.json`` and the retained ``<root>/<id>/schema/<name>`` topics are
generated from them (see :func:`json_schemas`), and ``docs/mqtt.md`` describes them.

Conventions: times are UTC ISO 8601 strings ending in ``Z``; every quantity has its unit
in its name (``az_deg``, ``rate_hz``, ``elapsed_s``); unknown fields are rejected on input.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from station.orbit.pass_ids import PASS_ID_EXAMPLE
from station.utc import UtcTime
from station.vocabulary import Mode, Outcome, Phase

#: Version of the payload formats; bumped on any incompatible change.
SCHEMA_VERSION = 1


class Payload(BaseModel):
    """Base of every wire message: unknown fields are errors; enums are sent as values."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    def to_json(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return self.model_dump_json(exclude_none=False).encode()


# --- presence and state -------------------------------------------------------------------
class Status(StrEnum):
    """Payload of ``status`` (plain text, not JSON): the station's presence."""

    ONLINE = "online"
    OFFLINE = "offline"


class PassRef(Payload):
    """A pass as other messages refer to it."""

    pass_id: str = Field(description=f"Stable id of the pass, e.g. '{PASS_ID_EXAMPLE}'.")
    satellite: str = Field(description="Satellite name.")
    norad_id: int = Field(description="NORAD catalogue number.")
    aos: UtcTime = Field(description="Rise above the horizon mask (UTC).")
    tca: UtcTime | None = Field(None, description="Time of highest elevation (UTC).")
    los: UtcTime = Field(description="Set below the horizon mask (UTC).")
    max_el_deg: float = Field(description="Highest elevation of the pass, degrees.")


class ConfigSummary(Payload):
    """The parts of the configuration a dashboard shows."""

    station_name: str = Field(description="Human-readable station name (site.name).")
    latitude_deg: float = Field(description="Site latitude, degrees north.")
    longitude_deg: float = Field(description="Site longitude, degrees east.")
    height_m: float = Field(description="Site height above the WGS84 ellipsoid, metres.")
    clock_source: str = Field(description="'real' or 'simulated'.")
    clock_speed: float | None = Field(None, description="Simulated seconds per wall second.")
    mount_backend: str = Field(description="Mount backend name, e.g. 'sim', 'rotctld'.")
    timetagger_backend: str = Field(description="Time tagger backend name.")


class StateMessage(Payload):
    """``state``: what the station is doing, kept current (retained)."""

    schema_version: int = Field(SCHEMA_VERSION, description="Payload format version.")
    time: UtcTime = Field(description="When this state was published (station clock, UTC).")
    station_id: str = Field(description="The station id (also in the topic).")
    daemon_version: str = Field(description="qkd-station version.")
    started_at: UtcTime = Field(description="When the daemon started (station clock).")
    uptime_s: float = Field(ge=0, description="Seconds since start (station clock).")
    mode: Mode = Field(description="auto | manual | maintenance | safe.")
    phase: Phase = Field(description="idle | prepare | track | finalize | park.")
    current_pass: PassRef | None = Field(None, description="The pass being worked, if any.")
    next_pass: PassRef | None = Field(None, description="The next planned pass, if any.")
    config: ConfigSummary = Field(description="Summary of the running configuration.")
    message: str = Field("", description="Short free text, e.g. why the station is in safe mode.")


# --- schedule -------------------------------------------------------------------------------
class PassDecision(StrEnum):
    PLANNED = "planned"          # will be taken
    SKIPPED = "skipped"          # will not be taken (reason says why)
    EXCLUDED = "excluded"        # an operator skipped it
    INCLUDED = "included"        # an operator forced it in
    DONE = "done"                # already worked


class ScheduledPass(PassRef):
    """One pass in the plan, with the decision and its reason."""

    decision: PassDecision = Field(description="planned | skipped | excluded | included | done.")
    reason: str = Field(description="Why, in words (e.g. 'overlaps a higher-priority pass').")
    priority: float | None = Field(None, description="Score used to choose between overlapping passes.")


class ScheduleMessage(Payload):
    """``schedule``: the planned passes (retained, re-sent on every change)."""

    schema_version: int = Field(SCHEMA_VERSION, description="Payload format version.")
    time: UtcTime = Field(description="When the plan was made (station clock).")
    horizon_end: UtcTime | None = Field(None, description="The plan covers passes up to here.")
    passes: list[ScheduledPass] = Field(default_factory=list, description="In AOS order.")


# --- telemetry ------------------------------------------------------------------------------
class MountTelemetry(Payload):
    """``mount``: where the telescope points (5 Hz while tracking and during the slew in prepare, slow when idle)."""

    time: UtcTime = Field(description="Time of the position sample (station clock).")
    actual_az_deg: float = Field(description="Measured azimuth (wrap-aware), degrees.")
    actual_el_deg: float = Field(description="Measured elevation, degrees.")
    commanded_az_deg: float | None = Field(None, description="Last commanded azimuth, degrees.")
    commanded_el_deg: float | None = Field(None, description="Last commanded elevation, degrees.")
    target_az_deg: float | None = Field(None, description="Where the satellite is now (while tracking).")
    target_el_deg: float | None = Field(None, description="Satellite elevation now (while tracking).")
    tracking_error_arcsec: float | None = Field(
        None, ge=0, description="Angular distance actual-to-target on the sky, arcseconds."
    )
    moving: bool = Field(description="An axis is moving.")
    parked: bool = Field(description="At the park position and stopped.")
    tracking: bool = Field(False, description="Following a satellite.")
    connected: bool = Field(True, description="The mount link is up.")


class TimeTaggerTelemetry(Payload):
    """``timetagger``: count rates (1 Hz while acquiring, slow when idle)."""

    time: UtcTime = Field(description="End of the rate window (station clock).")
    acquiring: bool = Field(description="Events are being recorded.")
    window_s: float = Field(gt=0, description="Length of the sliding window the rates average over.")
    rates_hz: dict[str, float] = Field(
        description="Detections per second by channel name (H, V, D, A, SYNC, PPS, ...)."
    )
    overflow: bool = Field(False, description="The tagger reported an overflow in the window.")
    overflow_count: int = Field(0, ge=0, description="Overflows since the start of the pass.")
    events_total: int = Field(0, ge=0, description="Events recorded since the start of the pass.")
    connected: bool = Field(True, description="The tagger link is up.")


class PassProgress(Payload):
    """``pass``: progress of the current pass (1 Hz during a pass)."""

    time: UtcTime = Field(description="Station clock.")
    pass_id: str = Field(description="Id of the pass.")
    satellite: str = Field(description="Satellite name.")
    phase: Phase = Field(description="prepare | track | finalize | park.")
    elapsed_s: float = Field(ge=0, description="Seconds since the pass started (prepare).")
    remaining_s: float | None = Field(None, ge=0, description="Seconds to LOS, if known.")
    el_deg: float | None = Field(None, description="Satellite elevation now, degrees.")
    range_km: float | None = Field(None, ge=0, description="Slant range to the satellite, km.")
    events_recorded: int = Field(0, ge=0, description="Events written to the pass file.")
    events_streamed: int = Field(0, ge=0, description="Events handed to the post-processing stream.")
    events_lost: int = Field(0, ge=0, description="Events known lost (overflow, gaps).")


class DriverHealth(Payload):
    name: str = Field(description="Driver name, e.g. 'mount', 'timetagger', 'beacon_laser'.")
    connected: bool = Field(description="The link to the device is up.")
    detail: str = Field("", description="Last error or state, in words.")


class ElementAge(Payload):
    norad_id: int = Field(description="NORAD catalogue number.")
    satellite: str = Field(description="Satellite name.")
    epoch: UtcTime = Field(description="Epoch of the element set in use.")
    age_days: float = Field(description="Station clock minus epoch, days.")


class HealthMessage(Payload):
    """``health``: can the station take the next pass? (retained, on change and every idle period)"""

    time: UtcTime = Field(description="Station clock.")
    drivers: list[DriverHealth] = Field(default_factory=list, description="One per device.")
    elements: list[ElementAge] = Field(default_factory=list, description="One per satellite.")
    disk_free_bytes: int | None = Field(None, ge=0, description="Free space in state_dir.")
    expected_pass_bytes: int | None = Field(None, ge=0, description="Estimated size of the next pass file.")
    time_reference_locked: bool | None = Field(None, description="GPSDO / time reference locked; null if none.")
    stream_consumer_connected: bool | None = Field(
        None, description="A post-processing consumer is connected; null if streaming is off."
    )
    mqtt_dropped_total: int = Field(
        0, ge=0, description="MQTT messages the station dropped: alarms or replies pushed out of "
        "a full queue, messages no broker could take (bad topic, too large) and messages the "
        "broker refused 3 times.")
    ok: bool = Field(description="Everything the readiness checks require is fine.")


class AlarmState(StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


class AlarmSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlarmMessage(Payload):
    """``alarms``: one message per alarm raised or cleared (not retained, QoS 1)."""

    key: str = Field(description="Alarm identity, e.g. 'mount.link'.")
    state: AlarmState = Field(description="raised | cleared.")
    severity: AlarmSeverity = Field(description="info | warning | critical.")
    message: str = Field(description="What happened, in words.")
    time: UtcTime = Field(description="Station clock.")
    pass_id: str | None = Field(None, description="Pass during which it happened.")


#: Longest ``PhaseTransition.reason`` (characters); longer reasons are cut to it.
TRANSITION_REASON_MAX = 1000


class PhaseTransition(Payload):
    """``transitions``: one message per pass phase change (not retained, QoS 1, kept until
    sent), so a dashboard sees every phase even when ``state`` updates were coalesced."""

    time: UtcTime = Field(description="When the phase began (station clock).")
    pass_id: str = Field(description="Id of the pass.")
    satellite: str = Field(description="Satellite name.")
    segment: int = Field(1, ge=1, description="1, or 2, 3 ... for a pass resumed after a crash.")
    from_phase: Phase = Field(description="Phase left.")
    to_phase: Phase = Field(description="Phase entered: prepare | track | finalize | park | idle.")
    mode: Mode = Field(description="Operating mode at the time.")
    reason: str = Field(
        max_length=TRANSITION_REASON_MAX, description="Why the phase changed, in words (e.g. "
        "'QKD window opens in 95 s: readiness checks, then slewing to the start of the "
        "track', 'LOS', 'aborted: operator: clouds', 'pass completed').")
    kind: Literal["phase"] = Field(
        "phase", description="Always 'phase': tells this message from the other kinds of "
        "event on the transitions topic.")


class TrackingErrorStats(Payload):
    rms_arcsec: float = Field(ge=0, description="RMS tracking error while tracking.")
    p95_arcsec: float = Field(ge=0, description="95th percentile.")
    max_arcsec: float = Field(ge=0, description="Largest sample.")
    samples: int = Field(ge=0, description="Number of samples.")


class SegmentBrief(Payload):
    """One recorded segment of a pass, as the whole-pass summary lists it."""

    segment: int = Field(ge=1, description="Segment number (1, or 2, 3 ... after a resume).")
    stream_pass_id: str = Field(description="Pass id on the stream and file stem: <pass_id> or <pass_id>-s<N>.")
    outcome: Outcome = Field(description="How this segment ended.")
    reason: str = Field("", description="Why, in words.")
    started_at: UtcTime | None = Field(None, description="When work on the segment began.")
    ended_at: UtcTime | None = Field(None, description="When the segment ended: the end of its last batch on disk for an interrupted segment, the end of the work otherwise.")
    events_recorded: int = Field(0, ge=0, description="Events in the segment's pass file.")
    events_lost: int = Field(0, ge=0, description="Events counted lost in the segment (tagger + disk).")
    window_recorded_s: float = Field(0.0, ge=0, description="QKD-window seconds this segment recorded with the pointing within the limit.")
    file_path: str | None = Field(None, description="The segment's pass file.")


class WindowGap(Payload):
    """A part of the QKD window with no usable recording."""

    start: UtcTime = Field(description="Start of the gap (UTC).")
    end: UtcTime = Field(description="End of the gap (UTC).")
    duration_s: float = Field(ge=0, description="Length of the gap.")
    cause: str = Field(description="Why nothing usable was recorded then, in words.")


class PassSummary(Payload):
    """``passes/<pass_id>/summary``: the record of one finished pass (retained).

    On ``passes/<pass_id>/summary`` it is always the whole pass (``segment`` null): it adds
    up every segment and every gap. A pass resumed after a crash also has one summary per
    segment on ``passes/<pass_id>-s<N>/summary`` (``segment`` N)."""

    schema_version: int = Field(SCHEMA_VERSION, description="Payload format version.")
    pass_id: str = Field(description="Id of the pass (also in the topic); <pass_id>-s<N> for a segment summary.")
    satellite: str = Field(description="Satellite name.")
    norad_id: int = Field(description="NORAD catalogue number.")
    outcome: Outcome = Field(description="completed | degraded | skipped | aborted | interrupted.")
    segment: int | None = Field(None, ge=1, description="Null: the whole pass; N: this summary covers segment N alone.")
    reason: str = Field("", description="Why it was skipped/aborted, in words.")
    planned_aos: UtcTime = Field(description="Predicted rise (UTC).")
    planned_los: UtcTime = Field(description="Predicted set (UTC).")
    started_at: UtcTime | None = Field(None, description="When work on it began.")
    ended_at: UtcTime | None = Field(None, description="When the station was done with it.")
    max_el_deg: float | None = Field(None, description="Highest elevation reached, degrees.")
    counts_by_channel: dict[str, int] = Field(default_factory=dict, description="Events per channel name.")
    events_recorded: int = Field(0, ge=0, description="Events in the pass file.")
    events_streamed: int = Field(0, ge=0, description="Events handed to the stream.")
    events_lost: int = Field(0, ge=0, description="Events known lost.")
    tracking_error: TrackingErrorStats | None = Field(None, description="Tracking error statistics.")
    file_path: str | None = Field(None, description="Pass file on the station PC (the last segment's, for a whole pass).")
    alarms_raised: int = Field(0, ge=0, description="Alarms raised during the pass.")
    window_s: float | None = Field(None, ge=0, description="Length of the planned QKD window (of this segment's part of it, for a segment summary).")
    window_lost_s: float | None = Field(None, ge=0, description="Seconds of that window with no usable recording (not recorded, or pointing above the tracking error limit).")
    window_lost_fraction: float | None = Field(None, ge=0, le=1, description="window_lost_s / window_s.")
    events_lost_in_gaps_estimate: int | None = Field(None, ge=0, description="Events the gaps are estimated to have cost, at the pass's mean recorded rate (not counted in events_lost).")
    segments: list[SegmentBrief] = Field(default_factory=list, description="Every segment of the pass, in order (whole-pass summary).")
    gaps: list[WindowGap] = Field(default_factory=list, description="The parts of the QKD window with no usable recording, in order.")


# --- commands -------------------------------------------------------------------------------
_REQUEST_ID_BODY = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
#: Match with ``fullmatch`` only: ``match`` with ``$`` would accept a trailing newline,
#: which would then end up in the reply topic.
REQUEST_ID_RE = re.compile(_REQUEST_ID_BODY)
# Pydantic's (Rust) regex: ``$`` is the end of the text, never before a final newline.
_REQUEST_ID = f"^{_REQUEST_ID_BODY}$"


class CommandRequest(Payload):
    """Every command's payload has a ``request_id``; verbs add their own arguments."""

    request_id: str = Field(
        pattern=_REQUEST_ID,
        description="Caller-chosen unique id: 1-64 of A-Z a-z 0-9 . _ : - starting with a letter "
        "or digit; the reply goes to reply/<request_id>.",
    )


class ParkRequest(CommandRequest):
    """``cmd/park``: drive to the park position (ends any pass in progress)."""


class StopRequest(CommandRequest):
    """``cmd/stop``: stop all motion now, where it is."""


class GotoRequest(CommandRequest):
    """``cmd/goto``: point at az/el, through the safety gate (manual or maintenance mode)."""

    # strict: a JSON boolean is not a number (``true`` must not become 1.0°).
    az_deg: float = Field(strict=True, ge=-360, le=720,
                          description="Azimuth, degrees from north through east.")
    el_deg: float = Field(strict=True, ge=-5, le=180, description="Elevation, degrees.")


class SetModeRequest(CommandRequest):
    """``cmd/set_mode``: change the operating mode."""

    mode: Mode = Field(description="auto | manual | maintenance | safe.")


class SkipPassRequest(CommandRequest):
    """``cmd/skip_pass``: do not take this planned pass."""

    pass_id: str = Field(min_length=1, max_length=128, description="Id from the schedule.")


class IncludePassRequest(CommandRequest):
    """``cmd/include_pass``: take this pass even though the planner skipped it."""

    pass_id: str = Field(min_length=1, max_length=128, description="Id from the schedule.")


class AbortPassRequest(CommandRequest):
    """``cmd/abort_pass``: end the current pass now, keeping what was recorded."""

    reason: str = Field("operator abort", max_length=500, description="Recorded in the pass summary.")


class ReloadElementsRequest(CommandRequest):
    """``cmd/reload_elements``: re-read the orbital element sources."""


class RescheduleRequest(CommandRequest):
    """``cmd/reschedule``: plan again now."""


#: Verb -> request model. The topic ``cmd/<verb>`` selects the model.
COMMANDS: dict[str, type[CommandRequest]] = {
    "park": ParkRequest,
    "stop": StopRequest,
    "goto": GotoRequest,
    "set_mode": SetModeRequest,
    "skip_pass": SkipPassRequest,
    "abort_pass": AbortPassRequest,
    "include_pass": IncludePassRequest,
    "reload_elements": ReloadElementsRequest,
    "reschedule": RescheduleRequest,
}


# --- command results ---------------------------------------------------------------------
class CommandResult(Payload):
    """Base of every verb's ``result`` (the reply's ``result`` when ``ok``)."""


class ParkResult(CommandResult):
    """``park``: the mount parked (a pass in progress is aborted first)."""

    parked: bool = Field(description="True once the mount reports parked.")
    pass_aborted: bool = Field(description="True when a pass was in progress and was aborted.")


class StopResult(CommandResult):
    """``stop``: motion stopped (a pass in progress is asked to abort)."""

    stopped: bool = Field(description="True: the stop was sent to the mount.")
    pass_aborted: bool = Field(description="True when a pass was in progress and was asked to abort.")


class GotoResult(CommandResult):
    """``goto``: the safety gate accepted the target and the slew is under way."""

    az_deg: float = Field(description="Target azimuth as requested, degrees.")
    el_deg: float = Field(description="Target elevation, degrees.")
    accepted: bool = Field(description="True: the gate let the slew through.")


class SetModeResult(CommandResult):
    """``set_mode``: the mode now and before."""

    mode: Mode = Field(description="The mode after the command.")
    previous: Mode = Field(description="The mode before the command.")


class SkipPassResult(CommandResult):
    """``skip_pass``: the pass is excluded from the plan."""

    pass_id: str = Field(description="The pass excluded.")
    excluded: bool = Field(description="Always true on success.")


class IncludePassResult(CommandResult):
    """``include_pass``: the pass is forced into the plan; what the planner made of it."""

    pass_id: str = Field(description="The pass included.")
    status: str = Field(description="The planner's status for it now: scheduled, or why not "
                        "(e.g. conflict), or unknown when it left the plan.")
    reason: str = Field(description="The planner's reason, in words.")


class AbortPassResult(CommandResult):
    """``abort_pass``: the pass ended (its file closed, the mount parked)."""

    pass_id: str | None = Field(description="The pass aborted.")
    outcome: Outcome | None = Field(description="Its outcome (aborted unless it had just ended).")
    events_recorded: int = Field(description="Detection events recorded in this segment.")


class ReloadElementsResult(CommandResult):
    """``reload_elements``: the element files were read again and the plan redone."""

    satellites: int = Field(description="Satellites in the catalog after the reload.")
    problems: list[str] = Field(description="Records or files rejected (the previous elements "
                                "of their satellites are kept).")


class RescheduleResult(CommandResult):
    """``reschedule``: the plan was redone."""

    scheduled: list[str] = Field(description="Pass ids scheduled, in order.")
    rejected: int = Field(description="Passes the planner considered and did not schedule.")


#: Verb -> result model (the reply's ``result`` when ``ok``).
RESULTS: dict[str, type[CommandResult]] = {
    "park": ParkResult,
    "stop": StopResult,
    "goto": GotoResult,
    "set_mode": SetModeResult,
    "skip_pass": SkipPassResult,
    "abort_pass": AbortPassResult,
    "include_pass": IncludePassResult,
    "reload_elements": ReloadElementsResult,
    "reschedule": RescheduleResult,
}


class ErrorCode(StrEnum):
    """Why a command failed."""

    INVALID_JSON = "invalid_json"          # payload is not a JSON object
    INVALID_REQUEST = "invalid_request"    # missing/unknown/out-of-range argument
    UNKNOWN_VERB = "unknown_verb"          # no such command
    RATE_LIMITED = "rate_limited"          # too many commands; try again later
    REFUSED = "refused"                    # the station said no (mode, safety gate, no pass)
    BUSY = "busy"                          # too many commands still running
    INTERNAL = "internal"                  # a bug; logged on the station


class CommandError(Payload):
    code: ErrorCode = Field(description="Machine-readable reason.")
    message: str = Field(description="What was wrong, in words; names the field and value.")
    details: list[dict[str, Any]] = Field(
        default_factory=list, description="Per-field problems: {field, value, reason}; at most 8, "
        "each value cut to 80 characters."
    )


class CommandReply(Payload):
    """``reply/<request_id>``: the answer to one command (QoS 1, not retained)."""

    request_id: str | None = Field(description="From the request; null when it could not be read.")
    verb: str = Field(description="The verb from the topic (an unknown one cut to 80 characters).")
    ok: bool = Field(description="True when the command was carried out.")
    error: CommandError | None = Field(None, description="Set when ok is false.")
    result: dict[str, Any] | None = Field(
        None, description="Verb-specific result when ok: the schema result_<verb> describes it.")
    time: UtcTime = Field(description="When the reply was made (station clock).")


#: Name -> model of every JSON payload; the schema topics and files use these names.
SCHEMAS: dict[str, type[BaseModel]] = {
    "state": StateMessage,
    "schedule": ScheduleMessage,
    "mount": MountTelemetry,
    "timetagger": TimeTaggerTelemetry,
    "pass": PassProgress,
    "health": HealthMessage,
    "alarm": AlarmMessage,
    "transition": PhaseTransition,
    "pass_summary": PassSummary,
    "reply": CommandReply,
    **{f"cmd_{verb}": model for verb, model in COMMANDS.items()},
    **{f"result_{verb}": model for verb, model in RESULTS.items()},
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12, serialization mode) of every payload, by name."""
    out = {}
    for name, model in SCHEMAS.items():
        mode: Literal["validation", "serialization"] = (
            "validation" if name.startswith("cmd_") else "serialization"
        )
        schema = model.model_json_schema(mode=mode)
        schema["$id"] = f"qkd-station/{name}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[name] = schema
    return out
