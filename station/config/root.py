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

ENV_PREFIX = "QKD_STATION__"


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
        "INFO", description="DEBUG, INFO, WARNING or ERROR."
    )
    site: SiteConfig
    clock: ClockConfig = Field(default_factory=ClockConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    orbit: OrbitConfig = Field(default_factory=OrbitConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    mount: MountConfig = Field(default_factory=MountConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    timetagger: TimeTaggerConfig = Field(default_factory=TimeTaggerConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    instruments: InstrumentsConfig = Field(default_factory=InstrumentsConfig)
    operations: OperationsConfig = Field(default_factory=OperationsConfig)
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
