"""The ``replay`` backend: PTU T2 files (written from PicoQuant's layout and checked by
ptufile) and pass files (Arrow IPC streams), paced on the simulated clock."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers import registry
from drivers.timetagger.base import EVENT_DTYPE, Batch, BatchInfo, ChannelConfig, TimeTaggerError
from drivers.timetagger.replay import ReplayOptions, ReplayTimeTagger
from station.clock import SimClock
from station.events import passfile


def _load_helper():
    name = "qkd_tests_ptu_t2"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("ptu_t2.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


t2 = _load_helper()
START = datetime(2016, 12, 19, 16, 49, 58, tzinfo=UTC)
PS = 10**12


def _lab_events(seconds: float = 1.0, seed: int = 3) -> object:
    """Photons on inputs 0..3 (~2 kHz each), sync at 10 kHz, a PPS marker each second,
    and a few events on input 7, which the default channel map does not map."""
    rng = np.random.default_rng(seed)
    span = int(seconds * PS)
    parts = []
    for c in range(4):
        parts.append((np.sort(rng.integers(0, span, 2000 * int(seconds) or 2000)), t2.PHOTON, c))
    parts.append((np.arange(0, span, 100_000_000), t2.SYNC, 0))
    parts.append((np.arange(0, span, PS), t2.MARKER, 1))
    parts.append((np.array([span // 3, span // 2]), t2.PHOTON, 7))
    time = np.concatenate([p[0] for p in parts]).astype(np.int64)
    kind = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
    channel = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    return t2.T2Events(time=time, kind=kind, channel=channel)


def _expected_station_events(events) -> np.ndarray:
    """What the default maps make of the events: input i -> i+1, sync -> 5, marker 1 -> 6."""
    keep = ~((events.kind == t2.PHOTON) & (events.channel == 7))
    kind, chan, time = events.kind[keep], events.channel[keep], events.time[keep]
    station = np.where(kind == t2.SYNC, 5, np.where(kind == t2.MARKER, 6, chan + 1))
    order = np.lexsort((station, time))
    return np.stack([time[order], station[order]])


def _write_ptu(path: Path, events, **kw) -> Path:
    t2.write_t2_ptu(path, events, **kw)
    if kw.get("truncate_records") is None:
        t2.check_with_ptufile(path, events)
    return path


async def _collect(tagger: ReplayTimeTagger, clock=None, stamps=None) -> list[Batch]:
    out = []
    async for batch in tagger.batches():
        out.append(batch)
        if stamps is not None:
            stamps.append(clock.now_s())
    return out


def _check_tiling(batches: list[Batch]) -> None:
    assert [b.info.seq for b in batches] == list(range(len(batches)))
    for prev, cur in zip(batches, batches[1:], strict=False):
        assert cur.info.start_ps == prev.info.end_ps
    for b in batches:
        ts = b.events["timestamp_ps"]
        assert np.all(np.diff(ts) >= 0)
        if len(ts):
            assert ts[0] >= b.info.start_ps and ts[-1] < b.info.end_ps


def _sorted_pairs(batches: list[Batch]) -> np.ndarray:
    ev = np.concatenate([b.events for b in batches])
    order = np.lexsort((ev["channel"], ev["timestamp_ps"]))
    return np.stack([ev["timestamp_ps"][order], ev["channel"][order].astype(np.int64)])


async def _run(options: dict, clock) -> tuple[ReplayTimeTagger, list[Batch], list[float]]:
    tagger = registry.create("timetagger", "replay", options, clock=clock)
    await tagger.connect()
    await tagger.configure([ChannelConfig(channel=c) for c in range(1, 7)])
    await tagger.start()
    stamps: list[float] = []
    try:
        batches = await _collect(tagger, clock, stamps)
    finally:
        await tagger.close()
    return tagger, batches, stamps


@pytest.mark.parametrize("record_type", [t2.RT_HYDRAHARP2_T2, t2.RT_GENERIC_T2])
async def test_ptu_plays_every_event_mapped_in_tiled_batches(tmp_path, record_type):
    events = _lab_events()
    path = _write_ptu(tmp_path / "lab.ptu", events, record_type=record_type)
    tagger, batches, _ = await _run(
        {"path": str(path), "pacing": "unpaced", "read_chunk_records": 1000},
        SimClock(START, manual=True))
    _check_tiling(batches)
    assert batches[0].info.start_ps == 0
    assert all(b.info.end_ps - b.info.start_ps <= PS // 10 for b in batches)
    np.testing.assert_array_equal(_sorted_pairs(batches), _expected_station_events(events))
    assert batches[0].info.resolution_ps == 1.0
    st = tagger.status
    assert st.finished and not st.truncated and st.format == "ptu"
    assert st.unmapped_events == {"channel 8": 2}  # input 7 = PTU channel 8, unmapped
    assert st.events == events.time.size - 2
    assert "HydraHarp" in tagger.model
    rates = tagger.count_rates_hz()
    assert rates[5] == pytest.approx(10_000, rel=0.02)  # sync
    assert set(rates) >= {1, 2, 3, 4, 5, 6}


async def test_picoharp_ptu_with_4ps_resolution(tmp_path):
    rng = np.random.default_rng(5)
    time = np.sort(rng.integers(0, 10**11, 3000)).astype(np.int64)  # 0.4 s in 4 ps units
    channel = rng.integers(0, 2, 3000)
    events = t2.T2Events(time=time, kind=np.full(3000, t2.PHOTON), channel=channel)
    path = _write_ptu(tmp_path / "ph.ptu", events, record_type=t2.RT_PICOHARP_T2,
                      global_resolution_s=4e-12)
    tagger, batches, _ = await _run(
        {"path": str(path), "pacing": "unpaced", "channel_map": {0: 5, 1: 1}},
        SimClock(START, manual=True))
    _check_tiling(batches)
    got = _sorted_pairs(batches)
    np.testing.assert_array_equal(got[0], np.sort(time * 4))
    assert batches[0].info.resolution_ps == 4.0
    assert tagger.status.unmapped_events == {}


async def test_speed_pacing_releases_each_batch_at_its_end_time(tmp_path):
    events = _lab_events()
    path = _write_ptu(tmp_path / "lab.ptu", events)
    clock = SimClock(START, speed=math.inf)
    t0 = clock.now_s()
    tagger, batches, stamps = await _run(
        {"path": str(path), "pacing": "speed", "speed": 4.0, "batch_duration_s": 0.05}, clock)
    _check_tiling(batches)
    for b, at in zip(batches, stamps, strict=True):
        release = t0 + b.info.end_ps / PS / 4.0
        assert at == pytest.approx(release, abs=1e-9)
        assert b.info.start_time_s == pytest.approx(t0 + b.info.start_ps / PS / 4.0)
    # One recorded second at 4x took a quarter second of clock time.
    assert clock.now_s() - t0 == pytest.approx(batches[-1].info.end_ps / PS / 4.0)


async def test_speed_pacing_holds_batches_until_the_clock_gets_there(tmp_path):
    path = _write_ptu(tmp_path / "lab.ptu", _lab_events())
    clock = SimClock(START, manual=True)
    tagger = ReplayTimeTagger(ReplayOptions(path=path, speed=1.0, batch_duration_s=0.1),
                              clock=clock)
    await tagger.connect()
    t0 = clock.now_s()
    await tagger.start()
    got: list[Batch] = []

    async def consume():
        async for b in tagger.batches():
            got.append(b)

    task = asyncio.create_task(consume())
    try:
        await _until(lambda: clock.pending_sleepers > 0)
        assert got == []  # nothing before its time
        # Absolute targets: the release time is t0 + end, computed the same way.
        await clock.advance_to(t0 + 0.1)
        await _until(lambda: len(got) == 1)
        await clock.advance_to(t0 + 0.15)
        await _until(lambda: clock.pending_sleepers > 0)
        assert len(got) == 1  # the second batch ends at 0.2 s
        await clock.advance_to(t0 + 0.2)
        await _until(lambda: len(got) == 2)
        assert got[1].info.start_ps == PS // 10
    finally:
        await tagger.close()
        await task
    # Paced playback decodes a batch only when its time comes: the third (due at 0.3 s)
    # was never released, so none was waiting in the queue when playback stopped.
    assert tagger.status.batches == 2
    assert tagger.status.discarded_on_stop == 0


async def _until(condition, tries: int = 20_000) -> None:
    """Let the loop run (and the reader thread finish) until ``condition`` holds."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.0005)
    raise AssertionError("condition never held")


