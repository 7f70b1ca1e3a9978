"""Satellite tracking: trajectories, the cable-wrap plan, the one safety gate, the loop.

The station never holds a mount backend: :func:`build_mount` creates the configured
backend and hands back a :class:`GatedMount`, the only object that can reach it. Every
motion command goes through the gate's checks (travel, horizon, Sun, rates).
"""

from station.tracking.controller import (
    TelemetrySubscription,
    Tracker,
    TrackingLost,
    TrackingSample,
    TrackingStats,
)
from station.tracking.factory import build_mount, plan_for_pass
from station.tracking.gate import CommandRefused, GatedMount, GateLimits, Rule
from station.tracking.trajectory import TrackPlan, plan_track, plan_track_async
from station.tracking.wrap import WrapError

__all__ = [
    "CommandRefused",
    "GateLimits",
    "GatedMount",
    "Rule",
    "TelemetrySubscription",
    "TrackPlan",
    "Tracker",
    "TrackingLost",
    "TrackingSample",
    "TrackingStats",
    "WrapError",
    "build_mount",
    "plan_for_pass",
    "plan_track",
    "plan_track_async",
]
