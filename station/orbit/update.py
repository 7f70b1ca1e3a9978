"""Installing a new element file into the catalog: validated first, then swapped in atomically.

A download that is truncated, an HTML error page, or a file with one corrupt record never
replaces a good file: the new bytes are parsed with the same validation the catalog uses,
and only a file in which every record is valid is written — to a hidden temporary file in
the same directory, fsynced, then renamed over the old one (``os.replace`` is atomic on
POSIX), so the daemon reloading at any moment reads either the old or the new file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from station.orbit.catalog import ELEMENT_SUFFIXES, ElementSet, parse_elements, sniff_format

__all__ = ["UpdateRejected", "UpdateResult", "fetch", "install_elements", "update_elements"]

#: Refuse anything larger: a whole-catalog CelesTrak OMM JSON is ~15 MB.
MAX_BYTES = 64 * 1024 * 1024
_EXT = {"tle": ".tle", "omm-json": ".json", "omm-xml": ".xml", "omm-kvn": ".kvn"}


class UpdateRejected(Exception):
    """The new element file was not installed; ``problems`` says why (``file:line: reason``)."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: not installed, the catalog is unchanged:\n{lines}")


@dataclass(slots=True)
class UpdateResult:
    """What :func:`update_elements` installed."""

    path: Path
    element_sets: list[ElementSet] = field(default_factory=list)
    unchanged: bool = False
    replaced: bool = False


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "file")


def fetch(source: str, *, timeout_s: float = 30.0) -> bytes:
    """The bytes of a path or an http(s)/file URL (an operator action, never run-time)."""
    if _is_url(source):
        request = urllib.request.Request(source, headers={"User-Agent": "qkd-station tle update"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                data = response.read(MAX_BYTES + 1)
        except OSError as exc:
            raise UpdateRejected(source, [f"{source}:0: download failed: {exc}"]) from None
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
        except OSError as exc:
            raise UpdateRejected(source, [f"{source}:0: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_BYTES:
        raise UpdateRejected(source, [f"{source}:0: larger than {MAX_BYTES // 2**20} MiB; not an element file?"])
    return data


def target_name(source: str, data: bytes) -> str:
    """File name to install under: the source's own name if it looks like an element file."""
    path = urllib.parse.urlparse(source).path if _is_url(source) else source
    base = os.path.basename(path.rstrip("/"))
    if base and not base.startswith(".") and Path(base).suffix.lower() in ELEMENT_SUFFIXES:
        return base
    # e.g. CelesTrak's gp.php?CATNR=41731&FORMAT=json: name it after the query.
    digest = hashlib.sha1(source.encode()).hexdigest()[:8]
    stem = Path(base).stem if base else "elements"
    return f"{stem}-{digest}{_EXT[sniff_format(data)]}"


def install_elements(data: bytes, dest: Path, *, label: str | None = None) -> UpdateResult:
    """Validate ``data`` and atomically write it to ``dest`` (raises :class:`UpdateRejected`)."""
    label = label or str(dest)
    sets, problems = parse_elements(data, label)
    if problems:
        raise UpdateRejected(label, problems)
    if not sets:
        raise UpdateRejected(label, [f"{label}:1: no element sets in it"])
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise UpdateRejected(label, [f"{dest.parent}:0: destination directory does not exist"])
    if dest.is_file() and dest.read_bytes() == data:
        return UpdateResult(dest, sets, unchanged=True)
    replaced = dest.exists()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return UpdateResult(dest, sets, replaced=replaced)


def update_elements(source: str, dest_dir: Path, *, name: str | None = None, timeout_s: float = 30.0) -> UpdateResult:
    """``qkd-station tle update``: fetch ``source`` (path or URL), validate, install in ``dest_dir``."""
    data = fetch(source, timeout_s=timeout_s)
    dest = Path(dest_dir) / (name or target_name(source, data))
    return install_elements(data, dest, label=source)
