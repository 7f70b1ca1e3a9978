"""``swabian`` time tagger: Swabian Instruments Time Tagger 20 / Ultra / X.

UNTESTED ON HARDWARE. Written against the vendor's Python module (PyPI
``swabian-timetagger``, import ``Swabian.TimeTagger``, version 2.22 when written); the tests
check that every vendor name and signature used here exists in the installed module, and
the mapping of a ``TimeTagStreamBuffer`` onto our batches. See docs/timetaggers.md.

The vendor module is imported lazily in :meth:`SwabianTimeTagger.connect`, so the station
runs without it when another backend is configured (optional extra ``swabian``).

Streaming: a ``TimeTagStream`` collects tags of the mapped channels into a buffer of
``stream_buffer_events``; ``getData()`` hands the buffer over and starts a new one. It is
polled every ``poll_interval_s`` = ``poll_fill_fraction`` x ``stream_buffer_events`` /
``max_rate_hz`` (wall seconds): even at the tagger's highest aggregate rate the buffer is
at most that fraction full when it is read. A buffer that comes back full anyway (tags were
discarded) is reported as a lossy batch, as are the tagger's own overflow events.

Event types (``Swabian.TimeTagger.TagType``) map onto :class:`BatchInfo`:

====  ==============  ==========================================================
type  vendor name     our batch
====  ==============  ==========================================================
0     TimeTag         an event (if its channel is mapped)
1     Error           ``overflow_begin`` and ``overflow_end`` (time base invalid
                      around it), counted in ``status.error_events``
2     OverflowBegin   ``overflow_begin``; later batches ``in_overflow`` until 3
3     OverflowEnd     ``overflow_end``
4     MissedEvents    its missed-event count added to ``missed_events``
====  ==============  ==========================================================
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.clock import Clock
from drivers.timetagger.base import (
    EVENT_DTYPE,
    Batch,
    BatchInfo,
    ChannelConfig,
    TimeTagger,
    TimeTaggerConnectionLost,
    TimeTaggerError,
    TimeTaggerNotConnected,
)
from drivers.timetagger.rates import RateMeter

log = logging.getLogger(__name__)

_PS_PER_S = 1_000_000_000_000

TAG_TIMETAG, TAG_ERROR, TAG_OVERFLOW_BEGIN, TAG_OVERFLOW_END, TAG_MISSED_EVENTS = 0, 1, 2, 3, 4


class SwabianReferenceClock(BaseModel):
    """Lock the tagger's time base to an external 10 MHz (and optionally a PPS)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    method: Literal["reference_clock", "software_clock"] = Field(
        "reference_clock",
        description="'reference_clock' = setReferenceClock (10 MHz, plus PPS alignment when "
        "pps_channel is set); 'software_clock' = setSoftwareClock (10 MHz only, older API).",
    )
    clock_channel: int = Field(
        description="Tagger input (1-based, negative = falling edge) carrying the 10 MHz.",
    )
    clock_frequency_hz: float = Field(
        10e6, gt=0, description="Frequency of the reference clock at that input, Hz.",
    )
    pps_channel: int | None = Field(
        None,
        description="Tagger input carrying the PPS that marks the UTC second "
        "(reference_clock only; the vendor calls it synchronization_channel).",
    )
    time_constant_s: float = Field(
        1e-3, gt=0, description="reference_clock: PLL averaging time, seconds.",
    )
    averaging_periods: float = Field(
        1000, gt=0, description="software_clock: PLL averaging, in clock periods.",
    )
    pps_offset_ps: int = Field(
        0, description="reference_clock: offset of the PPS from the PC's UTC second, ps "
        "(vendor synchronization_offset).",
    )
    wait_until_locked: bool = Field(
        True, description="Block connect() until the PLL locks (error if it cannot).",
    )

    @model_validator(mode="after")
    def _check(self) -> SwabianReferenceClock:
        if self.method == "software_clock" and self.pps_channel is not None:
            raise ValueError("pps_channel needs method = 'reference_clock'; setSoftwareClock "
                             "has no PPS input")
        return self


