"""Shared pieces of the configuration models: strict base, paths, backend selection."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

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


#: A filesystem path; relative ones are taken relative to the config file's folder.
ConfigPath = Annotated[Path, AfterValidator(_resolve)]


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
        return self

    def _resolved_options(self) -> dict[str, Any]:
        return dict(self.options)

    def validated_options(self) -> BaseModel:
        """The options as the backend's validated ``Options`` model."""
        from drivers import registry

        return registry.validate_options(self.kind, self.backend, self._resolved_options())
