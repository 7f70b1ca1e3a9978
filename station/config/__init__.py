"""The station's configuration: one pydantic model tree loaded from one TOML file.

Each section lives in its own module; :class:`StationConfig` composes them. Load with
:func:`load_config`, which also applies ``QKD_STATION__...`` environment overrides.
"""

from station.config.loader import ConfigError, format_errors, load_config
from station.config.root import StationConfig

__all__ = ["ConfigError", "StationConfig", "format_errors", "load_config"]
