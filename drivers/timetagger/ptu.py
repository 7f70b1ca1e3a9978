"""PicoQuant T2 records: decoding 32-bit TTTR records and reading PTU files in chunks.

The PTU header is read with ``ptufile`` (record type, resolution, record offset and count,
stop reason). The records are decoded here, vectorised with numpy, because ``ptufile``'s
T2 decoder reports the HydraHarp/MultiHarp *sync* record as channel 0, the same number as
input 0, and the station needs the two apart. Tests check this decoder against
``ptufile``'s on every photon and marker.

Channel numbers follow PicoQuant's own reference reader (``Read_PTU.py``):

- HydraHarp / MultiHarp / TimeHarp 260 / PicoHarp 330: sync = 0, input *i* (0-based) = *i* + 1;
- PicoHarp 300: the recorded channel (0 = Ch0, the sync input; 1 = Ch1).

Markers are reported apart from photons, by marker number (the 4 marker bits, 1..15).

Record layouts (PicoQuant, "TTTR record formats"):

- HydraHarp V2, MultiHarp, TimeHarp 260, PicoHarp 330 ("generic" T2): time tag bits 0-24,
  channel bits 25-30, special bit 31. Special + channel 0x3F = overflow adding
  33,554,432 per count in the time tag (0 counts as 1); special + channel 1..15 = marker;
  special + channel 0 = sync.
- HydraHarp V1: as above, every overflow record adds 33,552,000.
- PicoHarp 300: time tag bits 0-27, channel bits 28-31; channel 15 is special: marker
  bits (low 4 of the time tag) 0 = overflow adding 210,698,240, else a marker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path

import numpy as np

#: Size of one T2 record in bytes.
RECORD_BYTES = 4


class T2Layout(Enum):
    HYDRAHARP = "hydraharp"  # 25-bit time, 6-bit channel, special bit
    PICOHARP = "picoharp"  # 28-bit time, 4-bit channel


@dataclass(frozen=True, slots=True)
class T2Format:
    """How one PicoQuant record type encodes T2 events."""

    record_type: int
    name: str
    layout: T2Layout
    #: Time units one overflow adds.
    wrap: int
    #: An overflow record's time tag holds the number of overflows (0 meaning 1).
    counted_overflows: bool


T2_FORMATS: dict[int, T2Format] = {
    f.record_type: f
    for f in (
        T2Format(0x00010203, "PicoHarp 300 T2", T2Layout.PICOHARP, 210_698_240, False),
        T2Format(0x00010204, "HydraHarp V1 T2", T2Layout.HYDRAHARP, 33_552_000, False),
        T2Format(0x01010204, "HydraHarp V2 T2", T2Layout.HYDRAHARP, 33_554_432, True),
        T2Format(0x00010205, "TimeHarp 260N T2", T2Layout.HYDRAHARP, 33_554_432, True),
        T2Format(0x00010206, "TimeHarp 260P T2", T2Layout.HYDRAHARP, 33_554_432, True),
        T2Format(0x00010207, "MultiHarp / PicoHarp 330 T2", T2Layout.HYDRAHARP, 33_554_432,
                 True),
    )
}


class PtuError(ValueError):
    """A PTU file this reader cannot use, with the reason."""


def t2_format(record_type: int) -> T2Format:
    """The :class:`T2Format` of a record type, or :class:`PtuError` naming it."""
    try:
        return T2_FORMATS[record_type]
    except KeyError:
        known = ", ".join(f"{f.name} (0x{t:08X})" for t, f in T2_FORMATS.items())
        raise PtuError(
            f"record type 0x{record_type:08X} is not a supported T2 format; "
            f"supported: {known}. (T3 files hold start-stop times, not absolute tags.)"
        ) from None


@dataclass(slots=True)
class T2Chunk:
    """Decoded records of one chunk.

    ``time`` is absolute, in units of the file's global resolution, overflows included.
    Photons and sync (``kind == PHOTON``) carry a channel number (see the module
    docstring); markers (``kind == MARKER``) carry the marker number in ``channel``.
    Overflow records are consumed here and do not appear.
    """

    time: np.ndarray  # int64
    channel: np.ndarray  # uint8
    is_marker: np.ndarray  # bool
    #: Overflow correction after the last record: pass it to the next chunk.
    overflow_base: int
    overflow_records: int = 0
    #: Special records with a channel that is neither sync, marker nor overflow.
    unknown_records: int = 0


def decode_t2(records: np.ndarray, fmt: T2Format, *, overflow_base: int = 0) -> T2Chunk:
    """Decode a chunk of 32-bit T2 records.

    ``overflow_base`` is the overflow correction reached at the end of the previous chunk
    (0 at the start of a file), so a file can be decoded in pieces with identical results.
    """
    rec = np.asarray(records, dtype=np.uint32)
    if fmt.layout is T2Layout.HYDRAHARP:
        special = (rec >> np.uint32(31)).astype(bool)
        chan = ((rec >> np.uint32(25)) & np.uint32(0x3F)).astype(np.int64)
        tag = (rec & np.uint32(0x1FFFFFF)).astype(np.int64)
        is_overflow = special & (chan == 0x3F)
        is_marker = special & (chan >= 1) & (chan <= 15)
        is_sync = special & (chan == 0)
        is_photon = ~special
        unknown = special & ~(is_overflow | is_marker | is_sync)
        # Sync is channel 0; inputs are shifted up by one (PicoQuant's numbering).
        out_chan = np.where(is_photon, chan + 1, chan)
        keep_photon = is_photon | is_sync
    else:
        chan = (rec >> np.uint32(28)).astype(np.int64)
        tag = (rec & np.uint32(0x0FFFFFFF)).astype(np.int64)
        special = chan == 0xF
        marker_bits = tag & 0xF
        is_overflow = special & (marker_bits == 0)
        is_marker = special & (marker_bits != 0)
        unknown = np.zeros(rec.shape, dtype=bool)
        out_chan = np.where(is_marker, marker_bits, chan)
        keep_photon = ~special
    if fmt.counted_overflows:
        n_wraps = np.where(is_overflow, np.maximum(tag, 1), 0)
    else:
        n_wraps = is_overflow.astype(np.int64)
    correction = overflow_base + np.cumsum(n_wraps * fmt.wrap, dtype=np.int64)
    keep = keep_photon | is_marker
    new_base = int(correction[-1]) if correction.size else overflow_base
    return T2Chunk(
        time=(correction + tag)[keep],
        channel=out_chan[keep].astype(np.uint8),
        is_marker=is_marker[keep],
        overflow_base=new_base,
        overflow_records=int(np.count_nonzero(is_overflow)),
        unknown_records=int(np.count_nonzero(unknown)),
    )


#: Stop reasons (TTResult_StopReason) that mean data was lost before the end.
_LOSSY_STOP_REASONS = {-2, -4, -5, -6, -8, -9, -10, -11, -12, -13}


@dataclass(slots=True)
class PtuHeader:
    """What the replay needs from a PTU header (read with ``ptufile``)."""

    path: Path
    format: T2Format
    #: Seconds per time unit of the records.
    global_resolution_s: float
    record_offset: int
    #: Records the header announces (0 or less when the writer never filled it in).
    announced_records: int
    #: Complete records actually in the file.
    available_records: int
    #: Trailing bytes after the last complete record (a record cut mid-write).
    trailing_bytes: int
    hardware: str
    created: datetime | None
    stop_reason: int | None
    tags: dict[str, object] = field(repr=False, default_factory=dict)

    @property
    def truncated(self) -> bool:
        """The file ends before the records the header announces, or mid-record."""
        return self.trailing_bytes > 0 or (
            self.announced_records > 0 and self.available_records < self.announced_records
        )

    @property
    def records_to_read(self) -> int:
        if self.announced_records > 0:
            return min(self.announced_records, self.available_records)
        return self.available_records

    @property
    def lossy_stop(self) -> bool:
        """The measurement stopped because data was lost (FIFO overrun, sync lost, ...)."""
        return self.stop_reason in _LOSSY_STOP_REASONS


def read_header(path: str | os.PathLike[str]) -> PtuHeader:
    """Read a T2 PTU header with ``ptufile``; :class:`PtuError` if it is not one we read."""
    import ptufile

    path = Path(path)
    try:
        ptu = ptufile.PtuFile(path)
    except (ptufile.PqFileError, OSError) as exc:
        raise PtuError(f"{path}: not a readable PicoQuant PTU file: {exc}") from exc
    try:
        tags = dict(ptu.tags)
        record_type = int(tags.get("TTResultFormat_TTTRRecType", -1))
        bits = int(tags.get("TTResultFormat_BitsPerRecord", 32))
        if bits not in (0, 32):
            raise PtuError(f"{path}: {bits} bits per record; T2 records are 32 bits")
        if ptu.measurement_mode != ptufile.PtuMeasurementMode.T2:
            raise PtuError(
                f"{path}: measurement mode {ptu.measurement_mode.name}, not T2; "
                "only T2 (absolute time tag) files can be replayed"
            )
        fmt = t2_format(record_type)
        offset = ptu.record_offset
        resolution_s = float(ptu.global_resolution)
        created = tags.get("File_CreatingTime")
        stop = tags.get("TTResult_StopReason")
    except KeyError as exc:
        raise PtuError(f"{path}: PTU header lacks tag {exc}") from None
    finally:
        ptu.close()
    if not resolution_s > 0:
        raise PtuError(f"{path}: MeasDesc_GlobalResolution is {resolution_s}, must be > 0")
    data_bytes = max(0, path.stat().st_size - offset)
    return PtuHeader(
        path=path,
        format=fmt,
        global_resolution_s=resolution_s,
        record_offset=offset,
        announced_records=int(tags.get("TTResult_NumberOfRecords", 0)),
        available_records=data_bytes // RECORD_BYTES,
        trailing_bytes=data_bytes % RECORD_BYTES,
        hardware=str(tags.get("HW_Type", "PicoQuant")),
        created=created if isinstance(created, datetime) else None,
        stop_reason=int(stop) if isinstance(stop, int) else None,
        tags=tags,
    )


def read_records(header: PtuHeader, first: int, count: int) -> np.ndarray:
    """Read up to ``count`` raw records starting at record index ``first`` (blocking I/O)."""
    count = max(0, min(count, header.records_to_read - first))
    with open(header.path, "rb") as fh:
        fh.seek(header.record_offset + first * RECORD_BYTES)
        data = fh.read(count * RECORD_BYTES)
    usable = len(data) // RECORD_BYTES * RECORD_BYTES
    return np.frombuffer(data[:usable], dtype="<u4")


__all__ = [
    "RECORD_BYTES",
    "T2_FORMATS",
    "PtuError",
    "PtuHeader",
    "T2Chunk",
    "T2Format",
    "T2Layout",
    "decode_t2",
    "read_header",
    "read_records",
    "t2_format",
]
