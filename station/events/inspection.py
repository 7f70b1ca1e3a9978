"""What a pass file holds and whether it is whole: the data behind ``qkd-station inspect``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from drivers.timetagger.base import BatchInfo
from station.events import passfile
from station.events.source import public_header

_PS_PER_S = 1e12


@dataclass
class _Scan:
    """What one pass over a file's batches finds, batch by batch."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    n_batches: int = 0
    n_events: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    seq_jumps: list[dict[str, int]] = field(default_factory=list)
    stream_seq_errors: int = 0
    unsorted: int = 0
    outside: int = 0
    overflows: list[dict[str, Any]] = field(default_factory=list)
    missed: int = 0
    first_start: int | None = None
    last_end: int | None = None
    first_time_s: float | None = None
    first_seq: int | None = None
    prev_end: int | None = None
    prev_seq: int | None = None
    open_ovf: dict[str, Any] | None = None
    loss_record: passfile.LossRecord | None = None

    def add(self, b: passfile.StoredBatch) -> None:
        """One batch of a :class:`~station.events.passfile.PassFileReader`."""
        if passfile.is_loss_record(b.metadata):
            # The file's own account of what the disk refused; not tagger data.
            self.loss_record = passfile.LossRecord.model_validate_json(b.metadata[passfile.LOSS_KEY])
            return
        info = b.info
        ts, ch = b.timestamp_ps, b.channel
        if b.metadata.get("stream_seq") not in (None, str(b.index)):
            self.stream_seq_errors += 1
        self.counts += np.bincount(ch, minlength=256)[:256]
        self.n_events += len(ts)
        if len(ts) > 1 and bool(np.any(np.diff(ts) < 0)):
            self.unsorted += 1
        if len(ts):
            self.outside += int(np.count_nonzero((ts < info.start_ps) | (ts >= info.end_ps)))
        if self.first_start is None:
            self.first_start, self.first_time_s, self.first_seq = info.start_ps, info.start_time_s, info.seq
        if self.prev_end is not None and info.start_ps != self.prev_end:
            self.gaps.append({"after_batch": self.n_batches - 1, "from_ps": self.prev_end,
                              "to_ps": info.start_ps,
                              "duration_s": (info.start_ps - self.prev_end) / _PS_PER_S})
        if self.prev_seq is not None and info.seq != self.prev_seq + 1:
            self.seq_jumps.append({"from_seq": self.prev_seq, "to_seq": info.seq})
        self._overflow(info)
        self.prev_end, self.prev_seq, self.last_end = info.end_ps, info.seq, info.end_ps
        self.n_batches += 1

    def _overflow(self, info: BatchInfo) -> None:
        """Consecutive lossy batches make one overflow period."""
        lossy = info.lossy
        self.missed += info.missed_events
        if lossy:
            if self.open_ovf is None:
                self.open_ovf = {"from_ps": info.start_ps, "first_seq": info.seq,
                                 "missed_events": 0, "batches": 0}
                self.overflows.append(self.open_ovf)
            self.open_ovf.update(to_ps=info.end_ps, last_seq=info.seq,
                                 duration_s=(info.end_ps - self.open_ovf["from_ps"]) / _PS_PER_S)
            self.open_ovf["missed_events"] += info.missed_events
            self.open_ovf["batches"] += 1
        if not lossy or info.overflow_end:
            self.open_ovf = None


def _problems(scan: _Scan, stop: passfile.ReadStop, lost_count: int, lost_events: int) -> list[str]:
    problems = []
    if not stop.complete:
        problems.append(stop.reason)
    if scan.seq_jumps:
        problems.append(f"{len(scan.seq_jumps)} jumps in the tagger batch sequence")
    if scan.stream_seq_errors:
        problems.append(f"{scan.stream_seq_errors} batches out of stream order")
    if lost_count:
        problems.append(f"{lost_count} batches ({lost_events} events) not recorded "
                        "(see loss_record and lost_batches)")
    if scan.unsorted:
        problems.append(f"{scan.unsorted} batches with timestamps out of order")
    if scan.outside:
        problems.append(f"{scan.outside} events outside their batch's interval")
    return problems


def _channel_names(header: dict[str, str]) -> dict[int, str]:
    try:
        return {int(k): v for k, v in json.loads(header.get("channel_map", "{}")).items()}
    except ValueError:
        return {}


def inspect_pass_file(path: Path | str, *, max_listed: int = 50) -> dict[str, Any]:
    """Per-channel counts, time span, gaps, overflow periods, sequence continuity and
    integrity of a pass file, as a JSON-ready dict."""
    path = Path(path)
    scan = _Scan()
    with passfile.PassFileReader(path) as reader:
        header = reader.header
        for b in reader:
            scan.add(b)
        stop = reader.stop
    names = _channel_names(header)
    side = passfile.read_sidecar(path) or {}
    totals = side.get("totals") or {}
    lost = totals.get("lost_batches", [])
    loss_record = scan.loss_record
    # The loss record in the file is the authority (the sidecar may be missing or stale);
    # the sidecar's per-batch list is kept for detail.
    lost_events = (loss_record.events if loss_record is not None
                   else sum(x["n_events"] for x in lost))
    lost_count = loss_record.batches if loss_record is not None else len(lost)
    problems = _problems(scan, stop, lost_count, lost_events)
    first_start, last_end = scan.first_start, scan.last_end
    start_utc = (datetime.fromtimestamp(scan.first_time_s, UTC).isoformat()
                 if scan.first_time_s is not None else None)
    return {
        "path": str(path),
        "pass_id": header.get("stream_pass_id", path.stem),
        # Never the simulator's seed (files from before issue 11 carry one).
        "header": {k: v for k, v in public_header(header).items()
                   if k not in ("qkd.header", "elements")},
        "integrity": {
            "complete": stop.complete, "reason": stop.reason, "file_size_bytes": stop.file_size_bytes,
            "last_good_offset_bytes": stop.last_good_offset_bytes,
            "trailing_bytes": stop.trailing_bytes, "sidecar_state": side.get("state"),
            "outcome": totals.get("outcome"), "problems": problems, "ok": not problems,
        },
        "batches": scan.n_batches,
        "events": scan.n_events,
        "counts_by_channel": {names.get(c, str(c)): int(n) for c, n in enumerate(scan.counts) if n},
        "time_span": {
            "start_ps": first_start, "end_ps": last_end, "start_utc": start_utc,
            "duration_s": (last_end - first_start) / _PS_PER_S if first_start is not None
            and last_end is not None else 0.0,
        },
        "gaps": scan.gaps[:max_listed], "gap_count": len(scan.gaps),
        "sequence": {"first_seq": scan.first_seq, "last_seq": scan.prev_seq,
            "continuous": not scan.seq_jumps, "jumps": scan.seq_jumps[:max_listed]},
        "overflow": {"periods": scan.overflows[:max_listed], "period_count": len(scan.overflows),
                     "missed_events": scan.missed},
        "lost_batches": lost[:max_listed],
        "loss_record": loss_record.model_dump(mode="json") if loss_record is not None else None,
        "events_not_recorded": lost_events,
        "events_lost": scan.missed + lost_events,
    }
