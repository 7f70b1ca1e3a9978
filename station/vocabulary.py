"""The station's shared vocabulary: operating modes, pass phases and pass outcomes.

These enums are spoken by the daemon, the MQTT messages and the command handler alike,
so they live here, below all of them: ``station.mqtt`` names a mode without importing
the daemon.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PHASE_ORDER", "Mode", "Outcome", "Phase"]


class Mode(StrEnum):
    """What the station is allowed to do by itself."""

    AUTO = "auto"                 # follow the schedule
    MANUAL = "manual"             # operator commands only
    MAINTENANCE = "maintenance"   # no automatic motion
    SAFE = "safe"                 # parked; motion refused until an operator clears it


class Phase(StrEnum):
    """Where the station is in a pass. ``idle`` between passes."""

    IDLE = "idle"
    PREPARE = "prepare"
    TRACK = "track"
    FINALIZE = "finalize"
    PARK = "park"


#: The order every pass goes through (a skipped or aborted pass jumps to finalize/park).
PHASE_ORDER = [Phase.IDLE, Phase.PREPARE, Phase.TRACK, Phase.FINALIZE, Phase.PARK, Phase.IDLE]


class Outcome(StrEnum):
    """How a pass ended."""

    COMPLETED = "completed"
    DEGRADED = "degraded"           # ran to the end but lost a stated share of its window
    SKIPPED = "skipped"             # readiness failed or operator skip, nothing moved
    ABORTED = "aborted"             # stopped part-way by a fault or an operator
    INTERRUPTED = "interrupted"     # the daemon died mid-pass (found at start-up)
