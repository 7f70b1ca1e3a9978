"""PicoQuant T2 decoding, checked against ptufile's own decoder on files written from the
published record layouts (tests/timetagger/ptu_t2.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import ptufile
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.timetagger.ptu import PtuError, decode_t2, read_header, read_records, t2_format


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
HH_WRAP = t2.WRAP_HH_V2


def _sample_events(record_type: int, rng: np.random.Generator, n: int = 2000) -> object:
    if record_type == t2.RT_PICOHARP_T2:
        kinds = rng.choice([t2.PHOTON, t2.MARKER], size=n, p=[0.95, 0.05])
        channel = np.where(kinds == t2.MARKER, rng.integers(1, 16, n), rng.integers(0, 2, n))
        wrap = t2.WRAP_PH
    else:
        kinds = rng.choice([t2.PHOTON, t2.SYNC, t2.MARKER], size=n, p=[0.8, 0.15, 0.05])
        channel = np.where(kinds == t2.MARKER, rng.integers(1, 16, n), rng.integers(0, 8, n))
        wrap = t2.WRAP_HH_V1 if record_type == t2.RT_HYDRAHARP_T2 else HH_WRAP
    # Gaps from tiny to several wraps, so overflow records of every count appear.
    gaps = rng.choice([1, 1000, wrap // 3, wrap * 3 + 17], size=n, p=[0.3, 0.4, 0.2, 0.1])
    time = np.cumsum(gaps).astype(np.int64)
    if record_type == t2.RT_PICOHARP_T2:
        time = np.where(kinds == t2.MARKER, (time & ~0xF) | channel, time)
    return t2.T2Events(time=time, kind=kinds, channel=channel)


ALL_TYPES = [t2.RT_HYDRAHARP2_T2, t2.RT_HYDRAHARP_T2, t2.RT_GENERIC_T2, t2.RT_PICOHARP_T2]


@pytest.mark.parametrize("record_type", ALL_TYPES)
@pytest.mark.parametrize("single_overflows", [False, True])
def test_written_files_decode_in_ptufile_and_ours_identically(tmp_path, record_type,
                                                              single_overflows):
    events = _sample_events(record_type, np.random.default_rng(record_type))
    path = tmp_path / "t2.ptu"
    t2.write_t2_ptu(path, events, record_type=record_type, single_overflows=single_overflows)
    t2.check_with_ptufile(path, events)  # the file is what PicoQuant's format says

    header = read_header(path)
    assert header.format.record_type == record_type
    assert not header.truncated
    chunk = decode_t2(read_records(header, 0, header.records_to_read), header.format)
    order = np.argsort(events.time, kind="stable")
    kind, time, channel = events.kind[order], events.time[order], events.channel[order]
    np.testing.assert_array_equal(chunk.time, time)
    np.testing.assert_array_equal(chunk.is_marker, kind == t2.MARKER)
    if record_type == t2.RT_PICOHARP_T2:
        want_channel = channel
    else:
        # Ours tell sync (0) from input i (i + 1); ptufile reports both as 0.
        want_channel = np.where(kind == t2.SYNC, 0, np.where(kind == t2.PHOTON, channel + 1,
                                                             channel))
    np.testing.assert_array_equal(chunk.channel, want_channel)
    assert chunk.unknown_records == 0

    # Photons and markers agree with ptufile's decoder record for record.
    with ptufile.PtuFile(path) as ptu:
        theirs = ptu.decode_records()
    theirs_photons = theirs[theirs["channel"] >= 0]
    np.testing.assert_array_equal(theirs_photons["time"], chunk.time[~chunk.is_marker])
    theirs_markers = theirs[(theirs["channel"] < 0) & (theirs["marker"] > 0)]
    np.testing.assert_array_equal(theirs_markers["time"], chunk.time[chunk.is_marker])


def test_sync_is_told_apart_from_input_zero(tmp_path):
    events = t2.T2Events(time=np.array([10, 20, 30]),
                         kind=np.array([t2.SYNC, t2.PHOTON, t2.PHOTON]),
                         channel=np.array([0, 0, 1]))
    path = tmp_path / "sync.ptu"
    t2.write_t2_ptu(path, events)
    t2.check_with_ptufile(path, events)
    header = read_header(path)
    chunk = decode_t2(read_records(header, 0, 10), header.format)
    assert chunk.channel.tolist() == [0, 1, 2]


@pytest.mark.parametrize(("gap_s", "overflow_records"), [(600, 1), (1_800, 2)])
def test_many_wraps_in_one_overflow_record(tmp_path, gap_s, overflow_records):
    # 10 minutes of silence at 1 ps is ~17.9 M wraps: one record (25-bit count);
    # 30 minutes (~53.6 M) needs two. Expected times follow PicoQuant's Read_PTU.py:
    # oflcorrection += 33554432 * timetag.
    gap = gap_s * 10**12
    events = t2.T2Events(time=np.array([5, gap + 5]), kind=np.array([t2.PHOTON, t2.PHOTON]),
                         channel=np.array([0, 0]))
    path = tmp_path / "gap.ptu"
    records = t2.write_t2_ptu(path, events)
    assert len(records) == 2 + overflow_records
    header = read_header(path)
    chunk = decode_t2(read_records(header, 0, 10), header.format)
    assert chunk.time.tolist() == [5, gap + 5]
    assert chunk.overflow_records == overflow_records


@pytest.mark.parametrize("wraps", [1, 127, 128, 1000])
def test_counted_overflow_against_ptufile(tmp_path, wraps):
    """ptufile 2026.2.6 multiplies an overflow record's count by the wrap in 32 bits, so
    a record of >= 128 wraps (a silence of >= 4.3 ms at 1 ps) decodes wrong there; ours
    does not. This checks the writer against ptufile where ptufile is right, and pins
    down where it is not."""
    t = wraps * HH_WRAP + 7
    events = t2.T2Events(time=np.array([3, t]), kind=np.array([t2.PHOTON, t2.PHOTON]),
                         channel=np.array([1, 2]))
    path = tmp_path / "wraps.ptu"
    t2.write_t2_ptu(path, events)
    header = read_header(path)
    assert decode_t2(read_records(header, 0, 10), header.format).time.tolist() == [3, t]
    with ptufile.PtuFile(path) as ptu:
        theirs = ptu.decode_records()
    photon_times = theirs[theirs["channel"] >= 0]["time"].astype(np.int64).tolist()
    if wraps * HH_WRAP < 2**32:
        t2.check_with_ptufile(path, events)
    else:
        assert photon_times == [3, t % 2**32], "ptufile fixed its 32-bit overflow product?"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 600), max_size=5),
       record_type=st.sampled_from(ALL_TYPES))
def test_decoding_in_chunks_equals_decoding_at_once(seed, cuts, record_type):
    events = _sample_events(record_type, np.random.default_rng(seed), n=600)
    fmt = t2_format(record_type)
    records = t2.encode_records(events, record_type)
    whole = decode_t2(records, fmt)
    bounds = sorted({0, len(records), *[min(c, len(records)) for c in cuts]})
    base = 0
    times, channels, markers = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = decode_t2(records[a:b], fmt, overflow_base=base)
        base = part.overflow_base
        times.append(part.time)
        channels.append(part.channel)
        markers.append(part.is_marker)
    np.testing.assert_array_equal(np.concatenate(times), whole.time)
    np.testing.assert_array_equal(np.concatenate(channels), whole.channel)
    np.testing.assert_array_equal(np.concatenate(markers), whole.is_marker)


def test_truncated_file_is_detected(tmp_path):
    events = _sample_events(t2.RT_HYDRAHARP2_T2, np.random.default_rng(1), n=100)
    path = tmp_path / "cut.ptu"
    records = t2.write_t2_ptu(path, events, truncate_records=40)
    # And half a record more, as a writer killed mid-record leaves it.
    with open(path, "ab") as fh:
        fh.write(b"\x01\x02")
    header = read_header(path)
    assert header.truncated
    assert header.announced_records == len(records)
    assert header.available_records == 40
    assert header.trailing_bytes == 2
    assert len(read_records(header, 0, 10_000)) == 40


def test_t3_file_is_rejected_with_reason(tmp_path):
    path = tmp_path / "image.ptu"
    # ptufile writes T3 image files only: a real T3 file to refuse.
    ptufile.imwrite(path, np.ones((1, 4, 4, 1, 8), dtype=np.uint8),
                    global_resolution=1e-8, tcspc_resolution=1e-10, pixel_time=1e-6)
    with pytest.raises(PtuError, match="not T2"):
        read_header(path)


def test_not_a_ptu_file(tmp_path):
    path = tmp_path / "junk.ptu"
    path.write_bytes(b"hello world, not a PTU file at all")
    with pytest.raises(PtuError, match="not a readable PicoQuant PTU file"):
        read_header(path)


def test_unknown_record_type_names_supported_ones():
    with pytest.raises(PtuError, match="HydraHarp V2 T2"):
        t2_format(0x00010303)
