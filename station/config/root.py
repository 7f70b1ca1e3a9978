"""The root of the configuration tree."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from station.config.base import ConfigPath
from station.config.clock import ClockConfig
from station.config.events import EventsConfig
from station.config.instruments import InstrumentsConfig
from station.config.keys import KeysConfig
from station.config.mount import MountConfig, SafetyConfig, TrackingConfig
from station.config.mqtt import MqttConfig
from station.config.operations import OperationsConfig
from station.config.orbit import OrbitConfig, ScheduleConfig
from station.config.site import SiteConfig
from station.config.timetagger import TimeTaggerConfig
from station.config.web import WebConfig

ENV_PREFIX = "QKD_STATION__"

#: Field metadata of a section a running daemon takes on SIGHUP; every other section
#: needs a restart (see :func:`restart_sections`). Restart is the default, so a new
#: section is never half-applied by accident.
LIVE = {"reload": "live"}


class StationConfig(BaseSettings):
    """Everything one station needs. Environment variables ``QKD_STATION__A__B=value``
    override ``a.b`` from the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    station_id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Short id used in MQTT topics and file names (lowercase, digits, - _).",
    )
    state_dir: ConfigPath = Field(description="Pass files and the state file go here.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR.", json_schema_extra=LIVE
    )
    site: SiteConfig
    clock: ClockConfig = Field(default_factory=ClockConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    orbit: OrbitConfig = Field(default_factory=OrbitConfig, json_schema_extra=LIVE)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, json_schema_extra=LIVE)
    mount: MountConfig = Field(default_factory=MountConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, json_schema_extra=LIVE)
    timetagger: TimeTaggerConfig = Field(default_factory=TimeTaggerConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    instruments: InstrumentsConfig = Field(default_factory=InstrumentsConfig)
    operations: OperationsConfig = Field(default_factory=OperationsConfig, json_schema_extra=LIVE)
    web: WebConfig = Field(default_factory=WebConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (first source has the highest priority).
        return (env_settings, init_settings)

    @property
    def topic_prefix(self) -> str:
        """``<topic_root>/<station_id>``: every topic of this station starts with it."""
        return f"{self.mqtt.topic_root}/{self.station_id}"


def live_sections() -> list[str]:
    """Top-level fields of :class:`StationConfig` that a running daemon takes on reload."""
    return [name for name, f in StationConfig.model_fields.items()
            if f.json_schema_extra == LIVE]


def restart_sections(old: StationConfig, new: StationConfig) -> list[str]:
    """The top-level fields that differ between ``old`` and ``new`` and need a restart."""
    live = set(live_sections())
    return [name for name in StationConfig.model_fields
            if name not in live and getattr(old, name) != getattr(new, name)]
