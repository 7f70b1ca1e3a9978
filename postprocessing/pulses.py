"""Pulse-index recovery: which of the satellite's pulses each detection belongs to.

The ground knows only its own detections. The satellite's source is disciplined to GPS:
pulse ``n`` leaves the satellite at UTC ``n × period_ps`` picoseconds after the Unix epoch
(``period_ps = 1e12 / rep_rate_hz``, a whole number), and every ``pulses_per_sync``-th
pulse (``n % pulses_per_sync == 0``) also fires the sync laser, seen on the SYNC channel
with the same time of flight (docs/postprocessing.md, "Pulse indices").

A detection at tagger time ``t`` belongs to the pulse found by interpolating between the
two sync arrivals around it (:func:`pulse_index_from_sync`). *Which* pulse the first sync
was follows from the tagger's UTC time base and a time of flight predicted from the
orbital elements, good to well within half a sync period (50 µs at 10 kHz, i.e. 15 km of
range) — :func:`anchor_sync_index`. Both come from what the pass file / stream documents:
the tagger epoch from a batch's ``start_time_s`` and ``start_ps``
(:func:`tagger_epoch_utc_ps_of`), the time of flight from the header's ``elements`` and
site (:func:`predicted_tof_ps`). Nothing here knows what was sent.

:class:`PulseMapper` does this batch by batch in stream order, carrying the last sync
across batch boundaries, so a pass is mapped the same way live and offline, and its state
(:class:`PulseMapperState`) is small enough to checkpoint after every batch.
"""

from __future__ import annotations

import functools
import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

C_M_S = 299_792_458.0
_PS_PER_S = 1_000_000_000_000

# The physical layer the ground and the satellite agree on (the Micius source: 100 MHz
# pulses, a 10 kHz sync train; Liao et al. 2017). Carried in the classical channel's
# session hello so that a mismatch is refused, never guessed.
DEFAULT_REP_RATE_HZ = 100e6
DEFAULT_SYNC_RATE_HZ = 10e3


class PulseError(ValueError):
    """The detections cannot be mapped to pulses (no sync, no time base, bad header)."""


def period_ps_of(rep_rate_hz: float) -> int:
    """The pulse period in whole picoseconds; the rate must divide 1 THz evenly."""
    period = 1e12 / rep_rate_hz if rep_rate_hz > 0 else float("nan")
    if not rep_rate_hz > 0 or abs(period - round(period)) > 1e-6:
        raise PulseError(f"repetition rate {rep_rate_hz} Hz does not give a whole-picosecond "
                         f"period ({period} ps); choose a rate that divides 1e12")
    return int(round(period))


def anchor_sync_index(
    sync_timestamp_ps: int,
    *,
    tagger_epoch_utc_ps: int,
    predicted_tof_ps: float,
    period_ps: int,
    pulses_per_sync: int,
) -> int:
    """Pulse index of the sync pulse seen at tagger time ``sync_timestamp_ps``.

    ``tagger_epoch_utc_ps`` is the UTC (ps since the Unix epoch) of tagger time 0 — from
    PPS in a real station; ``predicted_tof_ps`` the time of flight predicted from the orbit,
    which needs to be right only to well within a sync period (100 µs at 10 kHz).
    """
    emitted_utc_ps = tagger_epoch_utc_ps + int(sync_timestamp_ps) - round(predicted_tof_ps)
    sync_period_ps = period_ps * pulses_per_sync
    return int(round(emitted_utc_ps / sync_period_ps)) * pulses_per_sync


