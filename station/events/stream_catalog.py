"""The passes the event stream can serve: reserved, live, and finished on disk.

:class:`StreamCatalog` is shared by the recorder side (``reserve``, ``unreserve``,
``register``, from the pipeline's threads) and the stream server's thread (everything
else); every access holds its lock. It also keeps the order in which passes opened in this
run of the station, which is what a follow-mode cursor (``<nonce>:<count>``) counts.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

from station.events import passfile
from station.events.protocol import Passes, PassInfo
from station.events.source import PassSource

log = logging.getLogger("station.events.stream_server")


class Pending:
    """A pass named (reserved) but whose recorder has not registered its source yet."""


PENDING = Pending()


class StreamCatalog:
    """Every pass of ``passes_dir`` the stream knows, and the order passes opened in."""

    def __init__(self, passes_dir: Path):
        self.passes_dir = passes_dir
        self._live: dict[str, PassSource] = {}
        self._reserved: set[str] = set()
        self._opened: list[str] = []  # every pass reserved/registered, in opening order
        self._opened_set: set[str] = set()
        self._on_disk: dict[str, PassSource] = {}
        self._nonce = uuid.uuid4().hex[:16]
        self._lock = threading.Lock()

    # -- the recorder side -----------------------------------------------------------------
    def reserve(self, pass_id: str) -> None:
        """A pass is about to open (before its file exists)."""
        with self._lock:
            self._reserved.add(pass_id)
            self._on_disk.pop(pass_id, None)
            self._note_opened(pass_id)

    def unreserve(self, pass_id: str) -> None:
        """The pass could not be opened after all."""
        with self._lock:
            self._reserved.discard(pass_id)

    def register(self, source: PassSource) -> None:
        """A pass starts recording."""
        with self._lock:
            self._live[source.pass_id] = source
            self._reserved.discard(source.pass_id)
            self._on_disk.pop(source.pass_id, None)
            self._note_opened(source.pass_id)

    def _note_opened(self, pass_id: str) -> None:
        if pass_id not in self._opened_set:
            self._opened_set.add(pass_id)
            self._opened.append(pass_id)

    # -- the server side -------------------------------------------------------------------
    def opened(self) -> list[str]:
        """Every pass reserved or registered in this run, in opening order."""
        with self._lock:
            return list(self._opened)

    def opened_and_recording(self) -> tuple[list[str], list[str]]:
        """(every pass opened, in order; those of them reserved or recording now)."""
        with self._lock:
            opened = list(self._opened)
            now_recording = [p for p in opened if p in self._reserved
                             or (p in self._live and self._live[p].recording)]
        return opened, now_recording

    def cursor_index(self, cursor: str, n_opened: int) -> int | None:
        """Where a follow-mode cursor points in the opening order; None if it is not from
        this run of the station (or points past its end)."""
        nonce, _, count = cursor.partition(":")
        if nonce != self._nonce or not count.isdigit() or int(count) > n_opened:
            return None
        return int(count)

    def retire(self, src: PassSource) -> None:
        """A finished live pass nobody reads live any more is served from disk from now on."""
        with self._lock:
            if self._live.get(src.pass_id) is src:
                self._live.pop(src.pass_id)
                self._on_disk[src.pass_id] = src

    def close_files(self) -> None:
        """Close every pass file the catalog holds open (the server is stopping)."""
        for src in list(self._live.values()) + list(self._on_disk.values()):
            src.close_file()

    def find(self, pass_id: str) -> PassSource | Pending | None:
        """The pass's source; :data:`PENDING` if it is reserved; None if there is no such
        pass (or its file cannot be read)."""
        with self._lock:
            src = self._live.get(pass_id) or self._on_disk.get(pass_id)
            if src is None and pass_id in self._reserved:
                return PENDING
        if src is not None:
            return src
        path = self.passes_dir / f"{pass_id}{passfile.SUFFIX}"
        if "/" in pass_id or pass_id.startswith(".") or not path.is_file():
            return None
        try:
            disk = PassSource.from_file(path)
        except (OSError, ValueError) as exc:
            log.warning("cannot serve %s: %s", path, exc)
            return None
        with self._lock:
            # reserve() comes before a recorder creates its file: a file found above that
            # is being recorded is known here by now, and never served as a finished one.
            if pass_id in self._reserved:
                return PENDING
            src = self._live.get(pass_id) or self._on_disk.get(pass_id)
            if src is None:
                src = self._on_disk[pass_id] = disk
        return src

    def list(self) -> Passes:
        """The ``passes`` reply: every pass, recording or on disk, and the current cursor."""
        with self._lock:
            live = dict(self._live)
            reserved = set(self._reserved)
            on_disk = dict(self._on_disk)
            cursor = f"{self._nonce}:{len(self._opened)}"
        out = [PassInfo(pass_id=p, recording=True, batches=0, events=0) for p in sorted(reserved)]
        out += [PassInfo(pass_id=s.pass_id, recording=s.recording, batches=len(s.entries),
                         events=s.entries[-1].cum_events if s.entries else 0)
                for s in live.values()]
        for path in sorted(self.passes_dir.glob(f"*{passfile.SUFFIX}")):
            stem = path.stem
            if stem in live or stem in reserved:
                continue
            known = on_disk.get(stem)
            if known is not None:
                out.append(PassInfo(pass_id=stem, recording=False, batches=len(known.entries),
                                    events=known.entries[-1].cum_events if known.entries else 0))
                continue
            side = passfile.read_sidecar(path) or {}
            totals = side.get("totals") or {}
            out.append(PassInfo(pass_id=stem, recording=False,
                                batches=_int(totals.get("batches_recorded", -1)),
                                events=_int(totals.get("events_recorded", -1))))
        return Passes(passes=out, cursor=cursor)


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return -1
