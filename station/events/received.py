"""The consumer's side of storage: received passes in ``<out>/<pass_id>.arrows``, checked.

:class:`ReceivedStore` is what :class:`~station.events.client.StreamClient` keeps on disk:
which passes it holds (and how many batches of each, to resume from), the pass being
received (:class:`Receiving`), every batch checked against its header and appended, and
at the end the totals checked against the station's and written to a sidecar
(``format: qkd-station-received-pass``). It knows nothing of sockets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from station.events import passfile
from station.events.protocol import BatchHeader, CatchUp, PassBegin, PassEnd, Passes
from station.files import make_dirs

log = logging.getLogger("station.events.client")


class StreamError(RuntimeError):
    """The station refused a request, or the stream broke a rule of the protocol."""

    def __init__(self, message: str, code: str = "", pass_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.pass_id = pass_id


@dataclass
class ReceivedPass:
    """One pass as received and checked by the client."""

    pass_id: str
    path: Path
    batches: int = 0
    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    reconnects: int = 0
    end: PassEnd | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Complete and every total checked out."""
        return self.end is not None and not self.problems


@dataclass
class Receiving:
    """The pass being received: its totals so far, its file, the next seq expected."""

    rp: ReceivedPass
    writer: passfile.PassFileWriter
    expected: int
    unsynced_since: float | None = None
    already_complete: bool = False  # served again after we checked its end: report once


class ReceivedStore:
    """The passes of ``out_dir``; see the module docstring."""

    def __init__(self, out_dir: Path, *, compression: str, flush_interval_s: float,
                 on_batch: Callable[[BatchHeader, np.ndarray, np.ndarray], None] | None):
        self.out_dir = out_dir
        make_dirs(self.out_dir)
        self.compression = compression
        self.flush_interval_s = flush_interval_s
        self.on_batch = on_batch
        self.current: Receiving | None = None

    # -- what we hold ----------------------------------------------------------------------
    def path(self, pass_id: str) -> Path:
        """The file of ``pass_id``; :class:`StreamError` for a name that is no file name."""
        if "/" in pass_id or pass_id.startswith("."):
            raise StreamError(f"refusing pass id {pass_id!r} as a file name", "bad_request")
        return self.out_dir / f"{pass_id}{passfile.SUFFIX}"

    def held_complete(self, pass_id: str) -> bool:
        """Whether the pass is held, received to its end and checked (or cannot be held)."""
        if self.current is not None and self.current.rp.pass_id == pass_id:
            return False
        try:
            side = passfile.read_sidecar(self.path(pass_id))
        except StreamError:
            return True  # a name we refuse as a file name: never ask for it
        return bool(side) and side.get("format") == "qkd-station-received-pass"

    def stored_batches(self, pass_id: str) -> int:
        """Batches of the pass held so far: where to resume it from."""
        if self.current is not None and self.current.rp.pass_id == pass_id:
            return self.current.expected
        path = self.path(pass_id)
        if not path.exists():
            return 0
        return passfile.scan_pass_file(path).batches

    def catch_up(self, passes: Passes, *, skip: set[str], everything: bool) -> list[CatchUp]:
        """Follow mode's catch-up list: each listed pass not held complete (nor in ``skip``),
        from what we hold of it; with ``everything`` false only those begun or recording."""
        catch_up = []
        for p in passes.passes:
            if p.pass_id in skip or self.held_complete(p.pass_id):
                continue
            held = self.stored_batches(p.pass_id)
            if everything or held or p.recording:
                catch_up.append(CatchUp(pass_id=p.pass_id, resume_seq=held))
        return catch_up

    # -- receiving -------------------------------------------------------------------------
    def begin(self, msg: PassBegin, *, follow: bool) -> Receiving:
        """The pass announced becomes the current one (its file opened to append)."""
        cur = self.current
        if cur is not None and cur.rp.pass_id != msg.pass_id:
            # A stale announcement, or the pass we hold part of went away: keep its file
            # (the next catch-up resumes it) and take the one announced.
            log.warning("pass %s left unfinished at batch %d; now %s", cur.rp.pass_id,
                        cur.expected, msg.pass_id)
            self.close_current(end_of_stream=False)
            cur = None
        if cur is None:
            # Follow mode only: a named receive of a pass held complete checks it again.
            complete = follow and self.held_complete(msg.pass_id)
            path = self.path(msg.pass_id)
            writer = passfile.PassFileWriter(path, msg.header, compression=self.compression,
                                             append=path.exists())
            rp = ReceivedPass(msg.pass_id, path)
            if writer.batches:
                _recount(rp)
            cur = self.current = Receiving(rp, writer, writer.batches, already_complete=complete)
        return cur

    def append(self, cur: Receiving, hdr: BatchHeader, payload: list[Any]) -> None:
        """Check the next batch against its header, store it and count it."""
        ts, ch, counts = _checked_batch(hdr, payload)
        cur.writer.write(ts, ch, _batch_metadata(hdr))
        if self.on_batch is not None:
            self.on_batch(hdr, ts, ch)
        rp = cur.rp
        rp.batches += 1
        rp.events += hdr.n_events
        for c, n in counts.items():
            rp.counts[c] = rp.counts.get(c, 0) + n
        cur.expected += 1
        if cur.unsynced_since is None:
            cur.unsynced_since = time.monotonic()

    def sync_if_due(self) -> None:
        """Make the current file durable once ``flush_interval_s`` after its oldest unsynced batch."""
        cur = self.current
        if cur is not None and cur.unsynced_since is not None and \
                time.monotonic() - cur.unsynced_since >= self.flush_interval_s:
            cur.writer.sync()
            cur.unsynced_since = None

    def finish(self, cur: Receiving, end: PassEnd) -> ReceivedPass:
        """Check the totals against the station's, close the file, write the sidecar."""
        rp = cur.rp
        rp.end = end
        if rp.batches != end.batches:
            rp.problems.append(f"received {rp.batches} batches, the station recorded {end.batches}")
        if rp.events != end.events:
            rp.problems.append(f"received {rp.events} events, the station recorded {end.events}")
        if rp.counts != end.counts:
            rp.problems.append(f"channel counts {rp.counts} differ from the station's {end.counts}")
        self.close_current(end_of_stream=True)
        passfile.write_json_atomic(passfile.sidecar_path(rp.path), {
            "format": "qkd-station-received-pass", "version": 1, "pass_id": rp.pass_id,
            "verified": rp.ok, "problems": rp.problems, "batches": rp.batches,
            "events": rp.events, "counts": rp.counts,
            "duplicates_dropped": rp.duplicates_dropped,
            "station_totals": end.model_dump(mode="json")})
        if rp.problems:
            log.error("pass %s: %s", rp.pass_id, "; ".join(rp.problems))
        else:
            log.info("pass %s received and verified: %d batches, %d events (%d lost at the "
                     "station, reported)", rp.pass_id, rp.batches, rp.events, end.events_lost)
        return rp

    def close_current(self, *, end_of_stream: bool) -> None:
        """Close the current pass's file (as complete, or to be resumed)."""
        if self.current is not None:
            self.current.writer.close(end_of_stream=end_of_stream)
            self.current = None


