"""``replay`` time tagger: plays back a recorded pass file or a PicoQuant T2 PTU file.

Batches come out through the same interface as a live tagger, released on the station
Clock: at a chosen speed relative to the clock, at the recording's own UTC times, or as
fast as they are consumed. Each is re-emitted with our own :class:`BatchInfo` (sequence
number from 0, start/end ps, resolution, overflow flags, missed events).

Pass files (the station's own recordings, ``docs/passfile.md``) are Arrow IPC *streams*,
one record batch per tagger batch with columns ``timestamp_ps`` (int64) and ``channel``
(uint8). They are read here with pyarrow directly (``drivers/`` never imports
``station/``), using only those columns plus whatever batch metadata is present. A file cut
mid-write (a station that lost power) is played up to its last complete batch, and
:attr:`ReplayTimeTagger.status` says where it stopped and why.

PTU files are read in chunks (:mod:`drivers.timetagger.ptu`): overflow records extend the
time, markers become events on the channels ``marker_map`` names, and PTU channels are
mapped to station channels by ``channel_map``. Events on unmapped channels are counted and
reported, never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from drivers.clock import Clock
from drivers.timetagger import ptu
from drivers.timetagger.base import (
    EVENT_DTYPE,
    Batch,
    BatchInfo,
    ChannelConfig,
    TimeTagger,
    TimeTaggerError,
    TimeTaggerNotConnected,
)
from drivers.timetagger.rates import RateMeter

log = logging.getLogger(__name__)

_PS_PER_S = 1_000_000_000_000
_ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"

#: PTU channel -> station channel by default: sync input to SYNC, inputs 1-4 to H/V/D/A.
DEFAULT_PTU_CHANNEL_MAP = {0: 5, 1: 1, 2: 2, 3: 3, 4: 4}
#: PTU marker -> station channel by default: marker 1 carries the PPS.
DEFAULT_PTU_MARKER_MAP = {1: 6}


class ReplayOptions(BaseModel):
    """Options of the ``replay`` time tagger backend."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    path: Path = Field(
        description="Recording to play: a pass file (Arrow IPC stream) or a PicoQuant T2 "
        ".ptu file. A relative path is taken from the daemon's working directory.",
    )
    format: Literal["auto", "passfile", "ptu"] = Field(
        "auto", description="File format; 'auto' tells them apart by their first bytes.",
    )
    pacing: Literal["speed", "recorded_time", "unpaced"] = Field(
        "speed",
        description="When batches are released: 'speed' = from start() on, at `speed` "
        "recorded seconds per clock second; 'recorded_time' = when the station Clock reads "
        "the batch's recorded UTC end time; 'unpaced' = as fast as they are consumed.",
    )
    speed: float = Field(
        1.0, gt=0, le=1e6,
        description="Recorded seconds played per clock second when pacing = 'speed' "
        "(1 = real time on the Clock, 10 = ten times faster).",
    )
    recording_start_utc: AwareDatetime | None = Field(
        None,
        description="UTC time of the recording's time zero (timestamp_ps = 0). Overrides "
        "the file's own; needed for pacing = 'recorded_time' with PTU files, whose header "
        "only holds the PC's local creation time.",
    )
    batch_duration_s: float = Field(
        0.1, gt=0, le=10,
        description="PTU files: tagger time covered by each emitted batch, in seconds. "
        "Pass files keep their recorded batches.",
    )
    read_chunk_records: int = Field(
        1_000_000, ge=1_000, le=100_000_000,
        description="PTU files: records read and decoded per step (bounds memory: "
        "about 20 bytes per record).",
    )
    channel_map: dict[int, int] = Field(
        default_factory=lambda: dict(DEFAULT_PTU_CHANNEL_MAP),
        description="PTU files: PTU channel -> station channel. PTU channels follow "
        "PicoQuant's reader: HydraHarp/MultiHarp sync = 0, input i (0-based) = i + 1; "
        "PicoHarp 300 as recorded. Default: sync -> 5 (SYNC), 1..4 -> H, V, D, A.",
    )
    marker_map: dict[int, int] = Field(
        default_factory=lambda: dict(DEFAULT_PTU_MARKER_MAP),
        description="PTU files: marker number (1..15) -> station channel. Default: "
        "marker 1 -> 6 (PPS).",
    )
    read_ahead_batches: int = Field(
        32, ge=1, le=10_000,
        description="Batches decoded ahead of their release time; a consumer that falls "
        "behind by more than this holds the playback back instead of losing data.",
    )
    rate_window_s: float = Field(
        1.0, gt=0, le=3600, description="Sliding window of count_rates_hz(), seconds.",
    )

    @field_validator("channel_map", "marker_map")
    @classmethod
    def _station_channels(cls, value: dict[int, int]) -> dict[int, int]:
        for src, dst in value.items():
            if not 0 <= src <= 255:
                raise ValueError(f"source channel {src} outside 0..255")
            if not 0 <= dst <= 255:
                raise ValueError(f"station channel {dst} (for {src}) outside 0..255")
        return value


