"""Pass files: one Arrow IPC *stream* per pass, one record batch per tagger batch.

The layout is specified in ``docs/passfile.md``. In short:

* columns ``timestamp_ps`` (int64) and ``channel`` (uint8), body compressed (lz4/zstd);
* the schema metadata holds the pass header (:class:`PassHeader`), one key per field plus
  ``qkd.header`` (the whole header as JSON);
* each record batch carries custom metadata: the tagger's ``seq``, ``start_ps``, ``end_ps``, ``resolution_ps``, ``overflow_begin``,
  ``overflow_end``, ``in_overflow``, ``missed_events`` and ``start_time_s``;
* a cleanly closed file ends with the Arrow end-of-stream marker, and a sidecar
  ``<stem>.json`` (written atomically) says whether the pass is ``recording``, ``closed``
  or ``interrupted``, with its outcome, totals and every loss.

The writer serialises each batch in memory with pyarrow, then writes the bytes itself:
a failed write (ENOSPC) is cut back to the last whole batch, so one lost batch never makes
the rest of the file unreadable. A file cut at any byte reads back every complete batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from drivers.timetagger.base import EVENT_DTYPE, BatchInfo
from station.files import FILE_MODE, open_file, write_durably

FORMAT_NAME = "qkd-station-passfile"
FORMAT_VERSION = 1
SUFFIX = ".arrows"
#: Arrow IPC end-of-stream marker: continuation token then a zero metadata length.
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"

SCHEMA_FIELDS = [pa.field("timestamp_ps", pa.int64(), nullable=False),
                 pa.field("channel", pa.uint8(), nullable=False)]


class PassHeader(BaseModel):
    """What a pass file says about itself (stored in the Arrow schema metadata)."""

    model_config = ConfigDict(extra="forbid")

    pass_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                         description="Pass id, e.g. 41731-20161219T164812Z.")
    segment: int = Field(1, ge=1, description="1, or 2, 3 ... for a pass resumed after a crash.")
    station_id: str = Field("", description="Station id.")
    station_name: str = Field("", description="Site name.")
    site_latitude_deg: float | None = Field(None, description="Geodetic latitude.")
    site_longitude_deg: float | None = Field(None, description="East longitude.")
    site_height_m: float | None = Field(None, description="Height above the WGS84 ellipsoid.")
    satellite: str = Field("", description="Satellite name.")
    norad_id: int | None = Field(None, description="NORAD catalogue number.")
    elements: str = Field("", description="Orbital elements used (TLE/OMM text).")
    aos: AwareDatetime | None = Field(None, description="Planned acquisition of signal, UTC.")
    los: AwareDatetime | None = Field(None, description="Planned loss of signal, UTC.")
    qkd_start: AwareDatetime | None = Field(None, description="Planned QKD window start, UTC.")
    qkd_end: AwareDatetime | None = Field(None, description="Planned QKD window end, UTC.")
    channel_map: dict[str, str] = Field(default_factory=dict,
                                        description="Channel number -> name (H, V, D, A, SYNC, PPS).")
    tagger_model: str = Field("", description="Time tagger model.")
    tagger_resolution_ps: float = Field(1.0, gt=0, description="Tagger timestamp resolution.")
    clock_source: str = Field("", description="Station clock source (real, simulated ...).")
    software_version: str = Field("", description="qkd-station version that wrote the file.")

    @model_validator(mode="before")
    @classmethod
    def _drop_simulator_seed(cls, data: Any) -> Any:
        # Files written before issue 11 carried the simulator's seed, the simulated
        # satellite's secret; read them, but never carry the seed forward.
        if isinstance(data, dict) and "simulator_seed" in data:
            data = {k: v for k, v in data.items() if k != "simulator_seed"}
        return data

    @property
    def stem(self) -> str:
        """File stem and stream pass id: ``pass_id``, or ``pass_id-sN`` for segment N > 1."""
        return self.pass_id if self.segment == 1 else f"{self.pass_id}-s{self.segment}"

    def schema_metadata(self) -> dict[str, str]:
        md: dict[str, str] = {"qkd.format": FORMAT_NAME, "qkd.format_version": str(FORMAT_VERSION),
                              "stream_pass_id": self.stem}
        for key, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            md[key] = value if isinstance(value, str) else json.dumps(value)
        md["qkd.header"] = self.model_dump_json()
        return md


def schema_for(metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(SCHEMA_FIELDS, metadata=metadata)


def batch_metadata(info: BatchInfo, stream_seq: int | None = None) -> dict[str, str]:
    """Record-batch custom metadata (all strings, so any Arrow reader can show it).

    The station's files leave ``stream_seq`` out: a batch's stream sequence number is its
    position in the file. Given, it is stored (a writer may record its own numbering)."""
    md = {
        "seq": str(info.seq),
        "start_ps": str(info.start_ps), "end_ps": str(info.end_ps),
        "resolution_ps": repr(float(info.resolution_ps)),
        "overflow_begin": _b(info.overflow_begin), "overflow_end": _b(info.overflow_end),
        "in_overflow": _b(info.in_overflow), "missed_events": str(info.missed_events),
    }
    if info.start_time_s is not None:
        md["start_time_s"] = repr(float(info.start_time_s))
    if stream_seq is not None:
        md["stream_seq"] = str(stream_seq)
    return md


def _b(flag: bool) -> str:
    return "true" if flag else "false"


def info_from_metadata(md: dict[str, str]) -> BatchInfo:
    """The tagger's :class:`BatchInfo` back from a batch's custom metadata."""
    start_time = md.get("start_time_s")
    return BatchInfo(
        seq=int(md.get("seq", "0")), start_ps=int(md.get("start_ps", "0")),
        end_ps=int(md.get("end_ps", "0")), resolution_ps=float(md.get("resolution_ps", "1")),
        overflow_begin=md.get("overflow_begin") == "true",
        overflow_end=md.get("overflow_end") == "true",
        in_overflow=md.get("in_overflow") == "true",
        missed_events=int(md.get("missed_events", "0")),
        start_time_s=float(start_time) if start_time else None)


def columns_of(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous little-endian ``timestamp_ps`` and ``channel`` arrays of an event array."""
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"events must have dtype {EVENT_DTYPE}, got {events.dtype}")
    return (np.ascontiguousarray(events["timestamp_ps"]),
            np.ascontiguousarray(events["channel"]))


