"""What the daemon publishes to: one Protocol with every method, and a publisher of nothing.

The MQTT service (:class:`station.mqtt.service.MqttService`) implements it; a rehearsal
without MQTT uses :class:`NullPublisher`. The supervisor, the pass runner and the alarm
book call these methods directly: no lookup by name.
"""

from __future__ import annotations

from typing import Protocol

from station.mqtt.messages import (
    AlarmMessage,
    HealthMessage,
    MountTelemetry,
    PassProgress,
    PassSummary,
    PhaseTransition,
    ScheduleMessage,
    StateMessage,
    TimeTaggerTelemetry,
)


class Publisher(Protocol):
    """Every message the station sends. Telemetry methods return whether it went out now
    (they are rate-limited unless ``force``)."""

    def publish_state(self, state: StateMessage) -> None: ...
    def publish_schedule(self, schedule: ScheduleMessage) -> None: ...
    def publish_health(self, health: HealthMessage) -> None: ...
    def publish_alarm(self, alarm: AlarmMessage) -> None: ...
    def publish_transition(self, transition: PhaseTransition) -> None: ...
    def publish_summary(self, summary: PassSummary) -> None: ...
    def publish_mount(self, telemetry: MountTelemetry, *, force: bool = False) -> bool: ...
    def publish_timetagger(self, telemetry: TimeTaggerTelemetry, *, force: bool = False) -> bool: ...
    def publish_pass_progress(self, progress: PassProgress, *, force: bool = False) -> bool: ...


class NullPublisher:
    """Publishes nothing (rehearsals and tests without MQTT); has every method."""

    def publish_state(self, state: StateMessage) -> None:
        return None

    def publish_schedule(self, schedule: ScheduleMessage) -> None:
        return None

    def publish_health(self, health: HealthMessage) -> None:
        return None

    def publish_alarm(self, alarm: AlarmMessage) -> None:
        return None

    def publish_transition(self, transition: PhaseTransition) -> None:
        return None

    def publish_summary(self, summary: PassSummary) -> None:
        return None

    def publish_mount(self, telemetry: MountTelemetry, *, force: bool = False) -> bool:
        return False

    def publish_timetagger(self, telemetry: TimeTaggerTelemetry, *, force: bool = False) -> bool:
        return False

    def publish_pass_progress(self, progress: PassProgress, *, force: bool = False) -> bool:
        return False
