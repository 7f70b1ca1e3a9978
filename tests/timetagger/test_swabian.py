"""The ``swabian`` backend without hardware.

1. Every vendor name and signature the driver calls exists in the installed
   ``Swabian.TimeTagger`` module: checked by introspection, and by running the driver
   against ``create_autospec`` copies of the vendor's own classes, which reject any call
   whose name or arguments the real classes do not have.
2. The mapping of ``TimeTagStreamBuffer``-shaped data onto our batches, with a plain
   object that has the buffer's method names (no real peer exists here).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import types
from unittest import mock

import numpy as np
import pytest
from pydantic import ValidationError

from drivers import registry
from drivers.timetagger.base import ChannelConfig, TimeTaggerError
from drivers.timetagger.swabian import (
    TAG_ERROR,
    TAG_MISSED_EVENTS,
    TAG_OVERFLOW_BEGIN,
    TAG_OVERFLOW_END,
    TAG_TIMETAG,
    StreamMapper,
    SwabianOptions,
    SwabianTimeTagger,
)
from station.clock import SimClock

vendor = pytest.importorskip("Swabian.TimeTagger")


def _params(func) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


def _doc_params(func) -> set[str]:
    return set(re.findall(r":param (\w+):", func.__doc__ or ""))


# -- 1. names and signatures ------------------------------------------------------------
def test_every_vendor_name_used_exists_with_the_signature_we_call():
    assert callable(vendor.createTimeTagger)
    assert {"serial", "resolution"} <= _doc_params(vendor.createTimeTagger)
    assert _params(vendor.freeTimeTagger) == ["tagger"]
    assert callable(vendor.getVersion)
    for mode in ("Standard", "HighResA", "HighResB", "HighResC"):
        assert hasattr(vendor.Resolution, mode)
    tt = vendor.TimeTagger
    assert _params(tt.setTriggerLevel) == ["channel", "voltage"]
    assert _params(tt.setInputDelay) == ["channel", "delay"]
    assert _params(tt.setDeadtime) == ["channel", "deadtime"]
    assert _params(tt.setHardwareBufferSize) == ["size"]
    assert _params(tt.setSoftwareClock) == ["input_channel", "input_frequency",
                                            "averaging_periods", "wait_until_locked"]
    assert {"clock_channel", "clock_frequency", "time_constant", "synchronization_channel",
            "synchronization_offset", "wait_until_locked"} <= _doc_params(tt.setReferenceClock)
    assert _params(tt.getModel) == [] and _params(tt.getSerial) == []
    assert _params(vendor.TimeTagStream.__init__) == ["tagger", "n_max_events", "channels"]
    assert _params(vendor.TimeTagStream.getData) == []
    assert _params(vendor.TimeTagStream.stop) == []
    buf = vendor.TimeTagStreamBuffer
    for name in ("getTimestamps", "getChannels", "getEventTypes", "getMissedEvents"):
        assert _params(getattr(buf, name)) == []
    for prop in ("size", "tStart", "tGetData"):
        assert isinstance(inspect.getattr_static(buf, prop), property)
    # Our event-type constants are the vendor's.
    assert [int(vendor.TagType.TimeTag), int(vendor.TagType.Error),
            int(vendor.TagType.OverflowBegin), int(vendor.TagType.OverflowEnd),
            int(vendor.TagType.MissedEvents)] == [TAG_TIMETAG, TAG_ERROR, TAG_OVERFLOW_BEGIN,
                                                   TAG_OVERFLOW_END, TAG_MISSED_EVENTS]


def _autospec_vendor(buffers: list[dict]) -> types.SimpleNamespace:
    """The vendor module's functions and classes as autospecs of the installed ones."""
    tagger = mock.create_autospec(vendor.TimeTagger, instance=True)
    tagger.getModel.return_value = "TimeTaggerUltra"
    tagger.getSerial.return_value = "1234ABC"
    tagger.setDeadtime.side_effect = lambda channel, deadtime: deadtime + 100
    stream_cls = mock.create_autospec(vendor.TimeTagStream)
    stream = stream_cls.return_value
    queue = list(buffers)

    def get_data():
        buf = mock.create_autospec(vendor.TimeTagStreamBuffer, instance=True)
        spec = queue.pop(0) if queue else {"ts": [], "ch": [], "ty": [], "mi": [],
                                             "t0": 0, "t1": 0}
        buf.getTimestamps.return_value = np.asarray(spec["ts"], np.int64)
        buf.getChannels.return_value = np.asarray(spec["ch"], np.int32)
        buf.getEventTypes.return_value = np.asarray(spec["ty"], np.uint8)
        buf.getMissedEvents.return_value = np.asarray(spec["mi"], np.uint16)
        buf.size = len(spec["ts"])
        buf.tStart = spec["t0"]
        buf.tGetData = spec["t1"]
        return buf

    stream.getData.side_effect = get_data
    create = mock.create_autospec(vendor.createTimeTagger, return_value=tagger)
    return types.SimpleNamespace(
        createTimeTagger=create,
        freeTimeTagger=mock.create_autospec(vendor.freeTimeTagger),
        getVersion=vendor.getVersion,
        Resolution=vendor.Resolution,
        TimeTagStream=stream_cls,
        tagger=tagger,
        stream=stream,
    )