def events_of(ts: np.ndarray, ch: np.ndarray) -> np.ndarray:
    out = np.empty(len(ts), dtype=EVENT_DTYPE)
    out["timestamp_ps"] = ts
    out["channel"] = ch
    return out


class _Capture:
    """A write-only sink pyarrow serialises into; we write the bytes ourselves."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[Any] = []

    def write(self, data: Any) -> int:
        self.parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> list[Any]:
        parts, self.parts = self.parts, []
        return parts


class BatchEncoder:
    """Turns one batch into the bytes of its Arrow IPC record-batch message.

    A record-batch message does not depend on the ones before it (no dictionaries here),
    so several encoders with the same schema can compress batches in parallel and the
    file writer concatenates their bytes in order. One encoder per thread."""

    def __init__(self, schema: pa.Schema, compression: str | None = "lz4"):
        self.schema = schema
        # Compress on the calling (pipeline, lower-priority) thread, not in Arrow's own pool.
        opts = ipc.IpcWriteOptions(
            compression=None if compression in (None, "none") else compression, use_threads=False)
        self._capture = _Capture()
        self._writer = ipc.new_stream(self._capture, schema, options=opts)
        # The writer emits the schema with its first batch: let it do so now on an empty
        # batch and drop those bytes (the file writer writes the schema itself).
        self._writer.write_batch(pa.record_batch(
            [pa.array([], pa.int64()), pa.array([], pa.uint8())], schema=schema))
        self._capture.take()

    def encode(self, ts: np.ndarray, ch: np.ndarray, md: dict[str, str]) -> list[Any]:
        rb = pa.record_batch([pa.array(ts, pa.int64()), pa.array(ch, pa.uint8())],
                             schema=self.schema)
        self._writer.write_batch(rb, custom_metadata=md)
        return self._capture.take()


class PassFileWriter:
    """Appends record batches to a pass file; never leaves a partial batch behind.

    ``append=True`` continues an existing file (cut back to its last complete batch), as the
    reference consumer does after a restart; its schema must match.
    """

    def __init__(self, path: Path, metadata: dict[str, str], *, compression: str | None = "lz4",
                 append: bool = False):
        self.path = Path(path)
        self.schema = schema_for(metadata)
        self.compression = compression
        self._encoder = BatchEncoder(self.schema, compression)
        self.bytes_unsynced = 0
        if append and self.path.exists():
            scan = scan_pass_file(self.path)
            if scan.schema is not None and scan.schema.metadata != self.schema.metadata:
                # The header is the consumer's own copy of the daemon's: it must not change.
                raise ValueError(f"{self.path}: cannot append, the file's header differs")
            self.batches = scan.batches
            self.fd = os.open(self.path, os.O_WRONLY)
            good = scan.stop.last_good_offset_bytes if scan.schema is not None else 0
            os.ftruncate(self.fd, good)
            os.lseek(self.fd, good, os.SEEK_SET)
            self.offset = good
            if scan.schema is None:
                self._write_all([self.schema.serialize()])
        else:
            self.batches = 0
            self.fd = open_file(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            self.offset = 0
            self._write_all([self.schema.serialize()])

    def write(self, ts: np.ndarray, ch: np.ndarray, md: dict[str, str]) -> tuple[int, int]:
        """Append one batch; return its (offset, length). On OSError the file is cut back to
        the previous batch and the error re-raised (the batch is then not in the file)."""
        return self.append(self.encode(ts, ch, md))

    def encode(self, ts: np.ndarray, ch: np.ndarray, md: dict[str, str]) -> list[Any]:
        """Serialise (and compress) one batch into IPC message bytes, without writing.

        Lets a pipeline compress the next batch while the previous one is being written;
        :meth:`encode` calls must be made from one thread, in file order."""
        return self._encoder.encode(ts, ch, md)

    def append(self, parts: list[Any]) -> tuple[int, int]:
        """Write the bytes of one :meth:`encode` d batch; same contract as :meth:`write`."""
        start = self.offset
        self._write_all(parts)
        self.batches += 1
        return start, self.offset - start

    def _write_all(self, parts: list[Any]) -> None:
        start = self.offset
        total = sum(len(memoryview(p).cast("B")) for p in parts)
        try:
            done = os.writev(self.fd, parts)
            while done < total:  # short writes: rare, but legal
                flat = b"".join(bytes(p) for p in parts)
                done += os.write(self.fd, flat[done:])
        except OSError:
            try:
                os.ftruncate(self.fd, start)
                os.lseek(self.fd, start, os.SEEK_SET)
            except OSError:
                pass
            raise
        self.offset = start + total
        self.bytes_unsynced += total

    def sync(self) -> None:
        """Make everything written so far durable (fsync)."""
        os.fsync(self.fd)
        self.bytes_unsynced = 0

    def close(self, *, end_of_stream: bool = True) -> None:
        """Write the end-of-stream marker (clean close), fsync and close."""
        if self.fd < 0:
            return
        try:
            if end_of_stream:
                self._write_all([EOS])
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1


# -- the loss record ------------------------------------------------------------------------
#: Custom-metadata key marking the loss record (value ``"loss"``).
RECORD_KEY = "qkd.record"
#: Custom-metadata key holding the loss record's JSON.
LOSS_KEY = "qkd.loss"
#: Space kept free for the end of a pass (loss record, end-of-stream marker, sidecar):
#: reserved in a file when the pass opens, released when it closes.
CLOSE_RESERVE_BYTES = 1 << 20


class LossRange(BaseModel):
    """Consecutive tagger batches the station could not record, for one reason."""

    first_seq: int = Field(description="Tagger seq of the first batch not recorded.")
    last_seq: int = Field(description="Tagger seq of the last one (inclusive).")
    batches: int = Field(ge=1, description="Batches in the range.")
    events: int = Field(ge=0, description="Events in them.")
    start_ps: int = Field(description="Tagger time the range starts.")
    end_ps: int = Field(description="Tagger time it ends.")
    start_time_s: float | None = Field(None, description="UTC (Unix s) of start_ps, when known.")
    reason: str = Field(description="Why, e.g. 'not recorded: ENOSPC: No space left on device'.")


class LossRecord(BaseModel):
    """The pass file's own account of what the disk refused (its last record batch)."""

    format: Literal["qkd-station-loss-record"] = "qkd-station-loss-record"
    version: int = 1
    batches: int = Field(ge=0, description="Batches not recorded.")
    events: int = Field(ge=0, description="Events in them.")
    ranges: list[LossRange] = Field(default_factory=list)