async def test_recorded_time_pacing_follows_the_station_clock(tmp_path):
    path = _write_ptu(tmp_path / "lab.ptu", _lab_events())
    rec_start = START.replace(second=59)  # the recording begins 1 s after the clock
    clock = SimClock(START, speed=math.inf)
    _, batches, stamps = await _run(
        {"path": str(path), "pacing": "recorded_time",
         "recording_start_utc": rec_start.isoformat()}, clock)
    for b, at in zip(batches, stamps, strict=True):
        assert at == pytest.approx(rec_start.timestamp() + b.info.end_ps / PS, abs=1e-9)
        assert b.info.start_time_s == pytest.approx(rec_start.timestamp() + b.info.start_ps / PS)


async def test_recorded_time_pacing_needs_a_start_for_ptu(tmp_path):
    path = _write_ptu(tmp_path / "lab.ptu", _lab_events())
    tagger = ReplayTimeTagger(ReplayOptions(path=path, pacing="recorded_time"),
                              clock=SimClock(START, manual=True))
    with pytest.raises(TimeTaggerError, match="recording_start_utc"):
        await tagger.connect()


async def test_truncated_ptu_plays_complete_records_and_says_so(tmp_path):
    events = _lab_events()
    path = tmp_path / "cut.ptu"
    records = t2.write_t2_ptu(path, events, truncate_records=5000)
    tagger, batches, _ = await _run({"path": str(path), "pacing": "unpaced"},
                                    SimClock(START, manual=True))
    _check_tiling(batches)
    st = tagger.status
    assert st.truncated and st.finished
    assert "5000 complete records" in st.stop_reason
    # Every complete record that is not an overflow record was played or counted.
    kept = records[:5000]
    overflow = (kept >> 25) == 0x7F
    assert st.events + sum(st.unmapped_events.values()) == int((~overflow).sum())


