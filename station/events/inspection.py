"""What a pass file holds and whether it is whole: the data behind ``qkd-station inspect``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from station.events import passfile
from station.events.source import public_header

_PS_PER_S = 1e12


def inspect_pass_file(path: Path | str, *, max_listed: int = 50) -> dict[str, Any]:
    """Per-channel counts, time span, gaps, overflow periods, sequence continuity and
    integrity of a pass file, as a JSON-ready dict."""
    path = Path(path)
    counts = np.zeros(256, np.int64)
    n_batches = n_events = 0
    gaps: list[dict[str, Any]] = []
    seq_jumps: list[dict[str, int]] = []
    stream_seq_errors = 0
    unsorted = outside = 0
    overflows: list[dict[str, Any]] = []
    missed = 0
    first_start = last_end = None
    first_time_s = first_seq = None
    prev_end = prev_seq = None
    open_ovf: dict[str, Any] | None = None
    loss_record: passfile.LossRecord | None = None
    with passfile.PassFileReader(path) as reader:
        header = reader.header
        for b in reader:
            if passfile.is_loss_record(b.metadata):
                # The file's own account of what the disk refused; not tagger data.
                loss_record = passfile.LossRecord.model_validate_json(b.metadata[passfile.LOSS_KEY])
                continue
            info = b.info
            ts, ch = b.timestamp_ps, b.channel
            if b.metadata.get("stream_seq") not in (None, str(b.index)):
                stream_seq_errors += 1
            counts += np.bincount(ch, minlength=256)[:256]
            n_events += len(ts)
            if len(ts) > 1 and bool(np.any(np.diff(ts) < 0)):
                unsorted += 1
            if len(ts):
                outside += int(np.count_nonzero((ts < info.start_ps) | (ts >= info.end_ps)))
            if first_start is None:
                first_start, first_time_s, first_seq = info.start_ps, info.start_time_s, info.seq
            if prev_end is not None and info.start_ps != prev_end:
                gaps.append({"after_batch": n_batches - 1, "from_ps": prev_end,
                             "to_ps": info.start_ps,
                             "duration_s": (info.start_ps - prev_end) / _PS_PER_S})
            if prev_seq is not None and info.seq != prev_seq + 1:
                seq_jumps.append({"from_seq": prev_seq, "to_seq": info.seq})
            lossy = info.lossy
            missed += info.missed_events
            if lossy:
                if open_ovf is None:
                    open_ovf = {"from_ps": info.start_ps, "first_seq": info.seq,
                                "missed_events": 0, "batches": 0}
                    overflows.append(open_ovf)
                open_ovf.update(to_ps=info.end_ps, last_seq=info.seq,
                                duration_s=(info.end_ps - open_ovf["from_ps"]) / _PS_PER_S)
                open_ovf["missed_events"] += info.missed_events
                open_ovf["batches"] += 1
            if not lossy or info.overflow_end:
                open_ovf = None
            prev_end, prev_seq, last_end = info.end_ps, info.seq, info.end_ps
            n_batches += 1
        stop = reader.stop
    names = {}
    try:
        names = {int(k): v for k, v in json.loads(header.get("channel_map", "{}")).items()}
    except ValueError:
        pass
    side = passfile.read_sidecar(path) or {}
    totals = side.get("totals") or {}
    lost = totals.get("lost_batches", [])
    # The loss record in the file is the authority (the sidecar may be missing or stale);
    # the sidecar's per-batch list is kept for detail.
    lost_events = (loss_record.events if loss_record is not None
                   else sum(x["n_events"] for x in lost))
    lost_count = loss_record.batches if loss_record is not None else len(lost)
    problems = []
    if not stop.complete:
        problems.append(stop.reason)
    if seq_jumps:
        problems.append(f"{len(seq_jumps)} jumps in the tagger batch sequence")
    if stream_seq_errors:
        problems.append(f"{stream_seq_errors} batches out of stream order")
    if lost_count:
        problems.append(f"{lost_count} batches ({lost_events} events) not recorded "
                        "(see loss_record and lost_batches)")
    if unsorted:
        problems.append(f"{unsorted} batches with timestamps out of order")
    if outside:
        problems.append(f"{outside} events outside their batch's interval")
    start_utc = (datetime.fromtimestamp(first_time_s, UTC).isoformat()
                 if first_time_s is not None else None)
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
        "batches": n_batches,
        "events": n_events,
        "counts_by_channel": {names.get(c, str(c)): int(n) for c, n in enumerate(counts) if n},
        "time_span": {
            "start_ps": first_start, "end_ps": last_end, "start_utc": start_utc,
            "duration_s": (last_end - first_start) / _PS_PER_S if first_start is not None
            and last_end is not None else 0.0,
        },
        "gaps": gaps[:max_listed], "gap_count": len(gaps),
        "sequence": {"first_seq": first_seq, "last_seq": prev_seq,
            "continuous": not seq_jumps, "jumps": seq_jumps[:max_listed]},
        "overflow": {"periods": overflows[:max_listed], "period_count": len(overflows),
                     "missed_events": missed},
        "lost_batches": lost[:max_listed],
        "loss_record": loss_record.model_dump(mode="json") if loss_record is not None else None,
        "events_not_recorded": lost_events,
        "events_lost": missed + lost_events,
    }