async def test_driver_calls_match_the_installed_vendor_module():
    fake = _autospec_vendor([
        {"ts": [100, 200, 300], "ch": [1, 2, -3], "ty": [0, 0, 0], "mi": [0, 0, 0],
         "t0": 0, "t1": 1000},
    ])
    options = SwabianOptions(
        serial="1234ABC", resolution="HighResA",
        channel_map={1: 1, 2: 2, -3: 3, 4: 4, 5: 5, 6: 6},
        stream_buffer_events=10_000, max_rate_hz=1e9,  # polls every 2.5 µs of wall time
        hardware_buffer_size_events=1 << 20,
        reference_clock={"clock_channel": 7, "pps_channel": 8, "pps_offset_ps": 5},
    )
    tagger = SwabianTimeTagger(options, clock=SimClock(0.0, manual=True), vendor=fake)
    await tagger.connect()
    assert tagger.model == "Swabian TimeTaggerUltra 1234ABC"
    fake.createTimeTagger.assert_called_once_with("1234ABC", vendor.Resolution.HighResA)
    fake.tagger.setHardwareBufferSize.assert_called_once_with(1 << 20)
    ref_call = fake.tagger.setReferenceClock.call_args
    assert set(ref_call.kwargs) <= _doc_params(vendor.TimeTagger.setReferenceClock)
    assert ref_call.kwargs == {"clock_channel": 7, "clock_frequency": 10e6,
                               "time_constant": 1e-3, "synchronization_channel": 8,
                               "synchronization_offset": 5, "wait_until_locked": True}

    await tagger.configure([ChannelConfig(channel=1, trigger_level_v=0.3, delay_ps=150,
                                          dead_time_ps=20_000),
                            ChannelConfig(channel=3, trigger_level_v=-0.2)])
    fake.tagger.setTriggerLevel.assert_has_calls([mock.call(1, 0.3), mock.call(3, -0.2)])
    fake.tagger.setInputDelay.assert_has_calls([mock.call(1, 150), mock.call(-3, 0)])
    fake.tagger.setDeadtime.assert_called_once_with(1, 20_000)

    await tagger.start()
    fake.TimeTagStream.assert_called_once_with(fake.tagger, 10_000, [-3, 1, 2, 4, 5, 6])
    got = []
    async for batch in tagger.batches():
        got.append(batch)
        if len(got) == 3:
            await tagger.stop()
    assert got[0].events["channel"].tolist() == [1, 2, 3]
    assert got[0].events["timestamp_ps"].tolist() == [100, 200, 300]
    fake.stream.stop.assert_called_once_with()
    await tagger.close()
    fake.freeTimeTagger.assert_called_once_with(fake.tagger)


