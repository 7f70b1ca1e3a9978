"""The stream: tagger -> pipeline -> pass file -> ZeroMQ -> consumer, batch for batch."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import zmq
import zmq.asyncio

from drivers.timetagger.link import StaticLinkGeometry
from drivers.timetagger.sim import SimOptions, SimTimeTagger
from station.clock import SimClock
from station.config.events import EventsConfig
from station.events import EventPipeline, read_pass_file
from station.events.client import StreamClient
from station.events.protocol import PassEnd
from tests.events.conftest import header, make_batches, same_events

CONSUMER = Path(__file__).with_name("_consumer.py")
START_S = 1_482_166_198.0


def assert_same_batches(path: Path, batches: list) -> None:
    _, got, stop = read_pass_file(path)
    assert stop.complete, stop.reason
    assert len(got) == len(batches)
    for i, (g, b) in enumerate(zip(got, batches, strict=True)):
        assert g.index == i and "stream_seq" not in g.metadata
        assert g.info == b.info
        assert same_events(g.events, b.events)


async def test_sim_tagger_round_trip_batch_for_batch(pipeline: EventPipeline, tmp_path: Path) -> None:
    clock = SimClock(START_S, speed=math.inf)
    tagger = SimTimeTagger(SimOptions(preset="lab", seed=11, batch_s=0.05), clock=clock)
    await tagger.connect()
    tagger.set_link(StaticLinkGeometry(range_km=600.0, el_deg=60.0))
    rec = pipeline.open_pass(header())
    sent = []
    await tagger.start()
    async for batch in tagger.batches():
        sent.append(batch)
        await rec.push(batch)
        if batch.info.end_ps >= 2 * 10**12:
            await tagger.stop()
    await tagger.close()
    totals = await rec.close("completed")
    assert totals.events_recorded == sum(len(b) for b in sent) > 1000
    assert totals.batches_recorded == len(sent)
    client = StreamClient(pipeline.endpoint, tmp_path / "rx", window=8)
    try:
        rp = await asyncio.to_thread(client.receive_pass, header().stem)
    finally:
        client.close()
    assert rp.ok, rp.problems
    assert rp.events == totals.events_recorded
    assert {int(k): v for k, v in rp.counts.items()} == totals.counts_by_channel
    assert_same_batches(tmp_path / "rx" / f"{header().stem}.arrows", sent)
    assert_same_batches(totals.path, sent)


async def test_live_consumer_gets_every_batch_and_the_totals(pipeline: EventPipeline, tmp_path: Path) -> None:
    batches = make_batches(60, lossy={7, 8})
    rec = pipeline.open_pass(header())
    client = StreamClient(pipeline.endpoint, tmp_path / "rx", window=3)
    job = asyncio.create_task(asyncio.to_thread(client.receive_pass, header().stem))
    try:
        for b in batches:
            await rec.push(b)
        totals = await rec.close("completed")
        rp = await job
    finally:
        client.close()
    assert rp.ok, rp.problems
    assert isinstance(rp.end, PassEnd)
    assert rp.end.missed_events == 34 == totals.events_missed_by_tagger == totals.events_lost
    assert rp.end.overflow_batches == 2 and rp.end.outcome == "completed"
    assert_same_batches(rp.path, batches)
    stats = rec.stats()
    assert stats.events_recorded == stats.events_streamed == totals.events_recorded


async def test_consumer_killed_mid_pass_and_restarted_gets_every_event_once(
        pipeline: EventPipeline, tmp_path: Path) -> None:
    batches = make_batches(80, seed=2)
    rec = pipeline.open_pass(header())
    out = tmp_path / "rx"
    args = [sys.executable, str(CONSUMER), pipeline.endpoint, str(out), header().stem]
    for b in batches[:50]:
        await rec.push(b)
    first = await asyncio.create_subprocess_exec(*args, "--die-after", "23")
    try:
        assert await first.wait() == -signal.SIGKILL
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    for b in batches[50:]:
        await rec.push(b)
    await rec.close("completed")
    second = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    try:
        stdout, _ = await second.communicate()
    finally:
        if second.returncode is None:
            second.kill()
            await second.wait()
    result = json.loads(stdout.splitlines()[-1])
    assert result["ok"], result["problems"]
    assert result["batches"] == 80 and result["events"] == sum(len(b) for b in batches)
    assert_same_batches(out / f"{header().stem}.arrows", batches)


async def test_a_pass_recorded_before_a_restart_is_served_from_its_file(tmp_path: Path) -> None:
    cfg = EventsConfig(stream_endpoint="tcp://127.0.0.1:*")
    batches = make_batches(20, seed=4)
    first = EventPipeline(cfg, state_dir=tmp_path / "state")
    await first.start()
    try:
        rec = first.open_pass(header(segment=2))
        for b in batches:
            await rec.push(b)
        await rec.close("aborted", "mount fault")
    finally:
        await first.stop()
    second = EventPipeline(cfg, state_dir=tmp_path / "state")
    await second.start()
    client = StreamClient(second.endpoint, tmp_path / "rx")
    try:
        passes = await asyncio.to_thread(client.list_passes)
        assert [p.pass_id for p in passes.passes] == [header(segment=2).stem]
        rp = await asyncio.to_thread(client.receive_pass, header(segment=2).stem)
    finally:
        client.close()
        await second.stop()
    assert rp.ok and rp.end is not None and rp.end.outcome == "aborted"
    assert rp.pass_id.endswith("-s2")
    assert_same_batches(rp.path, batches)


async def test_follow_mode_receives_consecutive_passes(pipeline: EventPipeline, tmp_path: Path) -> None:
    client = StreamClient(pipeline.endpoint, tmp_path / "rx", window=5)
    stop = threading.Event()
    job = asyncio.create_task(asyncio.to_thread(client.follow, stop=stop, max_passes=2))
    try:
        sets = {}
        for k, pid in enumerate(["1-a", "1-b"]):
            sets[pid] = make_batches(15, seed=10 + k)
            rec = pipeline.open_pass(header(pid))
            for b in sets[pid]:
                await rec.push(b)
            await rec.close("completed")
        got = await asyncio.wait_for(job, 60)
    finally:
        stop.set()
        client.close()
    assert [rp.pass_id for rp in got] == ["1-a", "1-b"] and all(rp.ok for rp in got)
    for pid, batches in sets.items():
        assert_same_batches(tmp_path / "rx" / f"{pid}.arrows", batches)


async def test_wire_bytes_and_refusals(pipeline: EventPipeline) -> None:
    """Byte level, as a C++ consumer sees it: a DEALER socket and JSON + raw frames."""
    batches = make_batches(3, seed=9)
    rec = pipeline.open_pass(header())
    for b in batches:
        await rec.push(b)
    await rec.close("completed")
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(pipeline.endpoint)

    async def recv() -> list[bytes]:
        return await asyncio.wait_for(sock.recv_multipart(), 10)

    try:
        await sock.send(b"not json")
        err = json.loads((await recv())[0])
        assert err["type"] == "error" and err["code"] == "bad_request"
        await sock.send(b'{"type":"hello","protocol":99}')
        assert json.loads((await recv())[0])["code"] == "protocol_version"
        await sock.send(b'{"type":"hello","pass_id":"nope"}')
        assert json.loads((await recv())[0])["code"] == "unknown_pass"
        await sock.send(b'{"type":"hello","pass_id":"%s","resume_seq":1,"window":1}'
                        % header().stem.encode())
        begin = json.loads((await recv())[0])
        assert begin["type"] == "pass_begin" and begin["resume_seq"] == 1
        assert begin["header"]["tagger_model"] == "synthetic"
        frames = await recv()
        assert len(frames) == 3
        hdr = json.loads(frames[0])
        n = len(batches[1])
        assert (hdr["type"], hdr["seq"], hdr["tagger_seq"], hdr["n_events"]) == ("batch", 1, 1, n)
        assert len(frames[1]) == 8 * n and len(frames[2]) == n
        assert np.array_equal(np.frombuffer(frames[1], "<i8"), batches[1].events["timestamp_ps"])
        assert await sock.poll(200) == 0  # window 1: nothing more until acknowledged
        await sock.send(b'{"type":"ack","pass_id":"%s","seq":1}' % header().stem.encode())
        assert json.loads((await recv())[0])["seq"] == 2
        await sock.send(b'{"type":"ack","pass_id":"%s","seq":2}' % header().stem.encode())
        end = json.loads((await recv())[0])
        assert end["type"] == "pass_end" and end["batches"] == 3
        assert end["events"] == sum(len(b) for b in batches)
    finally:
        sock.close(0)
        ctx.term()


async def test_consumer_presence_is_reported(pipeline: EventPipeline, tmp_path: Path) -> None:
    assert not pipeline.consumer_connected
    client = StreamClient(pipeline.endpoint, tmp_path / "rx")
    stop = threading.Event()
    job = asyncio.create_task(asyncio.to_thread(client.follow, stop=stop))
    try:
        for _ in range(2000):  # until the server thread has seen the hello
            if pipeline.consumer_connected:
                break
            await asyncio.sleep(0.005)
        assert pipeline.consumer_connected
    finally:
        stop.set()
        await job
        client.close()
    for _ in range(2000):  # the client said bye
        if not pipeline.consumer_connected:
            break
        await asyncio.sleep(0.005)
    assert not pipeline.consumer_connected


async def test_bounded_queue_pushes_wait_and_nothing_is_dropped(tmp_path: Path) -> None:
    cfg = EventsConfig(stream_endpoint="tcp://127.0.0.1:*", max_queue_batches=2)
    pipeline = EventPipeline(cfg, state_dir=tmp_path / "state")
    await pipeline.start()
    try:
        rec = pipeline.open_pass(header())
        batches = make_batches(200, seed=6)
        depths = []
        for b in batches:
            await rec.push(b)
            depths.append(rec.stats().queue_depth)
        totals = await rec.close()
        late = make_batches(1)[0]
        try:
            await rec.push(late)
            raise AssertionError("push after close must be refused")
        except RuntimeError as exc:
            assert "closed" in str(exc)
    finally:
        await pipeline.stop()
    assert max(depths) <= 2
    assert totals.batches_recorded == 200 and totals.events_lost == 0
    assert_same_batches(totals.path, batches)


async def test_receiving_a_pass_held_complete_again_checks_it_again(
        pipeline: EventPipeline, tmp_path: Path) -> None:
    batches = make_batches(6, seed=12)
    rec = pipeline.open_pass(header())
    for b in batches:
        await rec.push(b)
    await rec.close("completed")
    for _ in range(2):
        client = StreamClient(pipeline.endpoint, tmp_path / "rx", window=2)
        try:
            rp = await asyncio.wait_for(asyncio.to_thread(client.receive_pass, header().stem), 60)
        finally:
            client.close()
        assert rp.ok and rp.batches == 6


async def test_reference_client_follow_catches_up_on_passes_missed_while_away(
        pipeline: EventPipeline, tmp_path: Path) -> None:
    out = tmp_path / "rx"

    async def follow(n: int) -> list:
        client = StreamClient(pipeline.endpoint, out, window=3, consumer="ref")
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(client.follow, max_passes=n), 60)
        finally:
            client.close()

    job = asyncio.create_task(follow(1))
    for _ in range(2000):  # until its follow session is open
        if pipeline.consumer_connected:
            break
        await asyncio.sleep(0.005)
    sets = {pid: make_batches(9, seed=20 + k) for k, pid in enumerate(["4-a", "4-b", "4-c"])}
    rec = pipeline.open_pass(header("4-a"))
    for b in sets["4-a"]:
        await rec.push(b)
    await rec.close("completed")
    assert [rp.pass_id for rp in await job] == ["4-a"]
    for pid in ("4-b", "4-c"):  # while it is away
        rec = pipeline.open_pass(header(pid))
        for b in sets[pid]:
            await rec.push(b)
        await rec.close("completed")
    got = await follow(2)
    assert sorted(rp.pass_id for rp in got) == ["4-b", "4-c"] and all(rp.ok for rp in got)
    for pid, batches in sets.items():
        assert_same_batches(out / f"{pid}.arrows", batches)