@dataclass(slots=True)
class ReplayStatus:
    """What the replay has done and everything it had to drop or could not read."""

    path: str = ""
    format: str = ""
    batches: int = 0
    events: int = 0
    finished: bool = False
    #: The file ends before its data does (cut mid-write, or PTU records missing).
    truncated: bool = False
    #: Why reading stopped early, in words, with the byte offset where it did.
    stop_reason: str | None = None
    #: Byte offset just after the last complete batch (pass files) or record (PTU).
    last_good_offset_bytes: int | None = None
    #: Events on channels with no mapping, by "channel N" / "marker N".
    unmapped_events: dict[str, int] = field(default_factory=dict)
    #: Events out of time order across batches, which could not be placed (dropped).
    late_events: int = 0
    #: Pass files: batches whose events were not in time order (sorted on replay).
    reordered_batches: int = 0
    #: Pass files: jumps in the recorded batch sequence numbers (batches never recorded).
    recorded_seq_gaps: int = 0
    #: Decoded batches not delivered because stop() came first.
    discarded_on_stop: int = 0


@dataclass(slots=True)
class _Raw:
    start_ps: int
    end_ps: int
    events: np.ndarray
    overflow_begin: bool = False
    overflow_end: bool = False
    in_overflow: bool = False
    missed_events: int = 0
    start_time_s: float | None = None
    resolution_ps: float | None = None


