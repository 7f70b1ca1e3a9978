"""A disk that refuses writes: the lost batches are counted, listed and reported; the file
stays readable; nothing after the failure is silently missing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from station.events import read_pass_file
from tests.events.conftest import make_batches, same_events

SCRIPT = Path(__file__).with_name("_diskfull.py")


async def test_refused_writes_are_counted_and_the_file_stays_readable(tmp_path: Path) -> None:
    limit = 60_000
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), str(tmp_path / "state"), str(limit),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    totals = json.loads(out)
    source = make_batches(30, seed=8, max_events=5000)
    assert totals["batches_lost_disk"] > 0
    assert totals["batches_recorded"] + totals["batches_lost_disk"] == 30
    lost_seqs = [x["tagger_seq"] for x in totals["lost_batches"]]
    assert totals["events_lost_disk"] == sum(len(source[s]) for s in lost_seqs)
    assert totals["events_lost"] == totals["events_lost_disk"]
    assert all("EFBIG" in x["reason"] for x in totals["lost_batches"])
    assert "EFBIG" in err.decode()  # logged, not silent
    _, got, stop = read_pass_file(Path(totals["path"]))
    kept = [b for b in source if b.info.seq not in lost_seqs]
    assert len(got) == totals["batches_recorded"] == len(kept)
    for g, b in zip(got, kept, strict=True):
        assert g.info == b.info and same_events(g.events, b.events)
    assert stop.last_good_offset_bytes <= limit
