"""The one place that maps backend names in config to driver classes.

Backends are imported lazily, so an optional vendor module (``Swabian.TimeTagger``) is
only needed by the station that names it. Every backend class has a nested pydantic
``Options`` model; options from config are validated against it here, which is how
``check-config`` can name a bad backend option before anything starts.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ValidationError

#: kind -> backend name -> "module:Class"
BACKENDS: dict[str, dict[str, str]] = {
    "mount": {
        "sim": "drivers.mount.sim:SimMount",
        "rotctld": "drivers.mount.rotctld:RotctldMount",
        "indi": "drivers.mount.indi:IndiMount",
        "gs232": "drivers.mount.gs232:Gs232Mount",
    },
    "timetagger": {
        "sim": "drivers.timetagger.sim:SimTimeTagger",
        "replay": "drivers.timetagger.replay:ReplayTimeTagger",
        "swabian": "drivers.timetagger.swabian:SwabianTimeTagger",
    },
    "beacon_laser": {
        "visa": "drivers.instruments.beacon_laser:BeaconLaser",
        "sim": "drivers.instruments.beacon_laser:BeaconLaser",
    },
    "time_reference": {
        "visa": "drivers.instruments.time_reference:TimeReference",
        "sim": "drivers.instruments.time_reference:TimeReference",
    },
}


class UnknownBackend(ValueError):
    """No backend of that name for that device kind, or it cannot be loaded here."""


def backend_class(kind: str, name: str) -> type:
    """Import and return the class registered for ``kind``/``name``."""
    try:
        target = BACKENDS[kind][name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS.get(kind, {}))) or "none"
        raise UnknownBackend(
            f"unknown {kind} backend {name!r}; known backends: {known}"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownBackend(
            f"{kind} backend {name!r} cannot be loaded here: {exc} "
            f"(is its optional extra installed?)"
        ) from exc
    return getattr(module, class_name)


def validate_options(kind: str, name: str, options: dict[str, Any]) -> BaseModel:
    """Validate ``options`` against the backend's ``Options`` model.

    Raises :class:`UnknownBackend` or pydantic's ``ValidationError``.
    """
    cls = backend_class(kind, name)
    options_model: type[BaseModel] = cls.Options
    # Backends may accept "sim"-flavoured defaults keyed on the name (e.g. VISA "@sim").
    defaults = getattr(cls, "default_options_for", None)
    merged = {**defaults(name), **options} if defaults else dict(options)
    return options_model.model_validate(merged)


def create(kind: str, backend: str, options: dict[str, Any], /, **context: Any) -> Any:
    """Build a backend instance: ``Class(validated_options, **context)``.

    ``context`` carries the constructor's keyword arguments (``clock``, ``name``, ...).
    """
    cls = backend_class(kind, backend)
    return cls(validate_options(kind, backend, options), **context)


__all__ = ["BACKENDS", "UnknownBackend", "ValidationError", "backend_class", "create",
           "validate_options"]
