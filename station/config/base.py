"""Shared pieces of the configuration models: strict base, paths, backend selection."""

from __future__ import annotations

import contextvars
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

#: Directory of the config file being loaded; relative paths in it resolve against it.
CONFIG_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "qkd_station_config_dir", default=None
)


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


def _resolve(path: Path) -> Path:
    path = path.expanduser()
    base = CONFIG_DIR.get()
    if not path.is_absolute() and base is not None:
        path = Path(os.path.normpath(base / path))
    return path


def _not_empty(value: Any) -> Any:
    # Path("") is ".", the current folder: an empty QKD_STATION__STATE_DIR would silently
    # move the state to the config file's folder.
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty; give a path")
    return value


#: A filesystem path; relative ones are taken relative to the config file's folder.
ConfigPath = Annotated[Path, BeforeValidator(_not_empty), AfterValidator(_resolve)]


class BackendConfig(Strict):
    """A device chosen by backend name, with that backend's own options.

    The options are checked against the backend's ``Options`` model when the config is
    loaded, so ``check-config`` reports a bad option before anything starts.
    """

    kind: ClassVar[str] = ""

    backend: str = Field("sim", description="Backend name, e.g. 'sim'; see drivers.registry.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (the backend's Options)."
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_option_paths(cls, data: Any) -> Any:
        # Drivers cannot know where the config file is; a relative file option (a replay
        # file, a VISA YAML) means relative to the config file, like every other path.
        base = CONFIG_DIR.get()
        if not isinstance(data, dict) or base is None or not isinstance(data.get("options"), dict):
            return data
        options = dict(data["options"])
        for key, value in options.items():
            if (key == "path" or key.endswith(("_path", "_file"))) and isinstance(value, str) \
                    and value and not Path(value).expanduser().is_absolute():
                options[key] = os.path.normpath(base / value)
        return {**data, "options": options}

    @model_validator(mode="after")
    def _check_backend(self) -> BackendConfig:
        from drivers import registry

        try:
            registry.validate_options(self.kind, self.backend, self._resolved_options())
        except registry.UnknownBackend as exc:
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            # The Options model reports `warp_drive`; the operator wrote `mount.options.warp_drive`.
            raise ValidationError.from_exception_data(
                exc.title,
                [{"type": err["type"], "loc": ("options", *err["loc"]), "input": err["input"],
                  **({"ctx": err["ctx"]} if "ctx" in err else {})}
                 for err in exc.errors(include_url=False)],
            ) from None
        return self

    def _resolved_options(self) -> dict[str, Any]:
        return dict(self.options)

    def validated_options(self) -> BaseModel:
        """The options as the backend's validated ``Options`` model."""
        from drivers import registry

        return registry.validate_options(self.kind, self.backend, self._resolved_options())


_TCP_ENDPOINT = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\*|\d{1,5})$")
_ENDPOINT_HELP = ("expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:5560; PORT may be *), "
                  "ipc://PATH or inproc://NAME")


def _zmq_endpoint(value: str) -> str:
    """A ZeroMQ endpoint the stream can bind: checked here so a typo fails check-config,
    not the daemon's start."""
    if any(not ch.isprintable() or ch.isspace() for ch in value):
        raise ValueError(f"not a ZeroMQ endpoint (it contains spaces or control characters): {_ENDPOINT_HELP}")
    if value.startswith(("ipc://", "inproc://")):
        if value.split("://", 1)[1] == "":
            raise ValueError(f"not a ZeroMQ endpoint (no path or name): {_ENDPOINT_HELP}")
        return value
    match = _TCP_ENDPOINT.match(value)
    if match is None:
        raise ValueError(f"not a ZeroMQ endpoint: {_ENDPOINT_HELP}")
    port = match.group("port")
    if port != "*" and not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    host = match.group("host").strip("[]")
    if match.group("host").startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    return value


#: A ZeroMQ endpoint to bind (``tcp://host:port``, ``ipc://path``, ``inproc://name``).
ZmqEndpoint = Annotated[str, AfterValidator(_zmq_endpoint)]


def endpoint_host(endpoint: str) -> str | None:
    """The host (interface) part of a ``tcp://`` endpoint, None for ipc/inproc."""
    match = _TCP_ENDPOINT.match(endpoint)
    return match.group("host").strip("[]") if match else None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
