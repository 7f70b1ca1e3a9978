"""Installing a new element file into the catalog: validated first, then swapped in atomically.

A download that is truncated, an HTML error page, or a file with one corrupt record never
replaces a good file: the new bytes are parsed with the same validation the catalog uses,
and only a file in which every record is valid is written — to a hidden temporary file in
the same directory, fsynced, then renamed over the old one (``os.replace`` is atomic on
POSIX), so the daemon reloading at any moment reads either the old or the new file.

The installed name is a plain file name the catalog will load: no directory part (so
``--name ../x.tle`` cannot write outside the destination), not hidden (the catalog skips
hidden files: that is how it ignores this module's own temporary files), no control
characters, and an element-file ending. A full or read-only disk is an
:class:`UpdateRejected` naming the file and the reason, never a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from station.files import open_new
from station.orbit.catalog import ELEMENT_SUFFIXES, ElementSet, parse_elements, sniff_format

__all__ = [
    "UpdateRejected", "UpdateResult", "fetch", "install_elements", "name_problem", "update_elements",
]

#: Refuse anything larger: a whole-catalog CelesTrak OMM JSON is ~15 MB.
MAX_BYTES = 64 * 1024 * 1024
_EXT = {"tle": ".tle", "omm-json": ".json", "omm-xml": ".xml", "omm-kvn": ".kvn"}
#: Longest file name most file systems take (bytes).
_MAX_NAME_BYTES = 255
#: What an operator is told for the write errors a field PC actually meets.
_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be installed into the catalog directory, or None if it can."""
    if not name:
        return "the name is empty"
    if "/" in name or "\\" in name or name in (".", ".."):
        return "must be a plain file name, without a directory part"
    if any(not ch.isprintable() for ch in name):
        return "contains control characters (a newline, a tab, ...)"
    if name.startswith("."):
        return "is hidden: the catalog skips names starting with '.'"
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        return f"is longer than {_MAX_NAME_BYTES} bytes"
    if Path(name).suffix.lower() not in ELEMENT_SUFFIXES:
        return f"does not end in one of {', '.join(sorted(ELEMENT_SUFFIXES))}, so the catalog would skip it"
    return None


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
    if name_problem(base) is None:
        return base
    # e.g. CelesTrak's gp.php?CATNR=41731&FORMAT=json: name it after the query.
    digest = hashlib.sha1(source.encode()).hexdigest()[:8]
    stem = Path(base).stem if base else ""
    if name_problem(f"{stem}.tle") is not None or len(stem) > 64:
        stem = "elements"
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
    problem = name_problem(dest.name)
    if problem is not None:
        raise UpdateRejected(label, [f"{_shown_name(dest.name)}: not installed: the name {problem}"])
    if not dest.parent.is_dir():
        raise UpdateRejected(label, [f"{dest.parent}:0: destination directory does not exist"])
    try:
        return _write_atomically(data, dest, sets)
    except OSError as exc:
        reason = _WRITE_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
        raise UpdateRejected(label, [f"{dest}:0: cannot write: {reason} ({exc.strerror or exc})"]) from None


def _shown_name(name: str) -> str:
    shown = repr(name[:80]) + ("…" if len(name) > 80 else "")
    return f"name {shown}"


def _write_atomically(data: bytes, dest: Path, sets: list[ElementSet]) -> UpdateResult:
    # A symlink in the catalog directory is replaced, never written through: lstat, not stat.
    if dest.is_symlink():
        replaced = True
    elif dest.is_file():
        if dest.read_bytes() == data:
            return UpdateResult(dest, sets, unchanged=True)
        replaced = True
    else:
        replaced = dest.exists()
    # Element files are public data: world-readable like the ones a package installs, and
    # the same mode whatever the operator's umask.
    fd, tmp_name = open_new(dest.parent, prefix=f".{dest.name}.", mode=0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
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
    if name is not None and (problem := name_problem(name)) is not None:
        raise UpdateRejected(source, [f"--name {name[:80]!r}: the name {problem}"])
    data = fetch(source, timeout_s=timeout_s)
    dest = Path(dest_dir) / (name or target_name(source, data))
    return install_elements(data, dest, label=source)