async def test_lossy_stop_reason_flags_the_last_batch(tmp_path):
    path = _write_ptu(tmp_path / "fifo.ptu", _lab_events(), stop_reason=-2)  # FIFO overrun
    _, batches, _ = await _run({"path": str(path), "pacing": "unpaced"},
                               SimClock(START, manual=True))
    assert batches[-1].info.overflow_begin and batches[-1].info.lossy
    assert not any(b.info.lossy for b in batches[:-1])


async def test_long_silence_is_covered_by_empty_batches(tmp_path):
    events = t2.T2Events(time=np.array([5, 2 * PS + 5]), kind=np.array([t2.PHOTON] * 2),
                         channel=np.array([0, 1]))
    path = _write_ptu(tmp_path / "gap.ptu", events, single_overflows=True)
    _, batches, _ = await _run({"path": str(path), "pacing": "unpaced",
                                "batch_duration_s": 0.5}, SimClock(START, manual=True))
    _check_tiling(batches)
    assert [len(b) for b in batches] == [1, 0, 0, 0, 1]
    assert batches[-1].info.end_ps == 2 * PS + 6


# -- pass files: written by the event pipeline's own writer ------------------------------
def _pass_batches(n: int = 6, per: int = 500, seed: int = 9) -> list[Batch]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        start, end = i * PS // 10, (i + 1) * PS // 10
        events = np.empty(per, dtype=EVENT_DTYPE)
        events["timestamp_ps"] = np.sort(rng.integers(start, end, per))
        events["channel"] = rng.integers(1, 7, per)
        info = BatchInfo(seq=i, start_ps=start, end_ps=end, resolution_ps=1.0,
                         overflow_begin=i == 2, in_overflow=i == 3, overflow_end=i == 4,
                         missed_events=17 if i == 3 else 0,
                         start_time_s=START.timestamp() + start / PS)
        out.append(Batch(info, events))
    return out


def _write_pass(path: Path, batches: list[Batch], *, close: bool = True,
                skip_seq: int | None = None, compression: str | None = "lz4") -> list[int]:
    """Write with station.events.passfile.PassFileWriter; byte offset after each batch."""
    header = passfile.PassHeader(pass_id="41731-20161219T164958Z", station_id="xinglong-sim",
                                 tagger_model="SimTagger", tagger_resolution_ps=1.0)
    writer = passfile.PassFileWriter(path, header.schema_metadata(), compression=compression)
    offsets = []
    stream_seq = 0
    for b in batches:
        if b.info.seq == skip_seq:
            continue
        ts, ch = passfile.columns_of(b.events)
        offset, length = writer.write(ts, ch, passfile.batch_metadata(b.info, stream_seq))
        stream_seq += 1
        offsets.append(offset + length)
    if close:
        writer.close()
    else:
        os.close(writer.fd)  # as a crash leaves it: no end-of-stream marker
        writer.fd = -1
    return offsets


