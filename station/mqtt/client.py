"""What a client of a station (monitor, cmd, a script) needs from a station config file.

Only ``station_id`` and the ``[mqtt]`` table are read, with the same environment
overrides as the daemon (``QKD_STATION__MQTT__USERNAME=operator`` ...): an operator's
laptop can use the station's own file without its device backends installed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from station.config.base import CONFIG_DIR
from station.config.loader import ConfigError, format_errors
from station.config.mqtt import MqttConfig
from station.config.root import ENV_PREFIX


class ClientSettings(BaseSettings):
    """The station id and MQTT settings of a config file; everything else is ignored."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="ignore", case_sensitive=False)

    station_id: str = Field(description="Station whose topics to use.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker and security.")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @property
    def topic_prefix(self) -> str:
        return f"{self.mqtt.topic_root}/{self.station_id}"


def load_client_settings(path: str | Path, *, station_id: str | None = None) -> ClientSettings:
    """Read ``station_id`` and ``[mqtt]`` from a config file; :class:`ConfigError` if bad."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), [f"(file): {str(path)!r}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"(file): {str(path)!r}: not valid TOML: {exc}"]) from None
    data = {k: v for k, v in data.items() if k in ("station_id", "mqtt")}
    if station_id:
        data["station_id"] = station_id
    token = CONFIG_DIR.set(path.resolve().parent)
    try:
        return ClientSettings(**data)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc)) from None
    finally:
        CONFIG_DIR.reset(token)
