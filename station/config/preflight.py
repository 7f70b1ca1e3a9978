"""What a valid config still needs from this machine: files that exist, folders that can be.

The models check values; this checks the world they point at, so ``check-config`` fails
on what would otherwise fail (or silently degrade) when the daemon starts: an element
source that is not there, a CA or password file that cannot be read, a ``state_dir`` that
is a file. Each problem is ``path: value: reason`` like a validation error.
"""

from __future__ import annotations

import os
from pathlib import Path

from station.config.root import StationConfig

__all__ = ["preflight"]


def _readable_file(path: Path) -> str | None:
    """Why ``path`` is not a file this process can read, or None."""
    if not path.exists():
        return "file does not exist"
    if not path.is_file():
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read by this user"
    return None


def _creatable_dir(path: Path) -> str | None:
    """Why ``path`` is not a directory and cannot become one, or None."""
    if path.is_dir():
        return None
    if path.exists() or path.is_symlink():
        return "exists and is not a directory"
    for parent in path.parents:
        if parent.is_dir():
            return None
        if parent.exists():
            return f"cannot be created: {parent} is not a directory"
    return None


def preflight(cfg: StationConfig) -> list[str]:
    """Every problem of ``cfg`` with this machine's files, as ``path: value: reason``."""
    out: list[str] = []

    def check(where: str, path: Path | None, why: str | None) -> None:
        if path is not None and why is not None:
            out.append(f"{where}: {str(path)!r}: {why}")

    for i, source in enumerate(cfg.orbit.element_sources):
        if not (source.is_dir() or source.is_file()):
            check(f"orbit.element_sources[{i}]", source,
                  "element source does not exist" if not source.exists()
                  else "is neither a file nor a directory")
    if cfg.orbit.update_dir is not None:
        check("orbit.update_dir", cfg.orbit.update_dir, _creatable_dir(cfg.orbit.update_dir))
    mqtt = cfg.mqtt
    if mqtt.password_file is not None:
        why = _readable_file(mqtt.password_file)
        if why is None:
            with open(mqtt.password_file, "rb") as fh:
                head = fh.read(4096).decode("utf-8", "replace").splitlines()
            if not head or not head[0].strip():
                why = "has an empty first line (the first line is the password)"
        check("mqtt.password_file", mqtt.password_file, why)
    if mqtt.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(mqtt.tls, name)
            if path is not None:
                check(f"mqtt.tls.{name}", path, _readable_file(path))
    web = cfg.web
    if web.enabled:
        if web.tls is not None:
            check("web.tls.cert_file", web.tls.cert_file, _readable_file(web.tls.cert_file))
            check("web.tls.key_file", web.tls.key_file, _readable_file(web.tls.key_file))
        if web.mqtt_password_file is not None:
            check("web.mqtt_password_file", web.mqtt_password_file,
                  _readable_file(web.mqtt_password_file))
    devices = {"mount": cfg.mount, "timetagger": cfg.timetagger}
    if cfg.instruments.beacon_laser.enabled:
        devices["instruments.beacon_laser"] = cfg.instruments.beacon_laser
    if cfg.instruments.time_reference.enabled:
        devices["instruments.time_reference"] = cfg.instruments.time_reference
    for where, device in devices.items():
        # The same naming rule that makes these options relative to the config file
        # (BackendConfig): files the backend will open, e.g. a replay recording.
        for key, value in device.options.items():
            if (key == "path" or key.endswith(("_path", "_file"))) and isinstance(value, str) and value:
                check(f"{where}.options.{key}", Path(value).expanduser(),
                      _readable_file(Path(value).expanduser()))
    check("state_dir", cfg.state_dir, _creatable_dir(cfg.state_dir))
    if cfg.state_dir.is_dir():
        passes = cfg.state_dir / cfg.events.passes_dir
        check("events.passes_dir", passes, _creatable_dir(passes))
    out += cfg.events.file_problems()  # CURVE key files are read at start
    return out