def detect_format(path: Path) -> Literal["passfile", "ptu"]:
    """'ptu' or 'passfile' from a file's first bytes; TimeTaggerError if neither."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise TimeTaggerError(f"cannot open recording {path}: {exc}", device="replay") from exc
    if head.startswith(b"PQTTTR"):
        return "ptu"
    # An Arrow IPC stream starts with a message: continuation marker 0xFFFFFFFF, or (old
    # format) a bare positive length.
    if head[:4] == b"\xff\xff\xff\xff" or (len(head) >= 4 and 0 < int.from_bytes(head[:4], "little") < 1 << 24):
        return "passfile"
    raise TimeTaggerError(
        f"{path} is neither a PicoQuant PTU file nor an Arrow IPC stream (pass file); "
        f"it starts with {head!r}", device="replay",
    )


# -- PTU source --------------------------------------------------------------------------
class _PtuSource:
    """Reads a T2 PTU file in chunks and cuts it into batches on a fixed time grid."""

    def __init__(self, options: ReplayOptions, status: ReplayStatus) -> None:
        self._opt = options
        self._status = status
        try:
            self.header = ptu.read_header(options.path)
        except ptu.PtuError as exc:
            raise TimeTaggerError(str(exc), device="replay") from exc
        h = self.header
        # Resolutions are whole ps on every PicoQuant T2 device; keep exact integer maths.
        res_ps = Fraction(h.global_resolution_s * _PS_PER_S).limit_denominator(1000)
        self._res_num, self._res_den = res_ps.numerator, res_ps.denominator
        self.resolution_ps = float(res_ps)
        self.model = f"replay of {h.hardware} ({h.format.name})"
        start = options.recording_start_utc
        self.recorded_start_s = start.timestamp() if start is not None else None
        self._duration_ps = max(1, int(round(options.batch_duration_s * _PS_PER_S)))
        self._next_record = 0
        self._overflow_base = 0
        self._next_start_ps = 0
        self._pending_t = np.empty(0, np.int64)
        self._pending_c = np.empty(0, np.uint8)
        self._done = False
        self._chan_lut, self._marker_lut = _lut(options.channel_map), _lut(options.marker_map)
        if h.truncated:
            status.truncated = True
            status.stop_reason = (
                f"PTU file ends after {h.available_records} complete records "
                f"(+{h.trailing_bytes} stray bytes) but its header announces "
                f"{h.announced_records}; playing the complete records"
            )
            status.last_good_offset_bytes = h.record_offset + h.records_to_read * 4
            log.warning("%s: %s", options.path, status.stop_reason)

    def close(self) -> None:
        pass

    def read(self) -> list[_Raw] | None:
        """Next completed batches (maybe none yet), or None when the file is exhausted."""
        if self._done:
            return None
        h = self.header
        records = ptu.read_records(h, self._next_record, self._opt.read_chunk_records)
        self._next_record += len(records)
        at_end = len(records) == 0 or self._next_record >= h.records_to_read
        chunk = ptu.decode_t2(records, h.format, overflow_base=self._overflow_base)
        self._overflow_base = chunk.overflow_base
        if chunk.unknown_records:
            self._count_unmapped("unknown special record", chunk.unknown_records)
        times_ps, chans = self._map(chunk)
        horizon_ps = self._to_ps(np.asarray([chunk.overflow_base]))[0]
        if chunk.time.size:
            horizon_ps = max(horizon_ps, int(self._to_ps(chunk.time[-1:])[0]))
        self._add_pending(times_ps, chans)
        out = self._cut(horizon_ps if not at_end else None)
        if at_end:
            self._done = True
            if out and h.lossy_stop:
                out[-1].overflow_begin = True
                log.warning("%s: measurement stopped on data loss (stop reason %s); the "
                            "last batch is flagged overflow_begin", h.path, h.stop_reason)
        return out

    def _to_ps(self, time_units: np.ndarray) -> np.ndarray:
        t = time_units.astype(np.int64)
        if self._res_den == 1:
            return t * self._res_num
        return (t * self._res_num) // self._res_den

    def _map(self, chunk: ptu.T2Chunk) -> tuple[np.ndarray, np.ndarray]:
        lut = np.where(chunk.is_marker, self._marker_lut[chunk.channel],
                       self._chan_lut[chunk.channel])
        mapped = lut >= 0
        if not mapped.all():
            for is_marker, ch in zip(chunk.is_marker[~mapped].tolist(),
                                     chunk.channel[~mapped].tolist(), strict=True):
                self._count_unmapped(f"{'marker' if is_marker else 'channel'} {ch}", 1)
        return self._to_ps(chunk.time[mapped]), lut[mapped].astype(np.uint8)

    def _count_unmapped(self, key: str, n: int) -> None:
        counts = self._status.unmapped_events
        if key not in counts:
            log.warning("%s: events on PTU %s have no station channel in the replay "
                        "options; they are counted in status.unmapped_events",
                        self._opt.path, key)
        counts[key] = counts.get(key, 0) + n

    def _add_pending(self, t: np.ndarray, c: np.ndarray) -> None:
        if t.size and t.size > 1 and np.any(np.diff(t) < 0):
            order = np.argsort(t, kind="stable")
            t, c = t[order], c[order]
        late = t < self._next_start_ps
        if late.any():
            self._status.late_events += int(late.sum())
            t, c = t[~late], c[~late]
        if self._pending_t.size and t.size and t[0] < self._pending_t[-1]:
            t = np.concatenate([self._pending_t, t])
            c = np.concatenate([self._pending_c, c])
            order = np.argsort(t, kind="stable")
            self._pending_t, self._pending_c = t[order], c[order]
        else:
            self._pending_t = np.concatenate([self._pending_t, t])
            self._pending_c = np.concatenate([self._pending_c, c])

    def _cut(self, horizon_ps: int | None) -> list[_Raw]:
        """Emit every grid batch that ends at or before ``horizon_ps`` (all, at the end)."""
        out: list[_Raw] = []
        d = self._duration_ps
        while True:
            start = self._next_start_ps
            end = start + d
            if horizon_ps is not None and end > horizon_ps:
                break
            if horizon_ps is None:
                if not self._pending_t.size:
                    break
                if self._pending_t[-1] < end:
                    end = int(self._pending_t[-1]) + 1  # the recording ends here
            n = int(np.searchsorted(self._pending_t, end, side="left"))
            events = np.empty(n, dtype=EVENT_DTYPE)
            events["timestamp_ps"] = self._pending_t[:n]
            events["channel"] = self._pending_c[:n]
            self._pending_t, self._pending_c = self._pending_t[n:], self._pending_c[n:]
            out.append(_Raw(start, end, events))
            self._next_start_ps = end
        return out


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


# -- pass file source --------------------------------------------------------------------
def _meta(md: Any) -> dict[str, str]:
    if md is None:
        return {}
    items = md.items() if hasattr(md, "items") else md
    out: dict[str, str] = {}
    for k, v in items:
        key = k.decode() if isinstance(k, bytes) else str(k)
        out[key] = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
    return out


def _first(md: dict[str, str], *keys: str) -> str | None:
    for k in keys:
        if k in md and md[k] != "":
            return md[k]
    return None


def _as_bool(text: str | None) -> bool:
    return text is not None and text.strip().lower() in {"1", "true", "yes"}


def _as_time_s(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


class _PassSource:
    """Reads a pass file (Arrow IPC stream), batch by batch, tolerating a cut tail."""

    def __init__(self, options: ReplayOptions, status: ReplayStatus) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        self._pa = pa
        self._status = status
        self._path = options.path
        try:
            self._file = pa.OSFile(str(options.path), "rb")
            self._reader = ipc.open_stream(self._file)
        except (OSError, pa.ArrowInvalid) as exc:
            raise TimeTaggerError(
                f"{options.path}: not a readable pass file (Arrow IPC stream): {exc}",
                device="replay",
            ) from exc
        names = self._reader.schema.names
        for col in ("timestamp_ps", "channel"):
            if col not in names:
                self._reader.close()
                self._file.close()
                raise TimeTaggerError(
                    f"{options.path}: pass file has no '{col}' column (columns: {names})",
                    device="replay",
                )
        self.header = _meta(self._reader.schema.metadata)
        res = _first(self.header, "tagger_resolution_ps", "resolution_ps")
        self.resolution_ps = float(res) if res else 1.0
        model = _first(self.header, "tagger_model")
        self.model = f"replay of {model}" if model else "replay of pass file"
        start = options.recording_start_utc
        # Pass files date each batch (start_time_s), which recorded_time pacing uses; a
        # header "time zero" is only an option override.
        self.recorded_start_s: float | None = start.timestamp() if start is not None else None
        self.dates_batches = True
        self._prev_end_ps: int | None = None
        self._prev_seq: int | None = None
        self._prev_stream_seq: int | None = None
        self._in_overflow = False
        self._done = False
        self._index = 0
        status.last_good_offset_bytes = self._file.tell()

    def close(self) -> None:
        self._reader.close()
        self._file.close()

    def read(self, max_batches: int = 16) -> list[_Raw] | None:
        if self._done:
            return None
        out: list[_Raw] = []
        for _ in range(max_batches):
            try:
                batch, md = self._reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                self._finish_clean()
                break
            except (OSError, self._pa.ArrowInvalid) as exc:
                self._status.truncated = True
                self._status.stop_reason = (
                    f"pass file cut mid-write: batch {self._index} is incomplete ({exc}); "
                    f"played the {self._index} complete batches up to byte "
                    f"{self._status.last_good_offset_bytes}"
                )
                log.warning("%s: %s", self._path, self._status.stop_reason)
                self._done = True
                break
            self._status.last_good_offset_bytes = self._file.tell()
            out.append(self._convert(batch, _meta(md)))
            self._index += 1
        if self._done and not out:
            return None
        return out

    def _finish_clean(self) -> None:
        self._done = True
        end = self._status.last_good_offset_bytes or 0
        try:
            size = self._file.size()
            self._file.seek(max(0, size - 8))
            tail = self._file.read(8)
        except OSError:
            return
        if tail != _ARROW_EOS or size != end + 8:
            # Every batch was whole, but the writer never closed the stream.
            self._status.truncated = True
            self._status.stop_reason = (
                f"pass file has no end-of-stream marker (writer stopped without closing); "
                f"all {self._index} batches up to byte {end} are complete"
            )
            log.warning("%s: %s", self._path, self._status.stop_reason)

    def _convert(self, batch: Any, md: dict[str, str]) -> _Raw:
        ts = batch.column("timestamp_ps").to_numpy(zero_copy_only=False).astype(np.int64,
                                                                                copy=False)
        ch = batch.column("channel").to_numpy(zero_copy_only=False)
        events = np.empty(len(ts), dtype=EVENT_DTYPE)
        events["timestamp_ps"] = ts
        events["channel"] = ch
        if len(ts) > 1 and np.any(np.diff(ts) < 0):
            events = events[np.argsort(events["timestamp_ps"], kind="stable")]
            self._status.reordered_batches += 1
        # stream_seq numbers the batches in the file; seq is the tagger's own. A jump in
        # either means batches that never reached the file (the sidecar has the reason).
        for key, prev_attr in (("stream_seq", "_prev_stream_seq"), ("seq", "_prev_seq")):
            text = md.get(key)
            if text is None or not text.lstrip("-").isdigit():
                continue
            value, prev = int(text), getattr(self, prev_attr)
            if prev is not None and value > prev + 1:
                self._status.recorded_seq_gaps += 1
                log.warning("%s: batch %d: %s jumps from %d to %d (batches missing)",
                            self._path, self._index, key, prev, value)
            setattr(self, prev_attr, value)
            if key == "stream_seq" and prev is not None and value > prev + 1:
                break  # one gap, counted once
        start_text = _first(md, "start_ps")
        end_text = _first(md, "end_ps")
        if start_text is not None:
            start_ps = int(start_text)
        elif self._prev_end_ps is not None:
            start_ps = self._prev_end_ps
        else:
            start_ps = int(ts[0]) if len(ts) else 0
        if end_text is not None:
            end_ps = int(end_text)
        else:
            end_ps = int(events["timestamp_ps"][-1]) + 1 if len(ts) else start_ps
        end_ps = max(end_ps, start_ps)
        self._prev_end_ps = end_ps
        begin = _as_bool(_first(md, "overflow_begin"))
        ended = _as_bool(_first(md, "overflow_end"))
        inside = _as_bool(_first(md, "in_overflow"))
        missed_text = _first(md, "missed_events")
        missed = int(missed_text) if missed_text and missed_text.isdigit() else 0
        res_text = _first(md, "resolution_ps")
        try:
            resolution_ps = float(res_text) if res_text is not None else None
        except ValueError:
            resolution_ps = None
        return _Raw(start_ps, end_ps, events, begin, ended, inside, missed,
                    _as_time_s(_first(md, "start_time_s")), resolution_ps)


# -- the backend -------------------------------------------------------------------------
_END = object()


class ReplayTimeTagger(TimeTagger):
    """Plays a recording back through the :class:`TimeTagger` interface on the Clock."""

    Options = ReplayOptions

    def __init__(self, options: ReplayOptions, *, clock: Clock, name: str = "timetagger"):
        self.options = options
        self.clock = clock
        self.name = name
        self._source: _PtuSource | _PassSource | None = None
        self._format: Literal["passfile", "ptu"] | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._producer: asyncio.Task[None] | None = None
        self._rates = RateMeter(options.rate_window_s)
        self._channels: list[ChannelConfig] = []
        self.status = ReplayStatus(path=str(options.path))
        self._error: Exception | None = None
        self._resolution_ps = 1.0
        self._model = "replay"

    # -- interface ---------------------------------------------------------------------
    @property
    def resolution_ps(self) -> float:
        """The recording's resolution (1.0 until connected)."""
        return self._resolution_ps

    @property
    def model(self) -> str:
        """``replay of <recorded device>``; kept after close() for reports."""
        return self._model

    async def connect(self) -> None:
        """Open the recording and check it can be played (clear error if not)."""
        if self._source is not None:
            return
        self._source = await asyncio.to_thread(self._open)

    def _open(self) -> _PtuSource | _PassSource:
        path = self.options.path
        if not path.is_file():
            raise TimeTaggerError(f"recording {path} does not exist or is not a file",
                                  device=self.name)
        fmt = detect_format(path) if self.options.format == "auto" else self.options.format
        self.status = ReplayStatus(path=str(path), format=fmt)
        self._format = fmt
        source: _PtuSource | _PassSource
        source = _PtuSource(self.options, self.status) if fmt == "ptu" else _PassSource(
            self.options, self.status)
        if (self.options.pacing == "recorded_time" and source.recorded_start_s is None
                and not getattr(source, "dates_batches", False)):
            source.close()
            raise TimeTaggerError(
                f"{path}: pacing = 'recorded_time' needs the recording's UTC start; the "
                "file has none, so set the option recording_start_utc", device=self.name,
            )
        self._resolution_ps = source.resolution_ps
        self._model = source.model
        return source

    async def close(self) -> None:
        await self.stop()
        if self._source is not None:
            self._source.close()
            self._source = None

    async def configure(self, channels: list[ChannelConfig]) -> None:
        """Recorded data cannot be re-triggered: settings are kept for reference only."""
        self._require()
        self._channels = list(channels)
        self._rates.add_channels([c.channel for c in channels])
        if any(c.delay_ps or c.dead_time_ps for c in channels):
            log.info("%s: replay ignores input delays and dead times; the recording has "
                     "the ones it was made with", self.name)

    async def start(self) -> None:
        """Start playing from the beginning of the recording."""
        self._require()
        if self._producer is not None and not self._producer.done():
            return
        # Each start plays from the beginning: reopen for a fresh reader.
        assert self._source is not None
        self._source.close()
        self._source = await asyncio.to_thread(self._open)
        self._rates.reset()
        self._error = None
        self._rates.add_channels([c.channel for c in self._channels])
        self._queue = asyncio.Queue(maxsize=self.options.read_ahead_batches)
        self._producer = asyncio.get_running_loop().create_task(
            self._produce(), name=f"{self.name}-replay")

    async def stop(self) -> None:
        """Stop playing; batches decoded but not yet taken are counted as discarded."""
        producer, self._producer = self._producer, None
        if producer is not None and not producer.done():
            producer.cancel()
            # wait() does not re-raise the producer's CancelledError, yet a cancellation
            # of stop() itself still propagates.
            await asyncio.wait([producer])
        queue = self._queue
        if queue is not None:
            while not queue.empty():
                item = queue.get_nowait()
                if item is not _END:
                    self.status.discarded_on_stop += 1
            queue.put_nowait(_END)

    async def batches(self) -> AsyncIterator[Batch]:  # type: ignore[override]
        """Batches in recorded order, each when its time comes; ends at the end of the
        recording or on stop()."""
        queue = self._queue
        if queue is None:
            raise TimeTaggerError("batches() before start()", device=self.name)
        while True:
            item = await queue.get()
            if item is _END:
                queue.put_nowait(_END)  # later iterators end too
                if self._error is not None:
                    raise TimeTaggerError(f"replay of {self.options.path} failed: "
                                          f"{self._error}", device=self.name) from self._error
                return
            yield item

    def count_rates_hz(self) -> dict[int, float]:
        return self._rates.rates_hz()

    # -- playback ----------------------------------------------------------------------
    def _require(self) -> None:
        if self._source is None:
            raise TimeTaggerNotConnected("not connected", device=self.name)

    async def _produce(self) -> None:
        source = self._source
        queue = self._queue
        assert source is not None and queue is not None
        opt = self.options
        seq = 0
        origin_ps: int | None = None
        t0_clock_s = self.clock.now_s()
        try:
            while True:
                raws = await asyncio.to_thread(source.read)
                if raws is None:
                    break
                for raw in raws:
                    if origin_ps is None:
                        origin_ps = raw.start_ps
                    release_s, start_time_s = self._pace(
                        raw, seq, origin_ps, t0_clock_s, source.recorded_start_s)
                    if release_s > self.clock.now_s():
                        await self.clock.sleep_until(release_s)
                    batch = self._account(raw, seq, start_time_s, source.resolution_ps)
                    seq += 1
                    await queue.put(batch)
                await asyncio.sleep(0)  # unpaced playback still lets others run
            self.status.finished = True
            log.info("%s: replay of %s finished: %d batches, %d events%s", self.name,
                     opt.path, self.status.batches, self.status.events,
                     f" ({self.status.stop_reason})" if self.status.stop_reason else "")
        except (OSError, ValueError, TimeTaggerError) as exc:
            # A file that turns unreadable mid-way: end the stream with the reason.
            log.error("%s: replay of %s failed: %s", self.name, opt.path, exc)
            self._error = exc
        await queue.put(_END)

    def _pace(
        self, raw: _Raw, seq: int, origin_ps: int, t0_clock_s: float, rec_start: float | None,
    ) -> tuple[float, float | None]:
        """``(release_s, start_time_s)`` of one batch under the pacing option: the clock
        time it is handed out at (``-inf``: at once) and the UTC start it is dated with."""
        opt = self.options
        start_time_s: float | None
        if opt.pacing == "speed":
            release_s = t0_clock_s + (raw.end_ps - origin_ps) / _PS_PER_S / opt.speed
            start_time_s = t0_clock_s + (raw.start_ps - origin_ps) / _PS_PER_S / opt.speed
        elif opt.pacing == "recorded_time":
            if rec_start is not None:
                start_time_s = rec_start + raw.start_ps / _PS_PER_S
                release_s = rec_start + raw.end_ps / _PS_PER_S
            elif raw.start_time_s is not None:
                start_time_s = raw.start_time_s
                release_s = start_time_s + (raw.end_ps - raw.start_ps) / _PS_PER_S
            else:
                raise TimeTaggerError(
                    f"batch {seq} has no start_time_s to pace by; set the option "
                    "recording_start_utc", device=self.name)
        else:
            release_s = -math.inf
            start_time_s = raw.start_time_s if raw.start_time_s is not None else (
                rec_start + raw.start_ps / _PS_PER_S if rec_start is not None
                else None)
        return release_s, start_time_s

    def _account(self, raw: _Raw, seq: int, start_time_s: float | None,
                 source_resolution_ps: float) -> Batch:
        """The batch for one recorded batch, counted in the rates and the status."""
        info = BatchInfo(
            seq=seq, start_ps=raw.start_ps, end_ps=raw.end_ps,
            resolution_ps=raw.resolution_ps or source_resolution_ps,
            overflow_begin=raw.overflow_begin, overflow_end=raw.overflow_end,
            in_overflow=raw.in_overflow, missed_events=raw.missed_events,
            start_time_s=start_time_s,
        )
        batch = Batch(info, raw.events)
        self._rates.update(batch)
        self.status.batches += 1
        self.status.events += len(raw.events)
        return batch

__all__ = ["ReplayOptions", "ReplayStatus", "ReplayTimeTagger", "detect_format"]