def is_loss_record(md: dict[str, str]) -> bool:
    """Whether a record batch's custom metadata marks it as the loss record."""
    return md.get(RECORD_KEY) == "loss"


def loss_record_metadata(record: LossRecord, *, seq: int, at_ps: int,
                         resolution_ps: float) -> dict[str, str]:
    """Custom metadata of the zero-row loss record batch: the ordinary batch keys (an
    empty interval at ``at_ps``, ``seq`` one past the last tagger batch) plus the record."""
    info = BatchInfo(seq=seq, start_ps=at_ps, end_ps=at_ps, resolution_ps=resolution_ps)
    md = batch_metadata(info)
    md[RECORD_KEY] = "loss"
    md[LOSS_KEY] = record.model_dump_json()
    return md


def read_loss_record(path: Path | str) -> LossRecord | None:
    """The loss record of a pass file (its last batch), or None when it has none."""
    last: dict[str, str] | None = None
    with PassFileReader(path) as reader:
        for b in reader._iter(decode=False):
            last = b.metadata
    if last is None or not is_loss_record(last):
        return None
    return LossRecord.model_validate_json(last[LOSS_KEY])


def reserve_space(path: Path, size: int = CLOSE_RESERVE_BYTES) -> bool:
    """Allocate ``size`` bytes in ``path`` (really allocated, not a sparse hole) so that
    deleting it later frees room to finish a file on a full disk. False if it cannot."""
    try:
        fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except OSError:
        return False
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            os.ftruncate(fd, 0)
            os.write(fd, b"\0" * size)  # file systems without fallocate
        return True
    except OSError:
        os.close(fd)
        fd = -1
        path.unlink(missing_ok=True)
        return False
    finally:
        if fd >= 0:
            os.close(fd)


