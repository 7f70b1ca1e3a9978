"""Creating the station's files and directories with fixed permissions, whatever the umask.

Pass files carry raw detection data, the raw material of secret keys; state files and
sidecars say what the station did. Outside systemd (whose unit sets ``UMask=0027``) an
operator's umask of 022 used to make them world-readable. Every creation site goes through
this module instead, and the mode is set with ``fchmod``/``chmod`` after creation, so a
umask can neither widen nor narrow it:

- files :data:`FILE_MODE` (0640: the daemon's user writes, its group reads);
- directories :data:`DIR_MODE` (0750).

Existing directories are left as they are (``/var/lib`` is not ours to change); only the
ones created here get :data:`DIR_MODE`.

Files that must be all-or-nothing after a crash (sidecars, checkpoints, the authentication
pool) are replaced with :func:`write_durably`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "make_dirs", "open_file", "open_new", "write_durably"]

FILE_MODE = 0o640
DIR_MODE = 0o750


def make_dirs(path: Path | str, mode: int = DIR_MODE) -> Path:
    """``mkdir -p path`` where every directory created gets exactly ``mode``."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory",
                                         str(directory)) from None
            continue  # created meanwhile by someone else: theirs, leave its mode
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
    return path


def open_file(path: Path | str, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` that gives a file it creates (``O_CREAT``) exactly ``mode``."""
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    if flags & os.O_CREAT:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd


def open_new(directory: Path | str, *, prefix: str, suffix: str = ".tmp",
             mode: int = FILE_MODE) -> tuple[int, str]:
    """A new uniquely named file in ``directory`` (``mkstemp``) with ``mode``: (fd, path)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, name


def write_durably(path: Path | str, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``, all or nothing, durably, as a file of exactly ``mode``.

    The bytes go to ``.<name>.tmp`` beside ``path`` (created anew: a stale one, or a symlink
    planted there, is removed first and never followed), are fsynced, renamed over ``path``,
    and the directory is fsynced so the rename itself survives a power cut. A crash before
    the rename leaves the old ``path`` untouched (and at worst the temporary file, which the
    next write removes); after it, the new content is complete. An error before the rename
    removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, large buffers)
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
