"""``qkd-station receive`` and ``qkd-station inspect`` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from station.events import EventPipeline
from tests.events.conftest import header, make_batches

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_receive_then_inspect_both_copies(pipeline: EventPipeline, tmp_path: Path) -> None:
    batches = make_batches(25, lossy={3, 4, 10})
    rec = pipeline.open_pass(header())
    for b in batches:
        await rec.push(b)
    totals = await rec.close("completed")
    out = tmp_path / "rx"
    code, stdout, stderr = await cli("receive", "--connect", pipeline.endpoint, "--out", str(out),
                                     "--pass", header().stem)
    assert code == 0, stderr
    assert "verified" in stdout
    verdict = json.loads((out / f"{header().stem}.json").read_text())
    assert verdict["verified"] and verdict["events"] == totals.events_recorded

    for path in (totals.path, out / f"{header().stem}.arrows"):
        code, stdout, stderr = await cli("inspect", str(path), "--json")
        assert code == 0, stdout + stderr
        report = json.loads(stdout)
        assert report["integrity"]["complete"] and report["integrity"]["ok"]
        assert report["batches"] == 25 and report["events"] == totals.events_recorded
        assert report["counts_by_channel"] == {
            name: totals.counts_by_channel[c] for c, name in
            [(1, "H"), (2, "V"), (3, "D"), (4, "A"), (5, "SYNC"), (6, "PPS")]}
        assert report["sequence"]["continuous"] and report["gap_count"] == 0
        assert report["overflow"]["period_count"] == 2  # batches 3-4 and 10
        assert report["overflow"]["missed_events"] == 51 == report["events_lost"]
        assert report["time_span"]["duration_s"] == 25 * 1e-3

    code, stdout, _ = await cli("inspect", str(totals.path))
    assert code == 0 and "continuous" in stdout and "2 periods" in stdout


async def test_inspect_reports_a_cut_file(pipeline: EventPipeline, tmp_path: Path) -> None:
    rec = pipeline.open_pass(header())
    for b in make_batches(5, seed=1):
        await rec.push(b)
    totals = await rec.close("completed")
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(totals.path.read_bytes()[:-100])
    code, stdout, _ = await cli("inspect", str(cut), "--json")
    assert code == 1
    report = json.loads(stdout)
    assert not report["integrity"]["complete"] and report["batches"] == 4
    assert "cut mid-write" in report["integrity"]["reason"]
    code, _, stderr = await cli("inspect", str(tmp_path / "missing.arrows"))
    assert code == 2 and "cannot read" in stderr


async def test_receive_an_unknown_pass_says_so(pipeline: EventPipeline, tmp_path: Path) -> None:
    code, _, stderr = await cli("receive", "--connect", pipeline.endpoint, "--out",
                                str(tmp_path / "rx"), "--pass", "no-such-pass")
    assert code == 1 and "unknown_pass" in stderr and "no-such-pass" in stderr


async def test_keygen_then_receive_over_curve(tmp_path: Path) -> None:
    """The operator's path: keygen on both sides, the station's config names the keys,
    `receive --server-key --key` gets the pass; without the keys it gets nothing."""
    from station.config.events import EventsConfig

    keys = tmp_path / "keys"
    for name, folder in (("station", keys), ("ppcore", keys / "consumers")):
        code, stdout, stderr = await cli("keygen", "--name", name, "--dir", str(folder))
        assert code == 0 and "0600" in stdout, stderr
    cfg = EventsConfig(stream_endpoint="tcp://127.0.0.1:*",
                       curve_secret_key_file=keys / "station.key_secret",
                       curve_consumer_key_files=[keys / "consumers"])
    pipeline = EventPipeline(cfg, state_dir=tmp_path / "state")
    await pipeline.start()
    try:
        rec = pipeline.open_pass(header())
        for b in make_batches(6, seed=3):
            await rec.push(b)
        await rec.close("completed")
        code, stdout, stderr = await cli(
            "receive", "--connect", pipeline.endpoint, "--out", str(tmp_path / "rx"),
            "--pass", header().stem, "--server-key", str(keys / "station.key"),
            "--key", str(keys / "consumers" / "ppcore.key_secret"))
        assert code == 0 and "verified" in stdout, stderr
        code, _, stderr = await cli("receive", "--connect", pipeline.endpoint, "--out",
                                    str(tmp_path / "rx2"), "--server-key",
                                    str(keys / "station.key"))
        assert code == 2 and "both --server-key and --key" in stderr
    finally:
        await pipeline.stop()