# -- reading -----------------------------------------------------------------------------
@dataclass
class ReadStop:
    """Where and why reading a pass file stopped."""

    complete: bool = False
    """True when the file ends with the end-of-stream marker right after the last batch."""
    reason: str = ""
    last_good_offset_bytes: int = 0
    file_size_bytes: int = 0

    @property
    def trailing_bytes(self) -> int:
        """Bytes after the last complete batch that could not be read (0 if complete)."""
        extra = self.file_size_bytes - self.last_good_offset_bytes
        return 0 if self.complete else max(0, extra)


@dataclass
class StoredBatch:
    """One record batch of a pass file."""

    index: int
    offset_bytes: int
    length_bytes: int
    metadata: dict[str, str]
    timestamp_ps: np.ndarray
    channel: np.ndarray

    @property
    def info(self) -> BatchInfo:
        return info_from_metadata(self.metadata)

    @property
    def events(self) -> np.ndarray:
        return events_of(self.timestamp_ps, self.channel)


@dataclass
class Scan:
    schema: pa.Schema | None
    header: dict[str, str]
    batches: int
    stop: ReadStop
    index: list[tuple[int, int, dict[str, str], int]] = field(default_factory=list)


def _meta(md: Any) -> dict[str, str]:
    if not md:
        return {}
    return {(k.decode() if isinstance(k, bytes) else str(k)):
            (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
            for k, v in md.items()}


class PassFileReader:
    """Reads a pass file batch by batch, tolerating a cut tail.

    Iterate to get :class:`StoredBatch` es; afterwards :attr:`stop` says where and why the
    reading stopped. ``header`` is the schema metadata (strings); :attr:`pass_header` the
    parsed :class:`PassHeader` when the file has one.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._file = pa.OSFile(str(self.path), "rb")
        size = self._file.size()
        self.stop = ReadStop(file_size_bytes=size)
        self.schema: pa.Schema | None = None
        self.header: dict[str, str] = {}
        try:
            self._reader = ipc.open_stream(self._file)
        except (OSError, pa.ArrowInvalid) as exc:
            self._reader = None
            self.stop.reason = (f"no complete header: the file is cut inside its schema message "
                                f"({size} bytes; {exc})" if size else "the file is empty")
            return
        self.schema = self._reader.schema
        self.header = _meta(self.schema.metadata)
        self.stop.last_good_offset_bytes = self._file.tell()

    @property
    def pass_header(self) -> PassHeader | None:
        text = self.header.get("qkd.header")
        return PassHeader.model_validate_json(text) if text else None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._file.close()

    def __enter__(self) -> PassFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[StoredBatch]:
        return self._iter(decode=True)  # type: ignore[return-value]

    def _iter(self, *, decode: bool) -> Iterator[StoredBatch]:
        if self._reader is None:
            return
        index = 0
        while True:
            start = self.stop.last_good_offset_bytes
            try:
                rb, md = self._reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                self._finish(index)
                return
            except (OSError, pa.ArrowInvalid, pa.ArrowException) as exc:
                self.stop.reason = (
                    f"cut mid-write: batch {index} starting at byte {start} is incomplete "
                    f"({self.stop.file_size_bytes - start} of its bytes present; {exc}); "
                    f"{index} complete batches read")
                return
            end = self._file.tell()
            self.stop.last_good_offset_bytes = end
            meta = _meta(md)
            if decode:
                ts = rb.column(0).to_numpy(zero_copy_only=False)
                ch = rb.column(1).to_numpy(zero_copy_only=False)
            else:
                ts = ch = np.empty(0)
                meta["num_rows"] = str(rb.num_rows)
            yield StoredBatch(index, start, end - start, meta, ts, ch)
            index += 1

    def _finish(self, batches: int) -> None:
        end = self.stop.last_good_offset_bytes
        size = self.stop.file_size_bytes
        if size == end + len(EOS):
            self.stop.complete = True
            self.stop.reason = f"end-of-stream marker after {batches} batches: closed cleanly"
            return
        self.stop.reason = (f"no end-of-stream marker: {batches} complete batches end at byte "
                            f"{end}; the writer stopped without closing the file "
                            f"({size - end} trailing bytes)")


def read_pass_file(path: Path | str) -> tuple[dict[str, str], list[StoredBatch], ReadStop]:
    """Every complete batch of a pass file, its header and where/why reading stopped."""
    with PassFileReader(path) as reader:
        batches = list(reader)
        return reader.header, batches, reader.stop


def scan_pass_file(path: Path | str) -> Scan:
    """Batch boundaries and metadata without keeping the events."""
    with PassFileReader(path) as reader:
        idx = [(b.offset_bytes, b.length_bytes, b.metadata, int(b.metadata.pop("num_rows")))
               for b in reader._iter(decode=False)]
        return Scan(reader.schema, reader.header, len(idx), reader.stop, idx)


def read_batch_at(f: Any, offset: int, schema: pa.Schema) -> tuple[np.ndarray, np.ndarray]:
    """Decode the record batch whose message starts at ``offset`` of open file ``f``."""
    f.seek(offset)
    msg = ipc.read_message(f)
    rb = ipc.read_record_batch(msg, schema)
    return (rb.column(0).to_numpy(zero_copy_only=False),
            rb.column(1).to_numpy(zero_copy_only=False))


# -- the sidecar ---------------------------------------------------------------------------
def sidecar_path(path: Path) -> Path:
    """``<stem>.json`` next to ``<stem>.arrows``."""
    return Path(path).with_suffix(".json")


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """The JSON of ``obj`` written durably and atomically (:func:`station.files.write_durably`):
    all or nothing after a crash, mode :data:`~station.files.FILE_MODE`."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    write_durably(path, data, FILE_MODE)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
