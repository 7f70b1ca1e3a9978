"""A daemon killed with SIGKILL mid-pass: its pass file reads back, and recovery closes it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from station.events import read_pass_file, recover_interrupted
from tests.events.conftest import make_batches, same_events

RECORDER = Path(__file__).with_name("_recorder.py")


async def test_sigkill_mid_pass_keeps_every_batch_written(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RECORDER), str(tmp_path / "state"), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        path = Path(json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))["path"])
        recorded = 0
        while recorded < 40:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "the recorder process ended early"
            recorded = json.loads(line)["batches_recorded"]
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    source = make_batches(400, seed=21, max_events=20000)
    _, got, stop = read_pass_file(path)
    assert not stop.complete
    assert "no end-of-stream marker" in stop.reason or "cut mid-write" in stop.reason
    # Everything the recorder had written before the kill is there (the page cache survives
    # a process kill; fsync within flush_interval_s covers a power cut).
    assert len(got) >= recorded
    for g, b in zip(got, source, strict=False):
        assert g.info == b.info and same_events(g.events, b.events)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["state"] == "recording"

    info = recover_interrupted(path)
    assert info.batches == len(got) and not info.was_closed
    assert json.loads(path.with_suffix(".json").read_text())["state"] == "interrupted"
    _, again, stop2 = read_pass_file(path)
    assert stop2.complete and len(again) == len(got)