class SwabianOptions(BaseModel):
    """Options of the ``swabian`` time tagger backend."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    serial: str = Field(
        "", description="Serial number of the tagger to open; empty = the first one found.",
    )
    resolution: Literal["Standard", "HighResA", "HighResB", "HighResC"] = Field(
        "Standard",
        description="Vendor resolution mode (HighRes modes combine inputs; Ultra/X only).",
    )
    channel_map: dict[int, int] = Field(
        default_factory=lambda: {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6},
        description="Tagger input (1-based; negative = falling edge) -> station channel "
        "(1 H, 2 V, 3 D, 4 A, 5 SYNC, 6 PPS). Only mapped inputs are streamed.",
    )
    stream_buffer_events: int = Field(
        16_000_000, ge=10_000, le=1_000_000_000,
        description="TimeTagStream buffer size, events (about 16 bytes each in the PC).",
    )
    max_rate_hz: float = Field(
        80e6, gt=0, le=1e9,
        description="Highest aggregate tag rate the tagger can deliver, events/s (Ultra on "
        "USB 3 about 80 M/s; Time Tagger X up to ~300 M/s on 10 GbE). Sets the poll "
        "interval.",
    )
    poll_fill_fraction: float = Field(
        0.25, gt=0, le=0.9,
        description="Poll when the stream buffer could at most be this full at max_rate_hz.",
    )
    max_poll_interval_s: float = Field(
        0.2, gt=0, le=10,
        description="Poll at least this often even when the buffer allows longer (latency).",
    )
    hardware_buffer_size_events: int | None = Field(
        None, ge=1, description="setHardwareBufferSize, events; None = vendor default.",
    )
    reference_clock: SwabianReferenceClock | None = Field(
        None, description="External 10 MHz (+ PPS) reference; None = internal oscillator.",
    )
    read_ahead_batches: int = Field(
        64, ge=1, le=10_000,
        description="Batches held for a slow consumer before polling waits (the tagger's "
        "own overflow reporting then shows any loss).",
    )
    rate_window_s: float = Field(
        1.0, gt=0, le=3600, description="Sliding window of count_rates_hz(), seconds.",
    )

    @field_validator("channel_map")
    @classmethod
    def _channels(cls, value: dict[int, int]) -> dict[int, int]:
        if not value:
            raise ValueError("channel_map must map at least one input")
        for src, dst in value.items():
            if src == 0 or abs(src) > 64:
                raise ValueError(f"tagger input {src} is not a channel number (±1..±64)")
            if not 0 <= dst <= 255:
                raise ValueError(f"station channel {dst} (for input {src}) outside 0..255")
        if len(set(value.values())) != len(value):
            raise ValueError("two tagger inputs map to the same station channel")
        return value

    @property
    def poll_interval_s(self) -> float:
        """Wall seconds between getData() calls; cannot overflow the stream buffer."""
        fill_s = self.poll_fill_fraction * self.stream_buffer_events / self.max_rate_hz
        return min(fill_s, self.max_poll_interval_s)


@dataclass(slots=True)
class SwabianStatus:
    """Counters of everything the stream reported as lost or odd."""

    polls: int = 0
    batches: int = 0
    events: int = 0
    error_events: int = 0
    overflow_begins: int = 0
    overflow_ends: int = 0
    missed_events: int = 0
    #: Polls whose buffer came back full: TimeTagStream discarded tags (count unknown).
    stream_buffer_full: int = 0
    #: Tags on inputs with no station channel (should not happen: only mapped are streamed).
    unmapped_events: dict[int, int] = field(default_factory=dict)
    unsorted_buffers: int = 0


class StreamMapper:
    """Turns successive ``TimeTagStreamBuffer`` objects into our :class:`Batch` es.

    Holds the state that spans buffers: the sequence number, where the last batch ended,
    and whether an overflow is in progress. Pure numpy; safe to run in a worker thread.
    """

    def __init__(self, channel_map: dict[int, int], *, resolution_ps: float,
                 buffer_events: int, status: SwabianStatus | None = None) -> None:
        self._inputs = np.array(sorted(channel_map), dtype=np.int64)
        self._targets = np.array([channel_map[k] for k in sorted(channel_map)], dtype=np.uint8)
        self.resolution_ps = resolution_ps
        self.buffer_events = buffer_events
        self.status = status if status is not None else SwabianStatus()
        self.seq = 0
        self.prev_end_ps: int | None = None
        self.in_overflow = False

    def map(self, buf: Any, *, now_s: float | None = None) -> Batch:
        """Map one buffer (anything with the TimeTagStreamBuffer methods) to a batch."""
        st = self.status
        ts, ch, types, missed = self._read_arrays(buf)
        st.polls += 1
        ts, ch, types, missed = self._in_time_order(ts, ch, types, missed)
        marks = self._count_marks(types, missed)
        buffer_full = self._check_buffer_full(buf, len(ts))
        started_inside = self._follow_overflow(types)
        events = self._map_time_tags(ts, ch, types)
        start_ps, end_ps = self._batch_span(buf, ts)
        lossy_marker = marks.errors > 0 or buffer_full
        info = BatchInfo(
            seq=self.seq,
            start_ps=start_ps,
            end_ps=end_ps,
            resolution_ps=self.resolution_ps,
            overflow_begin=marks.overflow_begins > 0 or lossy_marker,
            overflow_end=marks.overflow_ends > 0 or lossy_marker,
            in_overflow=started_inside and marks.overflow_ends == 0,
            missed_events=marks.missed_events,
            # Approximate: the buffer ended about when getData() returned.
            start_time_s=None if now_s is None else now_s - (end_ps - start_ps) / _PS_PER_S,
        )
        self.seq += 1
        st.batches += 1
        st.events += len(events)
        return Batch(info, events)

    @staticmethod
    def _read_arrays(buf: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The buffer's timestamps, channels, event types and missed counts, of one length."""
        ts = np.asarray(buf.getTimestamps(), dtype=np.int64)
        ch = np.asarray(buf.getChannels(), dtype=np.int64)
        types = np.asarray(buf.getEventTypes(), dtype=np.uint8)
        missed = np.asarray(buf.getMissedEvents(), dtype=np.int64)
        if not (len(ts) == len(ch) == len(types) == len(missed)):
            raise TimeTaggerError(
                f"stream buffer arrays differ in length: timestamps {len(ts)}, channels "
                f"{len(ch)}, types {len(types)}, missed {len(missed)}", device="swabian")
        return ts, ch, types, missed

    def _in_time_order(
        self, ts: np.ndarray, ch: np.ndarray, types: np.ndarray, missed: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The arrays sorted by timestamp (stable), counting buffers that were not."""
        if len(ts) > 1 and np.any(np.diff(ts) < 0):
            order = np.argsort(ts, kind="stable")
            ts, ch, types, missed = ts[order], ch[order], types[order], missed[order]
            self.status.unsorted_buffers += 1
        return ts, ch, types, missed

    def _count_marks(self, types: np.ndarray, missed: np.ndarray) -> _Marks:
        """Error, overflow and missed-event marks in this buffer, added to the status."""
        st = self.status
        marks = _Marks(
            errors=int(np.count_nonzero(types == TAG_ERROR)),
            overflow_begins=int(np.count_nonzero(types == TAG_OVERFLOW_BEGIN)),
            overflow_ends=int(np.count_nonzero(types == TAG_OVERFLOW_END)),
            missed_events=int(missed[types == TAG_MISSED_EVENTS].sum()),
        )
        st.error_events += marks.errors
        st.overflow_begins += marks.overflow_begins
        st.overflow_ends += marks.overflow_ends
        st.missed_events += marks.missed_events
        return marks

    def _check_buffer_full(self, buf: Any, n_events: int) -> bool:
        """True (and a warning) if the stream buffer came back full: tags were lost."""
        buffer_full = int(getattr(buf, "size", n_events)) >= self.buffer_events
        if buffer_full:
            self.status.stream_buffer_full += 1
            log.warning("swabian: TimeTagStream buffer came back full (%d events): tags "
                        "were discarded; batch %d flagged lossy. Lower max_poll_interval_s "
                        "or raise stream_buffer_events.", self.buffer_events, self.seq)
        return buffer_full

    def _follow_overflow(self, types: np.ndarray) -> bool:
        """Track the overflow state across the batch (begins/ends in order of appearance);
        returns whether the batch started inside an overflow."""
        started_inside = self.in_overflow
        marks = types[(types == TAG_OVERFLOW_BEGIN) | (types == TAG_OVERFLOW_END)]
        if marks.size:
            self.in_overflow = bool(marks[-1] == TAG_OVERFLOW_BEGIN)
        return started_inside

    def _map_time_tags(self, ts: np.ndarray, ch: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Time tags on mapped inputs as station events; others counted as unmapped."""
        st = self.status
        tags = types == TAG_TIMETAG
        idx = np.searchsorted(self._inputs, ch[tags])
        idx_clipped = np.minimum(idx, len(self._inputs) - 1)
        known = self._inputs[idx_clipped] == ch[tags]
        if not known.all():
            for c in ch[tags][~known].tolist():
                st.unmapped_events[c] = st.unmapped_events.get(c, 0) + 1
        events = np.empty(int(known.sum()), dtype=EVENT_DTYPE)
        events["timestamp_ps"] = ts[tags][known]
        events["channel"] = self._targets[idx_clipped[known]]
        return events

    def _batch_span(self, buf: Any, ts: np.ndarray) -> tuple[int, int]:
        """``(start_ps, end_ps)`` of this batch: from where the last one ended (or the
        buffer's start) to getData() time, widened to cover every timestamp."""
        t_start = int(getattr(buf, "tStart", 0))
        t_get = int(getattr(buf, "tGetData", ts[-1] + 1 if len(ts) else t_start))
        start_ps = self.prev_end_ps if self.prev_end_ps is not None else t_start
        end_ps = max(t_get, start_ps, int(ts[-1]) + 1 if len(ts) else start_ps)
        if len(ts) and ts[0] < start_ps:
            start_ps = int(ts[0])
        self.prev_end_ps = end_ps
        return start_ps, end_ps


@dataclass(frozen=True, slots=True)
class _Marks:
    """Counts of the non-tag events in one stream buffer."""

    errors: int
    overflow_begins: int
    overflow_ends: int
    missed_events: int


def _import_vendor() -> ModuleType:
    try:
        import Swabian.TimeTagger as vendor
    except ImportError as exc:
        raise TimeTaggerError(
            "the Swabian Time Tagger module is not installed: pip install "
            "'qkd-station[swabian]' (PyPI package swabian-timetagger), and install the "
            f"vendor's USB driver ({exc})", device="swabian",
        ) from exc
    return vendor


_END = object()


def _fetch(stream: Any, mapper: StreamMapper, now_s: float) -> Batch:
    """One poll, in a worker thread: getData() and the numpy mapping."""
    return mapper.map(stream.getData(), now_s=now_s)


class SwabianTimeTagger(TimeTagger):
    """A Swabian Instruments Time Tagger through ``Swabian.TimeTagger``. Untested on
    hardware."""

    Options = SwabianOptions

    def __init__(self, options: SwabianOptions, *, clock: Clock, name: str = "timetagger",
                 vendor: ModuleType | None = None) -> None:
        self.options = options
        self.clock = clock
        self.name = name
        #: The vendor module; injected only by tests that check names and signatures.
        self._vendor = vendor
        self._tagger: Any = None
        self._stream: Any = None
        self._model = "Swabian Time Tagger"
        self._resolution_ps = 1.0
        self._channels: dict[int, ChannelConfig] = {}
        self._queue: asyncio.Queue[Any] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._error: Exception | None = None
        self._rates = RateMeter(options.rate_window_s)
        self.status = SwabianStatus()
        self._mapper: StreamMapper | None = None

    @property
    def resolution_ps(self) -> float:
        return self._resolution_ps

    @property
    def model(self) -> str:
        return self._model

    # -- connection --------------------------------------------------------------------
    async def connect(self) -> None:
        if self._tagger is not None:
            return
        vendor = self._vendor or _import_vendor()
        self._vendor = vendor
        self._tagger = await asyncio.to_thread(self._open, vendor)

    def _open(self, vendor: ModuleType) -> Any:
        opt = self.options
        try:
            tagger = vendor.createTimeTagger(opt.serial, getattr(vendor.Resolution,
                                                                  opt.resolution))
        except RuntimeError as exc:
            which = f"serial {opt.serial!r}" if opt.serial else "any serial"
            raise TimeTaggerConnectionLost(f"cannot open the Time Tagger ({which}): {exc}",
                                           device=self.name, device_message=str(exc)) from exc
        try:
            self._model = f"Swabian {tagger.getModel()} {tagger.getSerial()}"
            if opt.hardware_buffer_size_events is not None:
                tagger.setHardwareBufferSize(opt.hardware_buffer_size_events)
            ref = opt.reference_clock
            if ref is not None and ref.method == "reference_clock":
                kwargs: dict[str, Any] = dict(
                    clock_channel=ref.clock_channel,
                    clock_frequency=ref.clock_frequency_hz,
                    time_constant=ref.time_constant_s,
                    wait_until_locked=ref.wait_until_locked,
                )
                if ref.pps_channel is not None:
                    kwargs.update(synchronization_channel=ref.pps_channel,
                                  synchronization_offset=ref.pps_offset_ps)
                tagger.setReferenceClock(**kwargs)
            elif ref is not None:
                tagger.setSoftwareClock(ref.clock_channel, ref.clock_frequency_hz,
                                        ref.averaging_periods, ref.wait_until_locked)
        except RuntimeError as exc:
            vendor.freeTimeTagger(tagger)
            raise TimeTaggerError(f"configuring the Time Tagger failed: {exc}",
                                  device=self.name, device_message=str(exc)) from exc
        log.info("%s: connected to %s (vendor module %s)", self.name, self._model,
                 vendor.getVersion())
        return tagger

    async def close(self) -> None:
        await self.stop()
        tagger, self._tagger = self._tagger, None
        if tagger is not None and self._vendor is not None:
            await asyncio.to_thread(self._vendor.freeTimeTagger, tagger)

    def _require(self) -> Any:
        if self._tagger is None:
            raise TimeTaggerNotConnected("not connected", device=self.name)
        return self._tagger

    # -- channels ----------------------------------------------------------------------
    def _input_for(self, station_channel: int) -> int:
        for src, dst in self.options.channel_map.items():
            if dst == station_channel:
                return src
        raise TimeTaggerError(
            f"station channel {station_channel} has no tagger input in channel_map "
            f"{self.options.channel_map}", device=self.name)

    async def configure(self, channels: list[ChannelConfig]) -> None:
        """Trigger level (V), input delay (ps) and dead time (ps) per station channel."""
        tagger = self._require()
        plan = [(c, self._input_for(c.channel)) for c in channels]

        def apply() -> list[str]:
            notes = []
            for cfg, src in plan:
                tagger.setTriggerLevel(abs(src), cfg.trigger_level_v)
                tagger.setInputDelay(src, cfg.delay_ps)
                if cfg.dead_time_ps:
                    actual = tagger.setDeadtime(src, cfg.dead_time_ps)
                    if actual != cfg.dead_time_ps:
                        notes.append(f"channel {cfg.channel}: dead time {cfg.dead_time_ps} ps "
                                     f"set as {actual} ps by the tagger")
            return notes

        try:
            notes = await asyncio.to_thread(apply)
        except (RuntimeError, ValueError) as exc:
            raise TimeTaggerError(f"channel configuration refused: {exc}", device=self.name,
                                  device_message=str(exc)) from exc
        for note in notes:
            log.info("%s: %s", self.name, note)
        self._channels = {c.channel: c for c in channels}
        self._rates.add_channels(list(self._channels))

    # -- streaming ---------------------------------------------------------------------
    async def start(self) -> None:
        tagger = self._require()
        if self._poller is not None and not self._poller.done():
            return
        vendor = self._vendor
        assert vendor is not None
        opt = self.options
        inputs = sorted(opt.channel_map)
        self._stream = await asyncio.to_thread(
            vendor.TimeTagStream, tagger, opt.stream_buffer_events, inputs)
        self.status = SwabianStatus()
        self._mapper = StreamMapper(opt.channel_map, resolution_ps=self._resolution_ps,
                                    buffer_events=opt.stream_buffer_events,
                                    status=self.status)
        self._rates.reset()
        self._rates.add_channels(list(self._channels) or list(opt.channel_map.values()))
        self._queue = asyncio.Queue()
        self._drained = asyncio.Event()
        self._error = None
        self._poller = asyncio.get_running_loop().create_task(self._poll(),
                                                              name=f"{self.name}-poll")

    async def stop(self) -> None:
        """Stop streaming; what arrived since the last poll is delivered as a last batch."""
        poller, self._poller = self._poller, None
        if poller is not None and not poller.done():
            poller.cancel()
            await asyncio.wait([poller])
        stream, self._stream = self._stream, None
        if stream is not None and self._mapper is not None and self._queue is not None:
            now_s = self.clock.now_s()
            mapper = self._mapper

            def finish() -> Batch:
                stream.stop()
                return mapper.map(stream.getData(), now_s=now_s)

            try:
                batch = await asyncio.to_thread(finish)
            except RuntimeError as exc:
                log.error("%s: reading the last buffer at stop failed: %s", self.name, exc)
                self._error = exc
            else:
                self._rates.update(batch)
                self._queue.put_nowait(batch)  # unbounded queue: never drops at stop
        if self._queue is not None:
            self._queue.put_nowait(_END)

    async def batches(self) -> AsyncIterator[Batch]:  # type: ignore[override]
        """Batches from start() until stop(); raises TimeTaggerConnectionLost if the
        stream failed."""
        queue = self._queue
        if queue is None:
            raise TimeTaggerError("batches() before start()", device=self.name)
        while True:
            item = await queue.get()
            self._drained.set()
            if item is _END:
                queue.put_nowait(_END)
                if self._error is not None:
                    raise TimeTaggerConnectionLost(f"time tag stream failed: {self._error}",
                                                   device=self.name) from self._error
                return
            yield item

    def count_rates_hz(self) -> dict[int, float]:
        return self._rates.rates_hz()

    async def _poll(self) -> None:
        stream, mapper, queue = self._stream, self._mapper, self._queue
        assert stream is not None and mapper is not None and queue is not None
        interval_s = self.options.poll_interval_s
        limit = self.options.read_ahead_batches
        try:
            while True:
                # The tagger fills its buffer in wall time, whatever the station Clock
                # does: this is I/O pacing, not domain timing.
                await asyncio.sleep(interval_s)
                now_s = self.clock.now_s()
                batch = await asyncio.to_thread(_fetch, stream, mapper, now_s)
                self._rates.update(batch)
                queue.put_nowait(batch)
                # A consumer that falls behind holds polling back; the tagger then
                # reports its own overflow, so the loss is still visible downstream.
                while queue.qsize() >= limit:
                    self._drained.clear()
                    await self._drained.wait()
        except (RuntimeError, TimeTaggerError) as exc:
            log.error("%s: time tag stream failed: %s", self.name, exc)
            self._error = exc
            queue.put_nowait(_END)

__all__ = ["StreamMapper", "SwabianOptions", "SwabianReferenceClock", "SwabianStatus",
           "SwabianTimeTagger"]
