"""Reading a config file: TOML, environment overrides, readable errors."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from station.config.base import CONFIG_DIR
from station.config.root import ENV_PREFIX, StationConfig


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
        shown = "(missing)" if err["type"] == "missing" else _shown(value)
        if any("password" in str(part) for part in err["loc"]) and err["type"] != "missing":
            shown = "(hidden)"  # a mistyped password (or a plaintext one as a hash) is a secret
        reason = err["msg"].removeprefix("Value error, ")
        out.append(f"{_loc_path(err['loc'])}: {shown}: {reason}")
    return out


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _is_complex(parts: list[str]) -> bool | None:
    """Whether the config field at ``parts`` takes JSON from the environment (a list, a
    table, a model); None when the path names no field."""
    model: Any = StationConfig
    annotation: Any = None
    for part in parts:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        model = next((a for a in (annotation, *get_args(annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    candidates = [annotation, *get_args(annotation)]
    return any(get_origin(a) in (list, dict, tuple) or a in (list, dict, tuple)
               or (isinstance(a, type) and issubclass(a, BaseModel)) for a in candidates)


def env_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """``path: value: reason`` for every ``QKD_STATION__...`` variable that holds broken
    JSON (a list or table value such as ``QKD_STATION__SITE__HORIZON_MASK='[[0,10]]'``)."""
    environ = os.environ if environ is None else environ
    out = []
    for name, value in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        path = ".".join(parts)
        complex_leaf = _is_complex(parts)
        if complex_leaf is False or (complex_leaf is None and value.strip()[:1] not in ("[", "{")):
            continue  # a plain value: pydantic validates it, no JSON involved
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            out.append(f"{path}: {_shown(value)}: not valid JSON in ${name}: {exc.msg} at "
                       f"column {exc.colno}")
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:80]
            out.append(f"{path}: {_shown(value[:80])}: not valid JSON in ${name}: {reason}")
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
    except (SettingsError, RecursionError) as exc:
        # pydantic-settings could not decode an environment override (broken JSON).
        problems = env_problems() or [
            f"(environment): {ENV_PREFIX}...: cannot be read: {str(exc)[:200]}"]
        raise ConfigError(str(path), problems) from None
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
