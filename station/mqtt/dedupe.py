"""Request ids already answered, remembered across restarts for a bounded window.

A command that arrives twice (an operator's retry, a QoS 1 re-delivery, a replay after the
station restarted) must run once. :class:`SeenRequests` keeps the last
:data:`~station.mqtt.limits.REMEMBER_IDS` ids, none older than
:data:`~station.mqtt.limits.REMEMBER_WINDOW_S` on the station clock, in memory and in an
append-only file in the state directory (one ``<station seconds> <request_id>`` line each;
request ids never contain a space or a newline). The file is compacted when it holds
twice the window. A torn last line after a crash is skipped. If the file cannot be read or
written the ids are kept in memory only, with one warning: de-duplication never stops
commands.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

from station.mqtt.limits import REMEMBER_IDS, REMEMBER_WINDOW_S, clip
from station.mqtt.messages import REQUEST_ID_RE

log = logging.getLogger("station.mqtt.dedupe")

#: Name of the file in ``state_dir``.
FILE_NAME = "mqtt-request-ids"
#: Read at most this much of an old file (the window is ~100 kB; anything beyond is junk).
_MAX_READ_BYTES = 4 * 1024 * 1024
_FILE_MODE = 0o640
_DIR_MODE = 0o750


class SeenRequests:
    """The de-duplication window; ``path`` None keeps it in memory only."""

    def __init__(self, path: Path | None, *, keep: int = REMEMBER_IDS,
                 window_s: float = REMEMBER_WINDOW_S):
        self.path = path
        self.keep = keep
        self.window_s = window_s
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lines_in_file = 0
        self._failed = False

    def load(self, now_s: float) -> int:
        """Read the ids a previous run left; returns how many are still in the window."""
        if self.path is None:
            return 0
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > _MAX_READ_BYTES:
                    f.seek(size - _MAX_READ_BYTES)
                    f.readline()  # resynchronise on a line boundary
                data = f.read(_MAX_READ_BYTES)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            self._fail("read", exc)
            return 0
        skipped = 0
        lines = data.split(b"\n")
        if lines and lines[-1]:
            lines.pop()  # a line cut short by a crash: never a full id
            skipped += 1
        for raw in lines:
            parts = raw.split(b" ")
            try:
                t_s, rid = float(parts[0]), parts[1].decode("ascii")
            except (IndexError, ValueError, UnicodeDecodeError):
                skipped += bool(raw)
                continue
            if len(parts) != 2 or not REQUEST_ID_RE.fullmatch(rid):
                skipped += 1
                continue
            self._ids.pop(rid, None)
            self._ids[rid] = t_s
        self._trim(now_s)
        if skipped:
            log.warning("%s: skipped %d unreadable line(s)", self.path, skipped)
        self._rewrite()
        return len(self._ids)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, request_id: str, now_s: float) -> None:
        """Remember ``request_id`` (seen at station time ``now_s``), on disk too."""
        self._ids.pop(request_id, None)
        self._ids[request_id] = now_s
        self._trim(now_s)
        if self.path is None or self._failed:
            return
        if self._lines_in_file >= 2 * self.keep:
            self._rewrite()
            return
        try:
            self._ensure_dir()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
            try:
                os.write(fd, f"{now_s:.3f} {request_id}\n".encode("ascii"))
            finally:
                os.close(fd)
            self._lines_in_file += 1
        except OSError as exc:
            self._fail("write", exc)

    def _trim(self, now_s: float) -> None:
        while len(self._ids) > self.keep:
            self._ids.popitem(last=False)
        # Oldest first; an id stamped in the future (a simulated clock started again
        # earlier) stays until the count bound pushes it out.
        while self._ids:
            t_s = next(iter(self._ids.values()))
            if 0 <= now_s - t_s <= self.window_s or t_s > now_s:
                break
            self._ids.popitem(last=False)

    def _rewrite(self) -> None:
        if self.path is None or self._failed:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self._ensure_dir()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
            try:
                os.fchmod(fd, _FILE_MODE)  # whatever the umask
                os.write(fd, "".join(f"{t:.3f} {rid}\n" for rid, t in self._ids.items()).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self._lines_in_file = len(self._ids)
        except OSError as exc:
            self._fail("write", exc)

    def _ensure_dir(self) -> None:
        assert self.path is not None
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)

    def _fail(self, what: str, exc: OSError) -> None:
        if not self._failed:
            log.warning("cannot %s %s (%s): request ids are remembered in memory only until "
                        "restart", what, self.path, clip(exc.strerror or str(exc)))
        self._failed = True
