"""The stream against a consumer written from docs/stream-protocol.md alone.

``independent_consumer.py`` imports nothing of the station; these tests drive it through
what broke the first spec-only consumer (issue 12): the pass-open race, duplicate
bursts, follow-mode restarts (kill -9), passes opened and closed while it was away, and a
station restart. Every pass it stores must match the station's file batch for batch.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import zmq

import station.events.pipeline as pipeline_mod
from station.config.events import EventsConfig
from station.events import EventPipeline, read_pass_file
from tests.events.conftest import header, make_batches
from tests.events.independent_consumer import Consumer

SCRIPT = Path(__file__).with_name("independent_consumer.py")
REPO = Path(__file__).resolve().parents[2]


def assert_stored_like_the_file(c: Consumer, pass_file: Path, pass_id: str) -> None:
    _, batches, stop = read_pass_file(pass_file)
    assert stop.complete, stop.reason
    ts, ch = c.events_of(pass_id)
    want = np.concatenate([b.events for b in batches]) if batches else None
    n = 0 if want is None else len(want)
    assert len(ts) == len(ch) == n
    if want is not None:
        assert np.array_equal(ts, want["timestamp_ps"]) and np.array_equal(ch, want["channel"])
    idx = [json.loads(x) for x in (c.out / f"{pass_id}.idx").read_text().splitlines()]
    assert [h["seq"] for h in idx] == list(range(len(batches)))  # each batch once, in order
    assert [h["tagger_seq"] for h in idx] == [b.info.seq for b in batches]
    done = json.loads((c.out / f"{pass_id}.done").read_text())
    assert done["batches"] == len(batches) and done["outcome"]


async def record(pipeline: EventPipeline, pass_id: str, batches: list) -> Path:
    rec = pipeline.open_pass(header(pass_id))
    for b in batches:
        await rec.push(b)
    totals = await rec.close("completed")
    return totals.path


def run_consumer(c: Consumer, until: object, deadline_s: float = 120.0) -> threading.Thread:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            c.follow(until, deadline_s=deadline_s)
        except BaseException as exc:  # surfaced by join_consumer
            errors.append(exc)

    t = threading.Thread(target=body, name="independent-consumer", daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t


async def join_consumer(t: threading.Thread, timeout_s: float = 150.0) -> None:
    await asyncio.to_thread(t.join, timeout_s)
    assert not t.is_alive(), "the consumer did not finish"
    if t.errors:  # type: ignore[attr-defined]
        raise t.errors[0]  # type: ignore[attr-defined]


async def test_pass_open_race_a_pass_is_recording_from_the_moment_it_can_be_named(
        pipeline: EventPipeline, tmp_path: Path, monkeypatch: object) -> None:
    """Hold the recorder in the race window (file on disk, source not yet registered) and
    ask for the pass there: it must be recording, and its hello must wait for batches."""
    pid = "41731-20161219T164844Z"
    in_window, probed = threading.Event(), threading.Event()

    class Held(pipeline_mod.PassRecorder):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, **kw)  # type: ignore[arg-type]
            in_window.set()
            assert probed.wait(30), "the probe did not run"

    monkeypatch.setattr(pipeline_mod, "PassRecorder", Held)  # type: ignore[attr-defined]
    answers: list[dict] = []
    batches = make_batches(12, seed=31)
    got: list[list[bytes]] = []

    def probe() -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(pipeline.endpoint)
        try:
            assert in_window.wait(30)
            assert (pipeline.passes_dir / f"{pid}.arrows").exists()  # really in the window
            s.send_json({"type": "list"})
            assert s.poll(10_000)
            answers.append(json.loads(s.recv()))
            s.send_json({"type": "hello", "protocol": 1, "pass_id": pid, "window": 4})
            s.send_json({"type": "ping"})
            assert s.poll(10_000)
            answers.append(json.loads(s.recv()))  # the pong: the hello had no answer yet
            probed.set()
            while True:
                assert s.poll(30_000), "nothing from the station"
                frames = s.recv_multipart()
                msg = json.loads(frames[0])
                got.append(frames)
                if msg["type"] == "batch":
                    s.send_json({"type": "ack", "pass_id": pid, "seq": msg["seq"]})
                if msg["type"] in ("pass_end", "error"):
                    return
        finally:
            probed.set()
            s.close(0)
            ctx.term()

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    rec = pipeline.open_pass(header(pid))  # blocks in the window until the probe is done
    for b in batches:
        await rec.push(b)
    await rec.close("completed")
    await asyncio.to_thread(t.join, 60)
    listed = {p["pass_id"]: p for p in answers[0]["passes"]}
    assert listed[pid] == {"pass_id": pid, "recording": True, "batches": 0, "events": 0}
    assert answers[1]["type"] == "pong"
    kinds = [json.loads(f[0])["type"] for f in got]
    begin = json.loads(got[0][0])
    assert kinds == ["pass_begin"] + ["batch"] * 12 + ["pass_end"], kinds
    assert begin["recording"] is True and begin["window"] == 4
    end = json.loads(got[-1][0])
    assert end["batches"] == 12 and end["events"] == sum(len(b) for b in batches)
    assert end["complete"] is True and end["outcome"] == "completed"


async def test_follows_back_to_back_passes_and_duplicate_bursts(
        pipeline: EventPipeline, tmp_path: Path) -> None:
    """Five passes opened one after the other while the consumer keeps asking again from
    further back than it holds (bursts of duplicates larger than its window)."""
    c = Consumer(pipeline.endpoint, tmp_path / "rx", window=4, name="ind",
                 rewind_every=7, rewind_by=20, ping_s=0.2)
    ids = [f"41731-20161219T1648{k:02d}Z" for k in range(5)]
    t = run_consumer(c, lambda: len(c.completed) >= 5)
    try:
        paths = {}
        for k, pid in enumerate(ids):
            paths[pid] = await record(pipeline, pid, make_batches(30, seed=40 + k, max_events=500))
        await join_consumer(t)
    finally:
        c.close()
    assert sorted(c.completed) == ids and len(set(c.completed)) == 5
    assert c.stats.duplicates > 4 * 5  # bursts beyond the window, and they flowed
    for pid, path in paths.items():
        assert_stored_like_the_file(c, path, pid)


async def test_passes_opened_and_closed_while_away_are_served_and_nothing_twice(
        pipeline: EventPipeline, tmp_path: Path) -> None:
    out = tmp_path / "rx"
    first = Consumer(pipeline.endpoint, out, window=8, name="ind")
    t = run_consumer(first, lambda: len(first.completed) >= 1)
    try:
        a = await record(pipeline, "1-a", make_batches(10, seed=50))
        await join_consumer(t)
    finally:
        first.close()
    assert first.completed == ["1-a"]
    # Away: two passes come and go, a third is half recorded.
    b = await record(pipeline, "1-b", make_batches(25, seed=51))
    c_path = await record(pipeline, "1-c", make_batches(5, seed=52))
    rec_d = pipeline.open_pass(header("1-d"))
    d_batches = make_batches(20, seed=53)
    for x in d_batches[:8]:
        await rec_d.push(x)
    second = Consumer(pipeline.endpoint, out, window=2, name="ind")
    t = run_consumer(second, lambda: len(second.completed) >= 4)
    try:
        # While it catches up: a pass opens and closes; then d ends.
        e = await record(pipeline, "1-e", make_batches(6, seed=54))
        for x in d_batches[8:]:
            await rec_d.push(x)
        d = (await rec_d.close("completed")).path
        await join_consumer(t)
    finally:
        second.close()
    assert sorted(second.completed) == ["1-b", "1-c", "1-d", "1-e"]
    assert all(pid != "1-a" for pid, _ in second.stats.begins)  # nothing twice
    for pid, path in {"1-a": a, "1-b": b, "1-c": c_path, "1-d": d, "1-e": e}.items():
        assert_stored_like_the_file(second, path, pid)


async def test_kill_9_mid_pass_and_restart_in_follow_mode(pipeline: EventPipeline, tmp_path: Path) -> None:
    out = tmp_path / "rx"
    args = [sys.executable, str(SCRIPT), pipeline.endpoint, str(out), "--max-passes", "2",
            "--window", "3"]
    env = {"PYTHONPATH": str(REPO)}
    rec = pipeline.open_pass(header("2-a"))
    batches = make_batches(120, seed=60, max_events=2000)
    proc = await asyncio.create_subprocess_exec(*args, env=env)
    try:
        idx = out / "2-a.idx"
        for b in batches[:60]:
            await rec.push(b)
        for _ in range(3000):  # until it stored a good part of what exists
            if idx.exists() and len(idx.read_text().splitlines()) >= 20:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        for b in batches[60:]:
            await rec.push(b)
        a = (await rec.close("completed")).path
        bpath = await record(pipeline, "2-b", make_batches(10, seed=61))
        proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE)
        stdout, _ = await asyncio.wait_for(proc.communicate(), 150)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert sorted(json.loads(stdout.splitlines()[-1])["completed"]) == ["2-a", "2-b"]
    c = Consumer(pipeline.endpoint, out)
    try:
        assert_stored_like_the_file(c, a, "2-a")
        assert_stored_like_the_file(c, bpath, "2-b")
    finally:
        c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_station_restart_while_following(tmp_path: Path) -> None:
    """The station goes away and comes back on the same port: no_session (or a reconnect)
    makes the consumer start again, with a cursor of the new run."""
    cfg = EventsConfig(stream_endpoint=f"tcp://127.0.0.1:{_free_port()}", consumer_timeout_s=3.0)
    state = tmp_path / "state"
    first = EventPipeline(cfg, state_dir=state)
    await first.start()
    c = Consumer(cfg.stream_endpoint, tmp_path / "rx", window=4, name="ind", timeout_s=3.0,
                 ping_s=0.2)
    t = run_consumer(c, lambda: len(c.completed) >= 3)
    try:
        a = await record(first, "3-a", make_batches(8, seed=70))
        for _ in range(3000):
            if c.completed:
                break
            await asyncio.sleep(0.01)
        await first.stop()
        # While the station is down nothing is served; it comes back with new passes,
        # one of them recorded before any consumer could reconnect.
        second = EventPipeline(cfg, state_dir=state)
        await second.start()
        try:
            b = await record(second, "3-b", make_batches(9, seed=71))
            cc = await record(second, "3-c", make_batches(7, seed=72))
            await join_consumer(t)
        finally:
            await second.stop()
    finally:
        c.close()
    assert sorted(c.completed) == ["3-a", "3-b", "3-c"]
    for pid, path in {"3-a": a, "3-b": b, "3-c": cc}.items():
        assert_stored_like_the_file(c, path, pid)


async def test_a_crashed_pass_and_its_resumed_segment(pipeline: EventPipeline, tmp_path: Path) -> None:
    """A pass cut by a crash (no end marker, no sidecar) is served complete: false with
    outcome interrupted; its resumed segment -s2 is a pass of its own."""
    from station.events.passfile import PassFileWriter, batch_metadata, columns_of

    cut = make_batches(7, seed=91)
    w = PassFileWriter(pipeline.passes_dir / "6-a.arrows", header("6-a").schema_metadata())
    for b in cut:
        w.write(*columns_of(b.events), batch_metadata(b.info))
    w.close(end_of_stream=False)
    c = Consumer(pipeline.endpoint, tmp_path / "rx", window=3, name="ind")
    t = run_consumer(c, lambda: len(c.completed) >= 2)
    try:
        rec = pipeline.open_pass(header("6-a", segment=2))
        for b in make_batches(5, seed=92):
            await rec.push(b)
        s2 = (await rec.close("completed")).path
        await join_consumer(t)
    finally:
        c.close()
    assert sorted(c.completed) == ["6-a", "6-a-s2"]
    done = json.loads((c.out / "6-a.done").read_text())
    assert (done["complete"], done["outcome"], done["batches"]) == (False, "interrupted", 7)
    assert_stored_like_the_file(c, s2, "6-a-s2")
    ts, _ = c.events_of("6-a")
    assert np.array_equal(ts, np.concatenate([b.events["timestamp_ps"] for b in cut]))
