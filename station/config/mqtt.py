"""MQTT broker connection, security and topic root."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from station.config.base import ConfigPath, Strict, is_loopback_host


class TlsConfig(Strict):
    """TLS towards the broker. Omit the table to connect in plain TCP (loopback only!)."""

    ca_file: ConfigPath = Field(description="CA certificate (PEM) that signed the broker's cert.")
    cert_file: ConfigPath | None = Field(None, description="Client certificate (PEM), optional.")
    key_file: ConfigPath | None = Field(None, description="Client private key (PEM), optional.")
    insecure_skip_hostname_check: bool = Field(
        False, description="Accept a broker certificate for another host name (lab use only)."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(Strict):
    """Where status is published and commands are taken."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    embedded: bool = Field(
        False, description="Start an in-process broker (amqtt) on host:port first (demos, CI)."
    )
    topic_root: str = Field(
        "qkd", description="Topics live under <topic_root>/<station_id>/.", pattern=r"^[^#+/]+(/[^#+/]+)*$"
    )
    client_id: str | None = Field(None, description="MQTT client id; default qkd-station-<id>.")
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(None, description="Broker password (prefer password_file).")
    password_file: ConfigPath | None = Field(
        None, description="File whose first line is the broker password."
    )
    tls: TlsConfig | None = Field(None, description="TLS settings; absent means plain TCP.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay (wall seconds).")
    reconnect_max_s: float = Field(
        4.0, gt=0,
        description="Cap of the reconnect backoff (wall seconds); keeps a returning broker "
        "served with retained state within ~5 s.",
    )
    protocol: Literal["3.1.1", "5"] = Field(
        "3.1.1", description="MQTT protocol version. 5 adds response-topic replies to commands."
    )
    telemetry_tracking_hz: float = Field(5.0, gt=0, le=50, description="Mount telemetry rate while tracking.")
    telemetry_idle_s: float = Field(10.0, gt=0, description="Telemetry period when idle.")
    timetagger_acquiring_hz: float = Field(
        1.0, gt=0, le=50, description="Time tagger rate telemetry while acquiring."
    )
    pass_progress_hz: float = Field(1.0, gt=0, le=50, description="Pass progress rate during a pass.")
    queue_max: int = Field(
        1000, ge=10,
        description="Alarms/replies kept for sending while the broker is away; beyond, the "
        "oldest is dropped and counted.",
    )
    command_rate_per_s: float = Field(
        2.0, gt=0, description="Sustained commands per second accepted (token bucket, station clock)."
    )
    command_burst: int = Field(5, ge=1, description="Commands accepted back to back before rate limiting.")
    command_max_running: int = Field(
        4, ge=1, description="Commands executing at once; more get a 'busy' reply."
    )
    home_assistant_discovery: bool = Field(
        False, description="Announce sensors through Home Assistant's MQTT discovery."
    )
    home_assistant_prefix: str = Field("homeassistant", description="HA discovery prefix.")

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.embedded and self.protocol == "5":
            raise ValueError('the embedded broker (amqtt) speaks MQTT 3.1.1 only: use protocol = '
                             '"3.1.1", or embedded = false with a Mosquitto broker')
        if self.embedded and not is_loopback_host(self.host):
            raise ValueError(f"the embedded broker (amqtt) lets anyone in without a password, so it "
                             f"listens on loopback only: host = \"127.0.0.1\", not {self.host!r}; "
                             "for other hosts use Mosquitto with config/mosquitto/ (embedded = false)")
        if self.embedded and self.tls is not None:
            raise ValueError("the embedded broker is plain TCP for local use: remove [mqtt.tls], "
                             "or set embedded = false and use Mosquitto (config/mosquitto/)")
        return self

    def resolved_password(self) -> str | None:
        """The password, read from ``password_file`` when one is configured."""
        if self.password_file is not None:
            return self.password_file.read_text().splitlines()[0].strip()
        return self.password.get_secret_value() if self.password else None