async def test_software_clock_option_uses_set_software_clock():
    fake = _autospec_vendor([])
    options = SwabianOptions(reference_clock={"method": "software_clock", "clock_channel": 7})
    tagger = SwabianTimeTagger(options, clock=SimClock(0.0, manual=True), vendor=fake)
    await tagger.connect()
    fake.tagger.setSoftwareClock.assert_called_once_with(7, 10e6, 1000, True)
    fake.tagger.setReferenceClock.assert_not_called()
    await tagger.close()


async def test_missing_vendor_module_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "Swabian.TimeTagger", None)  # import now fails
    tagger = SwabianTimeTagger(SwabianOptions(), clock=SimClock(0.0, manual=True))
    with pytest.raises(TimeTaggerError, match=r"pip install 'qkd-station\[swabian\]'"):
        await tagger.connect()


# -- 2. buffer mapping ------------------------------------------------------------------
class Buffer:
    """Plain object with TimeTagStreamBuffer's method and property names."""

    def __init__(self, ts, ch, ty=None, missed=None, t_start=0, t_get=None, size=None):
        n = len(ts)
        self._ts = np.asarray(ts, np.int64)
        self._ch = np.asarray(ch, np.int32)
        self._ty = np.asarray(ty if ty is not None else [0] * n, np.uint8)
        self._mi = np.asarray(missed if missed is not None else [0] * n, np.uint16)
        self.size = n if size is None else size
        self.tStart = t_start
        self.tGetData = t_get if t_get is not None else (int(self._ts[-1]) + 1 if n else 0)
        self.hasOverflows = bool(np.any(self._ty != 0))

    def getTimestamps(self):
        return self._ts

    def getChannels(self):
        return self._ch

    def getEventTypes(self):
        return self._ty

    def getMissedEvents(self):
        return self._mi


def _mapper(**kw) -> StreamMapper:
    return StreamMapper({1: 1, 2: 2, -2: 7, 5: 5}, resolution_ps=1.0,
                        buffer_events=kw.pop("buffer_events", 1000), **kw)


def test_tags_map_to_station_channels_and_batches_tile():
    m = _mapper()
    b1 = m.map(Buffer([10, 20, 30, 40], [1, -2, 5, 9], t_start=5, t_get=100))
    b2 = m.map(Buffer([150], [2], t_get=200))
    assert b1.events["channel"].tolist() == [1, 7, 5]
    assert b1.events["timestamp_ps"].tolist() == [10, 20, 30]
    assert (b1.info.seq, b1.info.start_ps, b1.info.end_ps) == (0, 5, 100)
    assert (b2.info.seq, b2.info.start_ps, b2.info.end_ps) == (1, 100, 200)
    assert not b1.info.lossy and not b2.info.lossy
    assert m.status.unmapped_events == {9: 1}


def test_overflow_begin_in_between_and_end_with_missed_events():
    m = _mapper()
    T, B, E, M = TAG_TIMETAG, TAG_OVERFLOW_BEGIN, TAG_OVERFLOW_END, TAG_MISSED_EVENTS
    b1 = m.map(Buffer([10, 20, 30], [1, 1, 2], [T, B, M], [0, 0, 40], t_get=100))
    b2 = m.map(Buffer([110, 120], [1, 2], [M, M], [1000, 65535], t_get=200))
    b3 = m.map(Buffer([210, 220, 230], [2, 1, 1], [M, E, T], [5, 0, 0], t_get=300))
    b4 = m.map(Buffer([310], [1], t_get=400))
    assert (b1.info.overflow_begin, b1.info.in_overflow, b1.info.overflow_end) == (True, False, False)
    assert b1.info.missed_events == 40
    assert (b2.info.overflow_begin, b2.info.in_overflow, b2.info.overflow_end) == (False, True, False)
    assert b2.info.missed_events == 66535 and len(b2) == 0  # only virtual events
    assert (b3.info.overflow_begin, b3.info.in_overflow, b3.info.overflow_end) == (False, False, True)
    assert b3.info.missed_events == 5 and b3.events["timestamp_ps"].tolist() == [230]
    assert not b4.info.lossy
    assert m.status.missed_events == 40 + 66535 + 5
    assert (m.status.overflow_begins, m.status.overflow_ends) == (1, 1)
    # The overflow markers and missed-event tags are not detections.
    assert b1.events["timestamp_ps"].tolist() == [10]