@pytest.mark.parametrize("compression", ["lz4", "zstd", None])
async def test_pass_file_batches_are_re_emitted_with_their_metadata(tmp_path, compression):
    src = _pass_batches()
    path = tmp_path / "pass.arrows"
    _write_pass(path, src, compression=compression)
    tagger, batches, _ = await _run({"path": str(path), "pacing": "unpaced"},
                                    SimClock(START, manual=True))
    assert len(batches) == len(src)
    _check_tiling(batches)
    for b, orig in zip(batches, src, strict=True):
        np.testing.assert_array_equal(b.events, orig.events)
        assert b.info == orig.info  # seq, span, resolution, flags, missed, start time
    assert tagger.status.format == "passfile" and not tagger.status.truncated
    assert tagger.status.stop_reason is None
    assert tagger.model == "replay of SimTagger"


async def test_pass_file_recorded_time_uses_each_batch_date(tmp_path):
    path = tmp_path / "pass.arrows"
    _write_pass(path, _pass_batches(n=3))
    clock = SimClock(START.replace(second=50), speed=math.inf)
    _, batches, stamps = await _run({"path": str(path), "pacing": "recorded_time"}, clock)
    # Float seconds near 1.5e9 resolve ~0.2 µs: compare to a microsecond.
    assert stamps == pytest.approx([START.timestamp() + b.info.end_ps / PS for b in batches],
                                   abs=1e-6)


async def test_sim_tagger_recorded_by_the_pipeline_writer_replays_identically(tmp_path):
    sim_mod = pytest.importorskip("drivers.timetagger.sim")
    clock = SimClock(START, speed=math.inf)
    sim = registry.create("timetagger", "sim", {}, clock=clock)
    await sim.connect()
    await sim.configure([ChannelConfig(channel=c) for c in range(1, 7)])
    await sim.start()
    recorded: list[Batch] = []
    async for b in sim.batches():
        recorded.append(b)
        if b.info.end_ps - recorded[0].info.start_ps >= 2 * PS:
            break
    await sim.stop()
    await sim.close()
    assert sim_mod is not None and sum(len(b) for b in recorded) > 0
    path = tmp_path / "sim.arrows"
    _write_pass(path, recorded)
    _, played, _ = await _run({"path": str(path), "pacing": "unpaced"},
                              SimClock(START, manual=True))
    assert len(played) == len(recorded)
    for p, r in zip(played, recorded, strict=True):
        np.testing.assert_array_equal(p.events, r.events)
        assert (p.info.start_ps, p.info.end_ps, p.info.lossy) == (r.info.start_ps,
                                                                  r.info.end_ps, r.info.lossy)


@pytest.mark.parametrize("cut", ["mid_batch", "mid_header", "no_eos"])
async def test_pass_file_cut_mid_write_plays_every_complete_batch(tmp_path, cut):
    src = _pass_batches()
    path = tmp_path / "cut.arrows"
    offsets = _write_pass(path, src, close=False)
    data = path.read_bytes()
    keep = {"mid_batch": offsets[3] + 300, "mid_header": offsets[3] + 5,
            "no_eos": offsets[5]}[cut]
    path.write_bytes(data[:keep])
    tagger, batches, _ = await _run({"path": str(path), "pacing": "unpaced"},
                                    SimClock(START, manual=True))
    complete = 6 if cut == "no_eos" else 4
    assert len(batches) == complete
    for b, orig in zip(batches, src, strict=False):
        np.testing.assert_array_equal(b.events, orig.events)
    st = tagger.status
    assert st.truncated and st.finished
    assert st.last_good_offset_bytes == offsets[complete - 1]
    assert str(offsets[complete - 1]) in st.stop_reason
    # The event pipeline's own reader agrees on where the good data ends.
    _, theirs, stop = passfile.read_pass_file(path)
    assert len(theirs) == complete and stop.last_good_offset_bytes == st.last_good_offset_bytes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cut_fraction=st.floats(0.0, 1.0))
