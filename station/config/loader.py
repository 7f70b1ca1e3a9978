"""Reading a config file: TOML, environment overrides, readable errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from station.config.base import CONFIG_DIR
from station.config.root import StationConfig


class ConfigError(Exception):
    """A config file could not be used. ``problems`` lists ``path: value: reason`` lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


def _loc_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # pydantic puts validator names (e.g. "function-after[...]") in some locs.
            if str(part).startswith(("function-", "tagged-union")):
                continue
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def format_errors(exc: ValidationError) -> list[str]:
    """Every validation error as ``path: value: reason``."""
    out = []
    for err in exc.errors(include_url=False):
        value = err.get("input")
        shown = "(missing)" if err["type"] == "missing" else repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        reason = err["msg"].removeprefix("Value error, ")
        out.append(f"{_loc_path(err['loc'])}: {shown}: {reason}")
    return out


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> StationConfig:
    """Load and validate a config file; raise :class:`ConfigError` naming every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"(file): {str(path)!r}: cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"(file): {str(path)!r}: not valid TOML: {exc}"]) from None
    if overrides:
        data = _deep_merge(data, overrides)
    token = CONFIG_DIR.set(path.resolve().parent)
    try:
        return StationConfig(**data)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc)) from None
    finally:
        CONFIG_DIR.reset(token)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