def _recount(rp: ReceivedPass) -> None:
    """Totals of what an earlier run of the client stored."""
    with passfile.PassFileReader(rp.path) as reader:
        for b in reader:
            rp.batches += 1
            rp.events += len(b.channel)
            for c, n in counts_of(b.channel).items():
                rp.counts[c] = rp.counts.get(c, 0) + n


def _checked_batch(hdr: BatchHeader, payload: list[Any]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(timestamps, channels, per-channel counts) of a batch's frames, checked against its
    header; :class:`StreamError` if they disagree."""
    if len(payload) != 2:
        raise StreamError(f"batch {hdr.seq} of {hdr.pass_id} has {len(payload)} payload "
                          "frames, expected 2", "bad_message", hdr.pass_id)
    ts = np.frombuffer(payload[0].buffer, dtype="<i8")
    ch = np.frombuffer(payload[1].buffer, dtype="u1")
    if len(ts) != hdr.n_events or len(ch) != hdr.n_events:
        raise StreamError(f"batch {hdr.seq} of {hdr.pass_id}: header says {hdr.n_events} "
                          f"events, frames hold {len(ts)} timestamps and {len(ch)} channels",
                          "bad_message", hdr.pass_id)
    counts = counts_of(ch)
    if counts != hdr.counts:
        raise StreamError(f"batch {hdr.seq} of {hdr.pass_id}: channel counts {counts} do not "
                          f"match the header's {hdr.counts}", "bad_message", hdr.pass_id)
    return ts, ch, counts


def _batch_metadata(hdr: BatchHeader) -> dict[str, str]:
    """The pass-file batch metadata of a received batch (as the station's file has it)."""
    md = {k: str(v).lower() if isinstance(v, bool) else str(v)
          for k, v in hdr.model_dump(exclude={"type", "pass_id", "counts", "seq", "n_events",
                                              "tagger_seq"}).items() if v is not None}
    md["seq"] = str(hdr.tagger_seq)
    md["resolution_ps"] = repr(float(hdr.resolution_ps))
    if hdr.start_time_s is not None:
        md["start_time_s"] = repr(float(hdr.start_time_s))
    return md


def counts_of(ch: np.ndarray) -> dict[str, int]:
    """Events per channel, keyed by the channel number as a string."""
    counts = np.bincount(ch) if len(ch) else np.zeros(0, np.int64)
    return {str(c): int(n) for c, n in enumerate(counts) if n}
