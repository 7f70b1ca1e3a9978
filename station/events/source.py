"""A pass as the stream server sees it: an index of the batches in its pass file.

The recorder's writer thread appends to the index as batches reach the file; the stream
server's thread reads it. Recent batches are kept in memory so live streaming costs no
read-back; anything older (a consumer that fell behind or reconnected) is read from the
file, which is the buffer: nothing is ever discarded for want of a consumer.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from station.events import passfile
from station.events.protocol import BatchHeader, Lost, PassEnd


@dataclass(slots=True)
class Entry:
    """One batch in the pass file."""

    offset_bytes: int
    length_bytes: int
    n_events: int
    cum_events: int
    counts: dict[str, int]
    metadata: dict[str, str]

    def header(self, pass_id: str, seq: int) -> BatchHeader:
        md = self.metadata
        st = md.get("start_time_s")
        return BatchHeader(
            pass_id=pass_id, seq=seq, tagger_seq=int(md.get("seq", seq)), n_events=self.n_events,
            start_ps=int(md.get("start_ps", 0)), end_ps=int(md.get("end_ps", 0)),
            resolution_ps=float(md.get("resolution_ps", 1.0)),
            start_time_s=float(st) if st else None, counts=self.counts,
            overflow_begin=md.get("overflow_begin") == "true",
            overflow_end=md.get("overflow_end") == "true",
            in_overflow=md.get("in_overflow") == "true",
            missed_events=int(md.get("missed_events", 0)))


_SECRET_KEYS = ("simulator_seed",)


def public_header(md: dict[str, str]) -> dict[str, str]:
    """``md`` without the keys the ground side must never see (also inside ``qkd.header``)."""
    out = {k: v for k, v in md.items() if k not in _SECRET_KEYS}
    text = out.get("qkd.header")
    if text and any(k in text for k in _SECRET_KEYS):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            out["qkd.header"] = json.dumps({k: v for k, v in obj.items() if k not in _SECRET_KEYS})
        else:
            del out["qkd.header"]  # unreadable and possibly secret: not served
    return out


def channel_counts(ch: np.ndarray) -> dict[str, int]:
    counts = np.bincount(ch, minlength=1) if len(ch) else np.zeros(0, np.int64)
    return {str(c): int(n) for c, n in enumerate(counts) if n}


@dataclass
class PassSource:
    """Index and cache of one pass file, shared by its writer and the stream server."""

    pass_id: str
    path: Path
    schema: pa.Schema
    recording: bool
    cache_batches: int = 32
    entries: list[Entry] = field(default_factory=list)
    end: PassEnd | None = None
    acked_seq: int = -1
    _cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _file: pa.OSFile | None = None

    @property
    def header(self) -> dict[str, str]:
        """The pass file's header as served on the stream, without any simulator seed
        (files written before issue 11 carry one; it is the simulated satellite's secret)."""
        return public_header(passfile._meta(self.schema.metadata))

    def append(self, entry: Entry, ts: np.ndarray, ch: np.ndarray) -> None:
        """Writer side: the batch is in the file now."""
        with self._lock:
            self._cache[len(self.entries)] = (ts, ch)
            while len(self._cache) > self.cache_batches:
                self._cache.popitem(last=False)
            self.entries.append(entry)

    def finish(self, end: PassEnd) -> None:
        with self._lock:
            self.end = end
            self.recording = False

    def get(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """Server side: the arrays of batch ``seq`` (memory, else read back from the file)."""
        with self._lock:
            hit = self._cache.get(seq)
            entry = self.entries[seq]
        if hit is not None:
            return hit
        if self._file is None:
            self._file = pa.OSFile(str(self.path), "rb")
        return passfile.read_batch_at(self._file, entry.offset_bytes, self.schema)

    def events_acked(self) -> int:
        seq = self.acked_seq
        entries = self.entries
        return entries[min(seq, len(entries) - 1)].cum_events if seq >= 0 and entries else 0

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @classmethod
    def from_file(cls, path: Path, cache_batches: int = 0) -> PassSource:
        """A finished (or crashed) pass on disk, with totals from the file and its sidecar."""
        scan = passfile.scan_pass_file(path)
        if scan.schema is None:
            raise ValueError(f"{path}: no readable header ({scan.stop.reason})")
        stem = scan.header.get("stream_pass_id", path.stem)
        src = cls(stem, path, scan.schema, recording=False, cache_batches=cache_batches)
        cum = 0
        with passfile.PassFileReader(path) as reader:
            for b in reader:
                cum += len(b.channel)
                src.entries.append(Entry(b.offset_bytes, b.length_bytes, len(b.channel), cum,
                                         channel_counts(b.channel), b.metadata))
        side = passfile.read_sidecar(path) or {}
        totals = side.get("totals") or {}
        lost = [Lost.model_validate(x) for x in totals.get("lost_batches", [])]
        complete = scan.stop.complete and side.get("state") != "interrupted"
        # Never an empty outcome: a cut file is "interrupted" (with why), a whole file the
        # sidecar says nothing about is "unknown".
        outcome = str(totals.get("outcome") or "") or ("unknown" if complete else "interrupted")
        reason = str(totals.get("reason") or "")
        if not complete and not reason:
            reason = f"the file was cut (station crash): {scan.stop.reason}"
        if not complete:
            outcome = "interrupted"
        src.end = build_pass_end(stem, src.entries, lost, outcome=outcome, reason=reason,
                                 complete=complete)
        return src


def build_pass_end(pass_id: str, entries: list[Entry], lost: list[Lost], *, outcome: str,
                   reason: str, complete: bool) -> PassEnd:
    counts: dict[str, int] = {}
    missed = overflow = gaps = 0
    prev: int | None = None
    for e in entries:
        for k, v in e.counts.items():
            counts[k] = counts.get(k, 0) + v
        md = e.metadata
        missed += int(md.get("missed_events", 0))
        if any(md.get(k) == "true" for k in ("overflow_begin", "overflow_end", "in_overflow")) \
                or int(md.get("missed_events", 0)):
            overflow += 1
        seq = int(md.get("seq", 0))
        if prev is not None and seq != prev + 1:
            gaps += 1
        prev = seq
    lost_events = sum(x.n_events for x in lost)
    return PassEnd(
        pass_id=pass_id, batches=len(entries), events=entries[-1].cum_events if entries else 0,
        counts=dict(sorted(counts.items(), key=lambda kv: int(kv[0]))), missed_events=missed,
        events_lost=missed + lost_events, lost_batches=lost, overflow_batches=overflow,
        tagger_seq_gaps=gaps,
        start_ps=int(entries[0].metadata.get("start_ps", 0)) if entries else None,
        end_ps=int(entries[-1].metadata.get("end_ps", 0)) if entries else None,
        outcome=outcome, reason=reason, complete=complete)
