"""Write PicoQuant T2 PTU files for tests, straight from PicoQuant's published formats.

``ptufile`` only writes T3 image files, so T2 test files are built here from two public
documents, independently of the code under test:

- the unified tag header (PicoQuant-Time-Tagged-File-Format-Demos, ``PTU/Python/Read_PTU.py``
  and ``doc/``): 8-byte magic ``PQTTTR``, 8-byte version, then tags of 32-byte identifier,
  int32 index (-1 = not an array), uint32 type code and an 8-byte value; strings and blobs
  store their byte length there and follow the tag; ``Header_End`` closes the header;
- the 32-bit T2 records:

  * HydraHarp V2 / MultiHarp / TimeHarp 260 (``0x01010204``, ``0x00010207`` ...): time tag
    bits 0-24, channel bits 25-30, special bit 31. Special with channel 0x3F is an overflow
    adding ``33_554_432 * timetag`` (a time tag of 0 counts as one overflow); special with
    channel 1..15 is a marker; special with channel 0 is a sync event.
  * HydraHarp V1 (``0x00010204``): as V2, but every overflow record adds ``33_552_000``.
  * PicoHarp 300 (``0x00010203``): time tag bits 0-27, channel bits 28-31; channel 0xF is
    special: low 4 time bits 0 mean an overflow adding ``210_698_240``, else a marker.

Every file a test uses is read back with ``ptufile``'s own decoder by the tests before it
is trusted (see ``check_with_ptufile``).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

# Tag type codes, from PicoQuant's Read_PTU.py.
TY_EMPTY8 = 0xFFFF0008
TY_BOOL8 = 0x00000008
TY_INT8 = 0x10000008
TY_FLOAT8 = 0x20000008
TY_TDATETIME = 0x21000008
TY_ANSISTRING = 0x4001FFFF

RT_PICOHARP_T2 = 0x00010203
RT_HYDRAHARP_T2 = 0x00010204
RT_HYDRAHARP2_T2 = 0x01010204
RT_GENERIC_T2 = 0x00010207  # MultiHarp, PicoHarp 330

WRAP_HH_V1 = 33_552_000
WRAP_HH_V2 = 33_554_432
WRAP_PH = 210_698_240

#: What a test event is.
PHOTON, SYNC, MARKER = 0, 1, 2


@dataclass
class T2Events:
    """Events to encode: absolute time in units of the global resolution, kind, channel.

    ``channel`` is the input index (0-based) for photons, the marker number (1..15) for
    markers, and ignored for sync events.
    """

    time: np.ndarray
    kind: np.ndarray
    channel: np.ndarray


def _tag(ident: str, typecode: int, value: bytes, index: int = -1, tail: bytes = b"") -> bytes:
    assert len(value) == 8
    return struct.pack("<32siI", ident.encode("ascii"), index, typecode) + value + tail


def _int_tag(ident: str, value: int) -> bytes:
    return _tag(ident, TY_INT8, struct.pack("<q", value))


def _float_tag(ident: str, value: float) -> bytes:
    return _tag(ident, TY_FLOAT8, struct.pack("<d", value))


def _string_tag(ident: str, text: str) -> bytes:
    data = text.encode("windows-1252") + b"\0"
    data += b"\0" * (-len(data) % 8)
    return _tag(ident, TY_ANSISTRING, struct.pack("<q", len(data)), tail=data)


def _datetime_tag(ident: str, when: datetime) -> bytes:
    days = (when - datetime(1899, 12, 30)).total_seconds() / 86400.0
    return _tag(ident, TY_TDATETIME, struct.pack("<d", days))


def header(record_type: int, *, global_resolution_s: float, n_records: int,
           sync_rate_hz: int = 10_000, hw_type: str = "HydraHarp",
           stop_reason: int | None = None) -> bytes:
    """A PTU header for a T2 measurement."""
    parts = [
        b"PQTTTR\0\0",
        b"1.0.00\0\0",
        _string_tag("File_GUID", "{" + str(uuid.UUID(int=0x5354415449304E)) + "}"),
        _datetime_tag("File_CreatingTime", datetime(2016, 12, 19, 16, 49, 58)),
        _string_tag("HW_Type", hw_type),
        _int_tag("Measurement_Mode", 2),
        _int_tag("Measurement_SubMode", 0),
        _float_tag("MeasDesc_GlobalResolution", global_resolution_s),
        _float_tag("MeasDesc_Resolution", global_resolution_s),
        _int_tag("TTResult_SyncRate", sync_rate_hz),
        _int_tag("TTResult_NumberOfRecords", n_records),
        _int_tag("TTResultFormat_TTTRRecType", record_type),
        _int_tag("TTResultFormat_BitsPerRecord", 32),
        *([] if stop_reason is None else [_int_tag("TTResult_StopReason", stop_reason)]),
        _tag("Header_End", TY_EMPTY8, b"\0" * 8),
    ]
    return b"".join(parts)


def encode_records(events: T2Events, record_type: int, *,
                   single_overflows: bool = False) -> np.ndarray:
    """Encode events (sorted by time) into 32-bit T2 records with overflow records.

    ``single_overflows`` writes one record per wrap (old style) instead of one record
    carrying the number of wraps (HydraHarp V2 / generic only).
    """
    order = np.argsort(events.time, kind="stable")
    time = events.time[order].astype(np.int64)
    kind = events.kind[order]
    channel = events.channel[order].astype(np.int64)
    if record_type == RT_PICOHARP_T2:
        wrap = WRAP_PH
    elif record_type == RT_HYDRAHARP_T2:
        wrap = WRAP_HH_V1
        single_overflows = True
    else:
        wrap = WRAP_HH_V2
    out: list[int] = []
    base = 0
    for t, k, c in zip(time.tolist(), kind.tolist(), channel.tolist(), strict=True):
        wraps = t // wrap - base // wrap
        while wraps > 0:
            if record_type == RT_PICOHARP_T2:
                out.append((0xF << 28) | 0)
                step = 1
            elif single_overflows:
                out.append((1 << 31) | (0x3F << 25) | 0)
                step = 1
            else:
                step = min(wraps, (1 << 25) - 1)
                out.append((1 << 31) | (0x3F << 25) | step)
            base += step * wrap
            wraps -= step
        tag = t - (t // wrap) * wrap
        base = (t // wrap) * wrap
        if record_type == RT_PICOHARP_T2:
            if k == PHOTON:
                assert 0 <= c < 4
                out.append((c << 28) | tag)
            elif k == MARKER:
                assert 1 <= c <= 15
                # Markers carry their bits in the low 4 time bits: time resolution is lost.
                out.append((0xF << 28) | (tag & ~0xF) | c)
            else:
                raise ValueError("PicoHarp T2 has no sync records")
        else:
            if k == PHOTON:
                assert 0 <= c < 64
                out.append((c << 25) | tag)
            elif k == MARKER:
                assert 1 <= c <= 15
                out.append((1 << 31) | (c << 25) | tag)
            else:
                out.append((1 << 31) | tag)
    return np.asarray(out, dtype="<u4")


def write_t2_ptu(path: Path, events: T2Events, *, record_type: int = RT_HYDRAHARP2_T2,
                 global_resolution_s: float = 1e-12, single_overflows: bool = False,
                 truncate_records: int | None = None,
                 stop_reason: int | None = None) -> np.ndarray:
    """Write a T2 PTU file; returns the records written.

    ``truncate_records`` writes only that many records while the header still announces
    all of them, as a file cut mid-write would. ``stop_reason`` sets TTResult_StopReason
    (-2 = FIFO overrun).
    """
    records = encode_records(events, record_type, single_overflows=single_overflows)
    hw = "PicoHarp 300" if record_type == RT_PICOHARP_T2 else "HydraHarp"
    head = header(record_type, global_resolution_s=global_resolution_s,
                  n_records=len(records), hw_type=hw, stop_reason=stop_reason)
    body = records if truncate_records is None else records[:truncate_records]
    path.write_bytes(head + body.tobytes())
    return records


def check_with_ptufile(path: Path, events: T2Events) -> None:
    """Assert ``ptufile`` decodes the file back to exactly the events written.

    ptufile reports photons with channel >= 0 (the input index; it reports a HydraHarp
    sync record as channel 0 too) and markers/overflows with channel -1 and the marker
    bits; photons, sync and markers are all compared here.
    """
    import ptufile

    with ptufile.PtuFile(path) as ptu:
        assert ptu.measurement_mode == ptufile.PtuMeasurementMode.T2
        decoded = ptu.decode_records()
        picoharp = ptu.record_type == RT_PICOHARP_T2
    order = np.argsort(events.time, kind="stable")
    time = events.time[order]
    kind = events.kind[order]
    channel = np.where(kind == SYNC, 0, events.channel[order])
    photons = decoded[decoded["channel"] >= 0]
    want = kind != MARKER
    np.testing.assert_array_equal(photons["time"], time[want])
    np.testing.assert_array_equal(photons["channel"], channel[want])
    markers = decoded[(decoded["channel"] < 0) & (decoded["marker"] > 0)]
    want = kind == MARKER
    np.testing.assert_array_equal(markers["marker"], channel[want])
    # PicoHarp markers keep their marker bits in the low time bits, as recorded.
    got = markers["time"].astype(np.int64)
    expected = time[want].astype(np.int64)
    if picoharp:
        got, expected = got & ~0xF, expected & ~0xF
    np.testing.assert_array_equal(got, expected)
