"""Time tagger backend, the channel map, and per-input settings. (Owned by the time tagger work.)"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from drivers.timetagger.base import Channel, ChannelConfig
from station.config.base import BackendConfig, Strict


class ChannelMapConfig(Strict):
    """Which tagger input carries which signal. The simulated tagger always uses the
    standard map (H=1 V=2 D=3 A=4 SYNC=5 PPS=6); a real tagger is wired to match this."""

    h: int = Field(int(Channel.H), ge=0, le=255, description="Input of the H detector.")
    v: int = Field(int(Channel.V), ge=0, le=255, description="Input of the V detector.")
    d: int = Field(int(Channel.D), ge=0, le=255, description="Input of the D detector.")
    a: int = Field(int(Channel.A), ge=0, le=255, description="Input of the A detector.")
    sync: int = Field(int(Channel.SYNC), ge=0, le=255, description="Input of the sync signal.")
    pps: int = Field(int(Channel.PPS), ge=0, le=255, description="Input of the PPS signal.")

    @model_validator(mode="after")
    def _distinct(self) -> ChannelMapConfig:
        used: dict[int, str] = {}
        for role, channel in self.model_dump().items():
            if channel in used:
                raise ValueError(f"input {channel} is given to both {used[channel]} and {role}")
            used[channel] = role
        return self

    def detectors(self) -> dict[int, str]:
        """Input -> polarization ('H', 'V', 'D', 'A')."""
        return {self.h: "H", self.v: "V", self.d: "D", self.a: "A"}


class InputConfig(Strict):
    """Settings of one tagger input (passed to the backend's ``configure()``)."""

    channel: int = Field(ge=0, le=255, description="Tagger input number.")
    trigger_level_v: float = Field(0.5, ge=-5, le=5, description="Trigger threshold.")
    delay_ps: int = Field(0, description="Input delay added to this input's timestamps (cable lengths).")
    dead_time_ps: int = Field(0, ge=0, description="Input dead time; 0 keeps the backend's default.")

    def to_channel_config(self) -> ChannelConfig:
        return ChannelConfig(channel=self.channel, trigger_level_v=self.trigger_level_v,
                             delay_ps=self.delay_ps, dead_time_ps=self.dead_time_ps)


class TimeTaggerConfig(BackendConfig):
    """The time tagger, chosen by backend name."""

    kind: ClassVar[str] = "timetagger"

    channel_map: ChannelMapConfig = Field(
        default_factory=ChannelMapConfig, description="Which input carries which signal."
    )
    channels: list[InputConfig] = Field(
        default_factory=list,
        description="Per-input trigger level, delay and dead time ([[timetagger.channels]]).",
    )

    @model_validator(mode="after")
    def _inputs_once(self) -> TimeTaggerConfig:
        seen: set[int] = set()
        for item in self.channels:
            if item.channel in seen:
                raise ValueError(f"input {item.channel} is configured twice in [[timetagger.channels]]")
            seen.add(item.channel)
        return self

    def channel_configs(self) -> list[ChannelConfig]:
        """The ``channels`` as the driver interface's :class:`ChannelConfig` list."""
        return [item.to_channel_config() for item in self.channels]
