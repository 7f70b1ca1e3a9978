"""A disk that refuses writes: the lost batches are counted, listed and reported; the file
stays readable; nothing after the failure is silently missing."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from station.config.events import EventsConfig
from station.events import EventPipeline, passfile, read_pass_file
from station.events.inspection import inspect_pass_file
from station.events.source import PassSource
from tests.conftest import small_tmpfs
from tests.events.conftest import header, make_batches, same_events

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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (root only; skipped cleanly elsewhere)."""
    with small_tmpfs(tmp_path / "state", "size=3m") as mount_point:
        yield mount_point


async def test_a_full_disk_leaves_a_loss_record_in_the_file(small_disk: Path) -> None:
    pipeline = EventPipeline(EventsConfig(stream_endpoint="tcp://127.0.0.1:*"), state_dir=small_disk)
    await pipeline.start()
    alarms: list[str] = []
    try:
        rec = pipeline.open_pass(header(), on_loss=alarms.append)
        source = make_batches(80, seed=3, max_events=10000)
        for b in source:
            await rec.push(b)
        totals = await rec.close("completed")
    finally:
        await pipeline.stop()
    assert totals.batches_lost_disk > 0 and all("ENOSPC" in x.reason for x in totals.lost_batches)
    # Told the moment it happened (once per reason), not at the end.
    assert len(alarms) == 1 and "ENOSPC" in alarms[0]

    # The file itself says what it lacks: its last batch is the loss record.
    record = passfile.read_loss_record(totals.path)
    assert record is not None
    assert record.events == totals.events_lost_disk and record.batches == totals.batches_lost_disk
    lost_seqs = sorted(x.tagger_seq for x in totals.lost_batches)
    assert [s for r in record.ranges for s in range(r.first_seq, r.last_seq + 1)] == lost_seqs
    assert all(r.start_time_s is not None for r in record.ranges)
    _, got, stop = read_pass_file(totals.path)
    assert stop.complete  # the end-of-stream marker fitted: the close reserve was given back
    assert passfile.is_loss_record(got[-1].metadata) and len(got[-1].events) == 0
    kept = [b for b in source if b.info.seq not in lost_seqs]
    for g, b in zip(got[:-1], kept, strict=True):
        assert g.info == b.info and same_events(g.events, b.events)
    # The sidecar was finished too, and inspect reports the loss.
    assert passfile.read_sidecar(totals.path)["state"] == "closed"
    report = inspect_pass_file(totals.path)
    assert report["events_lost"] == totals.events_lost_disk > 0
    assert report["batches"] == len(kept) and report["loss_record"]["events"] == record.events
    assert any("not recorded" in p for p in report["integrity"]["problems"])
    from station.cli.inspect import _text

    text = _text(report)
    assert f"events lost {totals.events_lost_disk:,}" in text and "loss record in the file" in text
    assert not (small_disk / "passes" / f".{totals.path.stem}.reserve").exists()
    # After a restart the stream serves the same: the loss record is the last batch.
    src = PassSource.from_file(totals.path)
    assert src.end.batches == len(got) and src.end.events == totals.events_recorded
    assert src.end.events_lost == totals.events_lost_disk