def test_error_event_marks_the_batch_lossy():
    m = _mapper()
    b = m.map(Buffer([10, 20], [1, 0], [TAG_TIMETAG, TAG_ERROR], t_get=50))
    assert b.info.overflow_begin and b.info.overflow_end and b.info.lossy
    assert m.status.error_events == 1
    assert b.events["timestamp_ps"].tolist() == [10]


def test_full_stream_buffer_is_reported_not_hidden():
    m = _mapper(buffer_events=3)
    b = m.map(Buffer([1, 2, 3], [1, 1, 1], t_get=10))
    assert b.info.lossy
    assert m.status.stream_buffer_full == 1


def test_empty_buffer_still_covers_its_interval():
    m = _mapper()
    m.map(Buffer([5], [1], t_get=100))
    b = m.map(Buffer([], [], t_get=250))
    assert (b.info.start_ps, b.info.end_ps, len(b)) == (100, 250, 0)


def test_batch_start_time_estimated_from_the_clock():
    m = _mapper()
    b = m.map(Buffer([5], [1], t_start=0, t_get=500_000_000_000), now_s=1000.0)
    assert b.info.start_time_s == pytest.approx(999.5)


# -- options ----------------------------------------------------------------------------
def test_poll_interval_cannot_overflow_the_stream_buffer():
    o = SwabianOptions(stream_buffer_events=16_000_000, max_rate_hz=80e6,
                       poll_fill_fraction=0.25)
    assert o.poll_interval_s == pytest.approx(0.05)
    assert o.poll_interval_s * o.max_rate_hz <= o.poll_fill_fraction * o.stream_buffer_events
    slow = SwabianOptions(max_rate_hz=1e6)
    assert slow.poll_interval_s == slow.max_poll_interval_s


def test_bad_options_are_refused_with_reasons():
    with pytest.raises(ValidationError, match="same station channel"):
        registry.validate_options("timetagger", "swabian", {"channel_map": {1: 1, 2: 1}})
    with pytest.raises(ValidationError, match="not a channel number"):
        registry.validate_options("timetagger", "swabian", {"channel_map": {0: 1}})
    with pytest.raises(ValidationError, match="needs method = 'reference_clock'"):
        registry.validate_options("timetagger", "swabian", {"reference_clock": {
            "method": "software_clock", "clock_channel": 7, "pps_channel": 8}})
    ok = registry.validate_options("timetagger", "swabian", {"serial": "X"})
    assert isinstance(ok, SwabianOptions)


async def test_unmapped_station_channel_in_configure_is_refused():
    fake = _autospec_vendor([])
    tagger = SwabianTimeTagger(SwabianOptions(), clock=SimClock(0.0, manual=True),
                               vendor=fake)
    await tagger.connect()
    with pytest.raises(TimeTaggerError, match="station channel 9 has no tagger input"):
        await tagger.configure([ChannelConfig(channel=9)])
    await tagger.close()
    await asyncio.sleep(0)


def test_every_swabian_option_is_described():
    from drivers.timetagger.swabian import SwabianReferenceClock

    for model in (SwabianOptions, SwabianReferenceClock):
        for name, f in model.model_fields.items():
            assert f.description and len(f.description) > 15, (model.__name__, name)