async def test_pass_file_cut_at_any_byte_plays_what_the_pipeline_reader_reads(tmp_path,
                                                                              cut_fraction):
    path = tmp_path / "any.arrows"
    _write_pass(path, _pass_batches(n=4, per=50), close=False)
    data = path.read_bytes()
    cut = int(len(data) * cut_fraction)
    path.write_bytes(data[:cut])
    _, theirs, stop = passfile.read_pass_file(path)
    tagger = ReplayTimeTagger(ReplayOptions(path=path, pacing="unpaced"),
                              clock=SimClock(START, manual=True))
    if stop.last_good_offset_bytes == 0:  # not even a whole header: refused clearly
        with pytest.raises(TimeTaggerError, match="pass file"):
            await tagger.connect()
        return
    await tagger.connect()
    await tagger.start()
    played = [b async for b in tagger.batches()]
    await tagger.close()
    assert len(played) == len(theirs)
    for p, t in zip(played, theirs, strict=True):
        np.testing.assert_array_equal(p.events, t.events)
    assert tagger.status.truncated


async def test_pass_file_gap_in_recorded_sequence_is_reported(tmp_path):
    path = tmp_path / "gap.arrows"
    _write_pass(path, _pass_batches(), skip_seq=3)
    tagger, batches, _ = await _run({"path": str(path), "pacing": "unpaced"},
                                    SimClock(START, manual=True))
    assert len(batches) == 5
    assert [b.info.seq for b in batches] == [0, 1, 2, 3, 4]  # ours are contiguous
    assert tagger.status.recorded_seq_gaps == 1


async def test_stop_ends_the_stream_and_counts_what_was_not_delivered(tmp_path):
    path = _write_ptu(tmp_path / "lab.ptu", _lab_events())
    clock = SimClock(START, manual=True)
    tagger = ReplayTimeTagger(ReplayOptions(path=path, pacing="unpaced",
                                            read_ahead_batches=2), clock=clock)
    await tagger.connect()
    await tagger.start()
    first = None
    async for b in tagger.batches():
        first = b
        break
    await _until(lambda: tagger._queue is not None and tagger._queue.full())
    await tagger.stop()
    rest = [b async for b in tagger.batches()]
    assert first is not None and first.info.seq == 0
    assert rest == []
    assert tagger.status.discarded_on_stop == 2
    assert not tagger.status.finished
    await tagger.close()


async def test_bad_files_and_options_are_refused_clearly(tmp_path):
    clock = SimClock(START, manual=True)
    missing = ReplayTimeTagger(ReplayOptions(path=tmp_path / "none.ptu"), clock=clock)
    with pytest.raises(TimeTaggerError, match="does not exist"):
        await missing.connect()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(TimeTaggerError, match="neither a PicoQuant PTU file nor an Arrow"):
        await ReplayTimeTagger(ReplayOptions(path=junk), clock=clock).connect()
    nocol = tmp_path / "nocol.arrows"
    schema = pa.schema([("t", pa.int64())])
    with pa.OSFile(str(nocol), "wb") as sink, ipc.new_stream(sink, schema) as w:
        w.write_batch(pa.record_batch([pa.array([1, 2])], schema=schema))
    with pytest.raises(TimeTaggerError, match="no 'timestamp_ps' column"):
        await ReplayTimeTagger(ReplayOptions(path=nocol), clock=clock).connect()
    with pytest.raises(ValidationError, match="speed"):
        registry.validate_options("timetagger", "replay", {"path": "x", "speed": 0})
    with pytest.raises(ValidationError, match="outside 0..255"):
        registry.validate_options("timetagger", "replay",
                                  {"path": "x", "channel_map": {0: 300}})
    with pytest.raises(ValidationError, match="extra"):
        registry.validate_options("timetagger", "replay", {"path": "x", "sped": 2})


def test_every_replay_option_is_described():
    for name, f in ReplayOptions.model_fields.items():
        assert f.description and len(f.description) > 15, name


async def test_start_again_replays_from_the_beginning(tmp_path):
    path = _write_ptu(tmp_path / "lab.ptu", _lab_events())
    tagger = ReplayTimeTagger(ReplayOptions(path=path, pacing="unpaced"),
                              clock=SimClock(START, manual=True))
    await tagger.connect()
    runs = []
    for _ in range(2):
        await tagger.start()
        runs.append([b async for b in tagger.batches()])
        assert tagger.status.finished
    await tagger.close()
    assert len(runs[0]) == len(runs[1]) > 0
    assert runs[1][0].info.seq == 0
    np.testing.assert_array_equal(_sorted_pairs(runs[0]), _sorted_pairs(runs[1]))