def pulse_index_from_sync(
    timestamps_ps: np.ndarray,
    sync_timestamps_ps: np.ndarray,
    *,
    first_sync_pulse_index: int,
    period_ps: int,
    pulses_per_sync: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Map detection timestamps to ``(pulse_index int64, offset_ps float64)``.

    Sync arrivals are numbered incrementally (a missed sync shows as a gap of about two
    sync periods, so gaps are tolerated); between two syncs the pulse grid is interpolated
    linearly, which follows the changing time of flight (Doppler ~1e-5) to a few ps.
    ``offset_ps`` is the detection's time minus its pulse's expected arrival: a gate such
    as ``|offset_ps| < 1000`` keeps the detections that really came from a pulse.
    Detections outside the sync span are extrapolated from the nearest pair.
    """
    t = np.asarray(timestamps_ps, dtype=np.int64)
    s = np.asarray(sync_timestamps_ps, dtype=np.int64)
    if s.size < 2:
        raise PulseError(f"need at least two sync events to map pulses, got {s.size}")
    sync_period_ps = period_ps * pulses_per_sync
    steps = np.rint(np.diff(s) / sync_period_ps).astype(np.int64)
    if np.any(steps <= 0):
        raise PulseError("sync timestamps must be increasing and at least half a sync period apart")
    k = np.concatenate(([0], np.cumsum(steps)))  # sync number relative to the first
    j = np.clip(np.searchsorted(s, t, side="right") - 1, 0, s.size - 2)
    span_ps = (s[j + 1] - s[j]).astype(np.float64)
    pulses_in_span = ((k[j + 1] - k[j]) * pulses_per_sync).astype(np.float64)
    local_period_ps = span_ps / pulses_in_span
    pulses_after = (t - s[j]).astype(np.float64) / local_period_ps
    nearest = np.rint(pulses_after)
    offset_ps = (pulses_after - nearest) * local_period_ps
    index = first_sync_pulse_index + k[j] * pulses_per_sync + nearest.astype(np.int64)
    return index, offset_ps


def tagger_epoch_utc_ps_of(start_ps: int, start_time_s: float | str) -> int:
    """UTC (ps since the Unix epoch) of tagger time 0, from one batch's documented
    ``start_ps`` (tagger time) and ``start_time_s`` (UTC Unix seconds of ``start_ps``).

    ``start_time_s`` is a double (about 0.25 µs of resolution in this century, far inside
    the half sync period, 50 µs, the anchor tolerates); its decimal text, as the pass file
    carries it, is read exactly.
    """
    from decimal import Decimal, InvalidOperation

    try:
        utc_ps = Decimal(str(start_time_s)) * _PS_PER_S
    except InvalidOperation as exc:
        raise PulseError(f"start_time_s {start_time_s!r} is not a number") from exc
    if not utc_ps.is_finite():
        raise PulseError(f"start_time_s {start_time_s!r} is not finite")
    return int(utc_ps.to_integral_value()) - int(start_ps)


@functools.lru_cache(maxsize=1)
def _timescale():  # type: ignore[no-untyped-def]
    from skyfield.api import load

    return load.timescale(builtin=True)


def predicted_tof_ps(elements: str, *, latitude_deg: float, longitude_deg: float,
                     height_m: float, utc_s: float) -> float:
    """Time of flight (ps) predicted from TLE text and the site at UTC ``utc_s``.

    The range at the *arrival* time is used; the satellite moves ~7 km/s, so over the
    ~3 ms of flight the range changes by ~20 m, i.e. 70 ns of the 50 µs tolerance.
    """
    from skyfield.api import EarthSatellite, wgs84

    lines = [ln.strip() for ln in elements.strip().splitlines() if ln.strip()]
    tle = [ln for ln in lines if ln[:2] in ("1 ", "2 ")]
    if len(tle) != 2:
        raise PulseError("the pass header's elements are not a TLE (two lines starting '1 ' "
                         "and '2 '): no time of flight can be predicted")
    ts = _timescale()
    sat = EarthSatellite(tle[0], tle[1], lines[0] if len(lines) == 3 else None, ts)
    site = wgs84.latlon(latitude_deg, longitude_deg, elevation_m=height_m)
    t = ts.from_datetime(_utc_datetime(utc_s))
    range_km = float((sat - site).at(t).distance().km)
    if not np.isfinite(range_km) or range_km <= 0:
        raise PulseError(f"the elements give no valid range at UTC {utc_s} ({range_km} km)")
    return range_km * 1e3 / C_M_S * _PS_PER_S


def _utc_datetime(utc_s: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(utc_s, UTC)


class Detectors(BaseModel):
    """Which tagger channels are the four BB84 detectors and the sync (from the header's
    ``channel_map``): H and V measure Z (bit 0/1), D and A measure X (bit 0/1)."""

    model_config = ConfigDict(frozen=True)

    h: int = 1
    v: int = 2
    d: int = 3
    a: int = 4
    sync: int = 5

    @classmethod
    def from_channel_map(cls, channel_map: str | dict[str, str]) -> Detectors:
        """From the header's ``channel_map`` (JSON text or dict, channel number → name)."""
        try:
            mapping = json.loads(channel_map) if isinstance(channel_map, str) else channel_map
            by_name = {str(name).upper(): int(ch) for ch, name in mapping.items()}
            return cls(h=by_name["H"], v=by_name["V"], d=by_name["D"], a=by_name["A"],
                       sync=by_name["SYNC"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PulseError(f"channel_map {channel_map!r} does not name H, V, D, A and SYNC "
                             f"channels ({exc})") from exc

    def basis_bit(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(is_detector, basis, bit)`` per event: basis 0 = Z (H/V), 1 = X (D/A)."""
        ch = np.asarray(channels)
        lut_basis = np.zeros(256, np.uint8)
        lut_bit = np.zeros(256, np.uint8)
        is_det = np.zeros(256, bool)
        for c, basis, bit in ((self.h, 0, 0), (self.v, 0, 1), (self.d, 1, 0), (self.a, 1, 1)):
            lut_basis[c], lut_bit[c], is_det[c] = basis, bit, True
        return is_det[ch], lut_basis[ch], lut_bit[ch]


class PulseMapperState(BaseModel):
    """What :class:`PulseMapper` carries from one batch to the next (checkpointable)."""

    first_sync_pulse_index: int | None = None
    last_sync_ps: int | None = None
    last_sync_pulse_index: int | None = None
    last_detected_pulse: int = -1
    batches: int = 0
    detections: int = 0
    gated: int = 0
    multi_clicks: int = 0
    before_first_sync: int = 0


class MappedDetections(BaseModel):
    """One batch's gated, single-click detections: pulse index (ascending), basis, bit."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pulse_index: np.ndarray
    basis: np.ndarray
    bit: np.ndarray

    def __repr__(self) -> str:  # the bits are Bob's raw key: never in a repr
        return f"MappedDetections(n={self.pulse_index.size})"

    __str__ = __repr__


class PulseMapper:
    """Map batches of events to pulses in stream order.

    ``anchor(first_sync_ps)`` gives the pulse index of the first sync seen (from the epoch
    and the predicted time of flight). Each batch's syncs are numbered from the previous
    batch's last sync, detections are gated by ``|offset_ps| < gate_ps``, and a pulse with
    more than one detection (two detectors, or a detection and a dark count) is dropped
    and counted: there is no bit to assign it without a squashing map (docs).
    """

    def __init__(self, *, detectors: Detectors, period_ps: int, pulses_per_sync: int,
                 anchor: object, gate_ps: float = 1000.0,
                 state: PulseMapperState | None = None) -> None:
        self.detectors = detectors
        self.period_ps = period_ps
        self.pulses_per_sync = pulses_per_sync
        self.gate_ps = gate_ps
        self._anchor = anchor  # Callable[[int], int]
        self.state = state.model_copy() if state is not None else PulseMapperState()

    def map_batch(self, timestamps_ps: np.ndarray, channels: np.ndarray) -> MappedDetections:
        st = self.state
        ts = np.asarray(timestamps_ps, dtype=np.int64)
        ch = np.asarray(channels, dtype=np.uint8)
        is_det, basis, bit = self.detectors.basis_bit(ch)
        sync = ts[ch == self.detectors.sync]
        det_ts, det_basis, det_bit = ts[is_det], basis[is_det], bit[is_det]
        st.batches += 1
        st.detections += int(det_ts.size)
        if st.last_sync_ps is None:
            if sync.size == 0:
                st.before_first_sync += int(det_ts.size)
                return _empty()
            first = int(self._anchor(int(sync[0])))  # type: ignore[operator]
            st.first_sync_pulse_index = first
            st.last_sync_ps, st.last_sync_pulse_index = int(sync[0]), first
            before = det_ts < sync[0]
            st.before_first_sync += int(before.sum())
            det_ts, det_basis, det_bit = det_ts[~before], det_basis[~before], det_bit[~before]
        assert st.last_sync_ps is not None and st.last_sync_pulse_index is not None
        all_sync = np.concatenate(([st.last_sync_ps], sync[sync > st.last_sync_ps]))
        if all_sync.size < 2:
            # No new sync in this batch (a sync dropout): extrapolate from one period.
            all_sync = np.array([st.last_sync_ps, st.last_sync_ps
                                 + self.period_ps * self.pulses_per_sync], np.int64)
            new_last = None
        else:
            new_last = all_sync
        if det_ts.size:
            index, offset = pulse_index_from_sync(
                det_ts, all_sync, first_sync_pulse_index=st.last_sync_pulse_index,
                period_ps=self.period_ps, pulses_per_sync=self.pulses_per_sync)
        else:
            index, offset = np.zeros(0, np.int64), np.zeros(0)
        if new_last is not None:
            steps = np.rint(np.diff(new_last) / (self.period_ps * self.pulses_per_sync))
            st.last_sync_pulse_index += int(steps.sum()) * self.pulses_per_sync
            st.last_sync_ps = int(new_last[-1])
        keep = np.abs(offset) < self.gate_ps
        index, det_basis, det_bit = index[keep], det_basis[keep], det_bit[keep]
        st.gated += int(index.size)
        if index.size == 0:
            return _empty()
        order = np.argsort(index, kind="stable")
        index, det_basis, det_bit = index[order], det_basis[order], det_bit[order]
        # Multi-clicks: every detection of a pulse detected more than once is dropped,
        # including one that repeats the previous batch's last pulse.
        dup = np.zeros(index.size, bool)
        same = index[1:] == index[:-1]
        dup[1:] |= same
        dup[:-1] |= same
        dup |= index <= st.last_detected_pulse
        st.multi_clicks += int(dup.sum())
        index, det_basis, det_bit = index[~dup], det_basis[~dup], det_bit[~dup]
        if index.size:
            st.last_detected_pulse = int(index[-1])
        return MappedDetections(pulse_index=index, basis=det_basis, bit=det_bit)


def _empty() -> MappedDetections:
    return MappedDetections(pulse_index=np.zeros(0, np.int64), basis=np.zeros(0, np.uint8),
                            bit=np.zeros(0, np.uint8))


class PassTiming(BaseModel):
    """What the ground needs to number pulses, all from the pass header and the first
    batch: the site and elements, the tagger's UTC epoch, the source's rates."""

    elements: str = Field(repr=False)
    latitude_deg: float
    longitude_deg: float
    height_m: float
    tagger_epoch_utc_ps: int | None = None
    rep_rate_hz: float = DEFAULT_REP_RATE_HZ
    sync_rate_hz: float = DEFAULT_SYNC_RATE_HZ

    @property
    def period_ps(self) -> int:
        return period_ps_of(self.rep_rate_hz)

    @property
    def pulses_per_sync(self) -> int:
        ratio = self.rep_rate_hz / self.sync_rate_hz
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise PulseError(f"sync rate {self.sync_rate_hz} Hz does not divide the repetition "
                             f"rate {self.rep_rate_hz} Hz")
        return int(round(ratio))

    @classmethod
    def from_header(cls, header: dict[str, str], **rates: float) -> PassTiming:
        """From a pass file's / ``pass_begin``'s header (strings, docs/passfile.md)."""
        try:
            return cls(elements=header["elements"],
                       latitude_deg=float(header["site_latitude_deg"]),
                       longitude_deg=float(header["site_longitude_deg"]),
                       height_m=float(header.get("site_height_m", "0") or 0), **rates)
        except (KeyError, ValueError) as exc:
            raise PulseError(f"the pass header lacks what pulse numbering needs "
                             f"(elements, site_latitude_deg, site_longitude_deg): {exc}") from exc

    def anchor(self, first_sync_ps: int) -> int:
        """Pulse index of the sync seen at tagger time ``first_sync_ps``."""
        if self.tagger_epoch_utc_ps is None:
            raise PulseError("no batch carried start_time_s: the tagger's UTC epoch is unknown")
        utc_s = (self.tagger_epoch_utc_ps + first_sync_ps) / _PS_PER_S
        tof = predicted_tof_ps(self.elements, latitude_deg=self.latitude_deg,
                               longitude_deg=self.longitude_deg, height_m=self.height_m,
                               utc_s=utc_s)
        return anchor_sync_index(first_sync_ps, tagger_epoch_utc_ps=self.tagger_epoch_utc_ps,
                                 predicted_tof_ps=tof, period_ps=self.period_ps,
                                 pulses_per_sync=self.pulses_per_sync)


__all__ = [
    "C_M_S",
    "Detectors",
    "MappedDetections",
    "PassTiming",
    "PulseError",
    "PulseMapper",
    "PulseMapperState",
    "anchor_sync_index",
    "period_ps_of",
    "predicted_tof_ps",
    "pulse_index_from_sync",
    "tagger_epoch_utc_ps_of",
]
